-- Release a call once PostgreSQL committed its final state: what it sent leaves Redis at once
-- (its stream, whose entries are all in PostgreSQL's segments by then, and its dedup runs: the
-- done marker refuses late packets now), its hash and metadata expire after the retention, its
-- done marker outlives them (late packets still get 409, not a new call), its lease goes, it
-- leaves every index of its shard, and its last events (the final state's) are published: one
-- atomic step in the call's slot (a cluster has no MULTI across commands; a script is one step
-- anywhere).
-- KEYS: done, lease, idle index, unflushed index, pending index, segments index, event feed (or
--   the shard's outbox), then the keys to delete, then the keys to expire
-- ARGV: call_id, data retention s, marker retention s, feed max length, how many keys to delete,
--   events as JSON...
local call_id = ARGV[1]
local dropped = tonumber(ARGV[5])
-- A stream that is not empty holds packets PostgreSQL never stored: a refusal (the object store's,
-- say) ended the call FAILED. They expire with the call's hash instead, so that a replay within
-- the retention stores them (jobs/flushing.py); the first key to delete is the stream.
if dropped > 0 and redis.call('XLEN', KEYS[8]) > 0 then dropped = 0 end
for i = 8, #KEYS do
  if i < 8 + dropped then
    redis.call('DEL', KEYS[i])
  else
    redis.call('EXPIRE', KEYS[i], ARGV[2])
  end
end
-- An erased call's marker is a tombstone (db/forget.py ERASED): it never expires, so packets for
-- the id stay refused; a stray re-run that releases the call again must not shorten it.
if redis.call('GET', KEYS[1]) ~= 'erased' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
redis.call('DEL', KEYS[2])
for i = 3, 6 do
  redis.call('ZREM', KEYS[i], call_id)
end
for i = 6, #ARGV do
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[i])
end
return 1
