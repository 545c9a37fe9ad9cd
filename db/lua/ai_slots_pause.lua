-- The provider said 429: nobody gets a slot until the later of the current pause and this one.
-- KEYS: pause. ARGV: now ms, pause ms.
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
if until_ms > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], until_ms, 'PX', ARGV[2])
end
return 1
