-- Release a call once PostgreSQL committed its final state: its data keys expire, its done marker
-- outlives them (late packets still get 409, not a new call), its lease goes, it leaves every
-- index of its shard, and its last events (the final state's) are published: one atomic step in
-- the call's slot (a cluster has no MULTI across commands; a script is one step anywhere).
-- KEYS: done, lease, idle index, unflushed index, pending index, event feed (or the shard's
--   outbox), then the call's data keys
-- ARGV: call_id, data retention s, marker retention s, feed max length, events as JSON...
--   (the number of data keys is #KEYS - 6)
local call_id = ARGV[1]
for i = 7, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], call_id)
redis.call('ZREM', KEYS[4], call_id)
redis.call('ZREM', KEYS[5], call_id)
for i = 5, #ARGV do
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[i])
end
return 1
