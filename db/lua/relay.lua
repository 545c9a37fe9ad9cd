-- Move events from shard outboxes to the one feed, exactly once: a shard's events are appended
-- only if the feed's cursor for that shard is still where the relay read from (another relay
-- may have moved them already), and the cursor moves in the same atomic step.
-- KEYS: the feed, the cursors hash (one slot: {feed})
-- ARGV: feed max length, then per shard: shard, cursor read from ('' for none), last id,
--   number of events n, then the n events as JSON
-- Returns the shards whose events were appended (their outboxes may be trimmed up to there).
local max_len, i, moved = ARGV[1], 2, {}
while i <= #ARGV do
  local shard, from, last, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local current = redis.call('HGET', KEYS[2], shard) or ''
  if current == from then
    for j = i + 4, i + 3 + n do
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', max_len, '*', 'e', ARGV[j])
    end
    redis.call('HSET', KEYS[2], shard, last)
    moved[#moved + 1] = shard
  end
  i = i + 4 + n
end
return moved
