-- Complete a call exactly once. SET NX on the done key decides; the winner moves the call from
-- the idle index to the pending index in the same atomic step, so no completion is ever lost
-- between Redis and the queue (the reaper re-enqueues whatever stays pending).
-- KEYS: meta, done, idle index, pending index, event feed
-- ARGV: call_id, now, reason, idle cutoff ('' for an explicit completion), feed's max length,
--   the COMPLETED event as JSON (db/feed_events.py)
-- Returns {outcome, state}: outcome is completed | already | unknown | active
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- A finished call's hash goes with its release (release.lua), its done marker stays: it was
  -- completed (its state is PostgreSQL's now). An erased call's tombstone knows no call.
  local done = redis.call('GET', KEYS[2])
  if done and done ~= 'erased' then
    return {'already', ''}
  end
  return {'unknown', ''}
end
if ARGV[4] ~= '' then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_packet_at') or '0')
  if last > tonumber(ARGV[4]) then
    return {'active', 'IN_PROGRESS'}
  end
end
-- The marker's value is never read (only an erasure's tombstone is told apart): '1', an integer
-- Redis keeps in the key's own object, is the smallest a marker that lives for days can be.
if redis.call('SET', KEYS[2], '1', 'NX') then
  redis.call('HSET', KEYS[1], 'state', 'COMPLETED', 'completed_at', ARGV[2],
    'completion_reason', ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  -- The live feed (db/events.py), in the same step as the change.
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[6])
  return {'completed', 'COMPLETED'}
end
return {'already', redis.call('HGET', KEYS[1], 'state') or 'COMPLETED'}
