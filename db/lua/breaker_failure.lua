-- Count one more consecutive failure of the AI provider; at the threshold, open the breaker for
-- the cool-down and clear the half-open probe lock so the next probe comes after it.
-- KEYS: breaker hash, probe lock. ARGV: now, threshold, cool-down. Returns the failure count.
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[1]) + tonumber(ARGV[3]))
  redis.call('DEL', KEYS[2])
end
return failures
