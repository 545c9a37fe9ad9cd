-- Grant up to N slots of the shared AI concurrency limit. Slots of holders that died expire.
-- KEYS: slots (sorted set: holder -> expiry in ms), pause (paused-until in ms, set on a 429)
-- ARGV: now ms, limit, slot ttl ms, holder names...
-- Returns {granted, wait ms}: the first `granted` holders now hold a slot; wait ms > 0 while paused.
local now = tonumber(ARGV[1])
local paused_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused_until > now then
  return {0, paused_until - now}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local granted = 0
for i = 4, #ARGV do
  if granted >= free then break end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[i])
  granted = granted + 1
end
return {granted, 0}
