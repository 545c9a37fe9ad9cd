-- Extend a call's lease, only for its holder: a worker that lost the lease must not touch it.
-- KEYS: lease. ARGV: holder, ttl in ms. Returns 1 if renewed, 0 if the lease is another's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
