-- Release a call once PostgreSQL committed its final state: everything it sent leaves Redis at
-- once (its stream, whose entries are all in PostgreSQL's segments by then, its dedup runs, its
-- hash and what it was opened with: PostgreSQL answers for it from now on), and so do its lease
-- and what the reaper counted of its jobs (a replay starts afresh); its done marker outlives them
-- (late packets still get 409, not a new call), it leaves every index of its shard, and its last
-- events (the final state's) are published: one atomic step in the call's slot (a cluster has no
-- MULTI across commands; a script is one step anywhere).
-- KEYS: done, lease, idle index, unflushed index, pending index, segments index, event feed (or
--   the shard's outbox), failures, then the keys of what the call sent (its stream first)
-- ARGV: call_id, retention s of an unstored tail, marker retention s, feed max length,
--   events as JSON...
local call_id = ARGV[1]
-- A stream that is not empty holds packets PostgreSQL never stored: a refusal (the object store's,
-- say) ended the call FAILED. They and the call's other keys expire after the retention instead,
-- so that a replay within it stores them (jobs/flushing.py).
local unstored = redis.call('XLEN', KEYS[9]) > 0
for i = 9, #KEYS do
  if unstored then
    redis.call('EXPIRE', KEYS[i], ARGV[2])
  else
    redis.call('DEL', KEYS[i])
  end
end
-- An erased call's marker is a tombstone (db/forget.py ERASED): it never expires, so packets for
-- the id stay refused; a stray re-run that releases the call again must not shorten it.
if redis.call('GET', KEYS[1]) ~= 'erased' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
redis.call('DEL', KEYS[2], KEYS[8])
for i = 3, 6 do
  redis.call('ZREM', KEYS[i], call_id)
end
for i = 5, #ARGV do
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[i])
end
return 1
