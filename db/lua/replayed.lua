-- A dead letter was replayed (FAILED -> COMPLETED in PostgreSQL): the call goes back under the
-- reaper's watch and the live feed hears of it, in one atomic step in the call's slot.
-- KEYS: pending index, event feed (or the shard's outbox)
-- ARGV: call_id, now, feed max length, the event as JSON
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
return 1
