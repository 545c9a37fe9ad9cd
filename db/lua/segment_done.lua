-- A segment of a live (or finished) call is committed in PostgreSQL: its entries leave the
-- call's stream at once, and the next segment may be asked for. One atomic step in the call's
-- slot. A flush that finds the call released (no meta) only trims: it must not bring the hash
-- back. The final flush also says the call's row is in PostgreSQL (it leaves the unflushed
-- index) and tells the feed, in the same step.
-- KEYS: packets, meta, segments index, event feed (or the shard's outbox), unflushed index
-- ARGV: call_id, the first stream id to keep (XTRIM MINID; '' to trim nothing), feed max
--   length, '1' if the call's row is in PostgreSQL ('0' if not), then the events as JSON (any)
-- Returns the entries left in the stream.
if ARGV[2] ~= '' then
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- Until a segment's entries leave, the stream holds every entry the call sent: a flush that
  -- finds no mark may plan the first segment without asking PostgreSQL (jobs/segments.py).
  if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'seg_trimmed', 1) end
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if first then
    -- The oldest entry left is the next segment's start: its arrival, from its id (ms).
    local ms = tonumber(string.match(first[1], '^(%d+)'))
    redis.call('HSET', KEYS[2], 'seg_open_at', string.format('%.3f', ms / 1000))
  else
    redis.call('HDEL', KEYS[2], 'seg_open_at')
  end
  redis.call('HDEL', KEYS[2], 'seg_asked_at')
end
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[5], ARGV[1])
end
for i = 5, #ARGV do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[i])
end
return redis.call('XLEN', KEYS[1])
