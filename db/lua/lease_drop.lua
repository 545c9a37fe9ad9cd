-- Drop a call's lease, only for its holder (a graceful hand-back).
-- KEYS: lease. ARGV: holder. Returns 1 if dropped.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
