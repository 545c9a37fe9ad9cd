-- Store a batch of packets of one call atomically: refuse a completed call, and a batch that would
-- take the call past its caps; drop duplicates, append new packets to the stream, detect
-- reordering and gaps, update the counters.
-- KEYS: packets, meta, runs, done, idle index, unflushed index,
--   legacy dedup bitmap, legacy dedup set (read once per call, see from_legacy), event feed
-- ARGV: call_id, now, max packets per call, max data bytes per call,
--   packets as one JSON array of [sequence, "timestamp", "data"]
--   (one argument instead of three per packet: packing arguments is the client's main cost),
--   the event feed's max length, seconds between a call's progress events (0: none)
-- Returns {-1} for a completed call; {-2, cap, stored, adding} when the batch's new packets would
--   pass a cap (cap 1 = packets, 2 = data bytes; nothing is stored); else two numbers per packet:
--   outcome, gap start
--   outcome 0 = new and in order, 1 = duplicate, 2 = out of order, 3 = new after a gap
--
-- Dedup keeps the runs of stored sequences, not one bit per sequence: a sorted set with one
-- member per run, the run's first sequence, scored by its last. Memory grows with the gaps a call
-- has, never with the numbers it names: an in-order call is one entry however long it is, and a
-- packet at 2^53-1 costs one entry like any other. Exact: sequences are integers below 2^53, which
-- doubles (Lua numbers and sorted-set scores alike) hold exactly. Runs are merged as soon as they
-- touch, so no two runs are adjacent and ordering by last sequence is ordering by first.
--
-- The last run (the one that ends at max_seq) is the one an in-order packet extends; its score is
-- left behind (it is only ever >= its first), and the hash keeps its first (last_run_from), so an
-- in-order packet costs no sorted-set command at all. Its score is set when a gap closes it.
-- Readers lose nothing: a gap lies between one run's last and the next run's first, and no run
-- comes after the last one.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {-1}
end
local RUNS = KEYS[3]
local call_id, now = ARGV[1], ARGV[2]
local max_packets, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local packets = cjson.decode(ARGV[5])

local meta = redis.call('HMGET', KEYS[2], 'max_seq', 'min_seq', 'received', 'data_bytes',
  'last_run_from', 'duplicates', 'out_of_order', 'progress_at')
local max_seq = tonumber(meta[1] or '-1')
local min_seq = tonumber(meta[2] or '-1')
local had_packets, had_bytes = tonumber(meta[3] or '0'), tonumber(meta[4] or '0')
local tail = tonumber(meta[5] or '-1') -- first sequence of the last run

-- Numbers go to Redis as integer text: redis.call would print them with 14 significant digits.
local function int(n)
  return string.format('%d', n)
end

-- The runs next to seq (< tail), as {first, last}: `left` ends at seq - 1; `right` is the first
-- run that ends at seq or later (it holds seq if it starts at seq or before). One lookup: the two
-- runs with the smallest last sequence >= seq - 1.
local function neighbours(seq)
  local found = redis.call('ZRANGE', RUNS, int(seq - 1), '+inf', 'BYSCORE', 'LIMIT', 0, 2,
    'WITHSCORES')
  local left, i = nil, 1
  if found[2] ~= nil and tonumber(found[2]) == seq - 1 then
    left, i = {tonumber(found[1]), seq - 1}, 3
  end
  if found[i] ~= nil then
    return left, {tonumber(found[i]), tonumber(found[i + 1])}
  end
  return left, nil
end

local function stored(seq)
  if max_seq < 0 or seq > max_seq then return false end
  if seq >= tail then return true end
  local _, right = neighbours(seq)
  return right ~= nil and right[1] <= seq
end

-- Add seq (below the last run, not stored) to the runs, merging it with the runs it touches. A
-- run is renamed (ZREM + ZADD) only when it grows downwards.
local function add_below(seq, left, right)
  local joins_right = right ~= nil and right[1] == seq + 1
  if left ~= nil and joins_right then
    redis.call('ZREM', RUNS, int(right[1]))
    redis.call('ZADD', RUNS, int(right[2]), int(left[1]))
  elseif left ~= nil then
    redis.call('ZADD', RUNS, int(seq), int(left[1]))
  elseif joins_right then
    redis.call('ZREM', RUNS, int(right[1]))
    redis.call('ZADD', RUNS, int(right[2]), int(seq))
  else
    redis.call('ZADD', RUNS, int(seq), int(seq))
  end
  if joins_right and right[1] == tail then
    tail = left ~= nil and left[1] or seq
  end
end

-- Record seq in the runs, before max_seq moves; false if it was stored already.
local function place(seq)
  if max_seq < 0 or seq > max_seq + 1 then
    -- A new last run; the one it follows gets its real last sequence.
    if max_seq >= 0 then redis.call('ZADD', RUNS, int(max_seq), int(tail)) end
    redis.call('ZADD', RUNS, int(seq), int(seq))
    tail = seq
    return true
  end
  if seq == max_seq + 1 then return true end
  if seq >= tail then return false end
  local left, right = neighbours(seq)
  if right ~= nil and right[1] <= seq then return false end
  add_below(seq, left, right)
  return true
end

-- How many packets of the batch are new, and their data bytes, without storing anything.
local function count_new()
  local count, bytes, taken = 0, 0, {}
  for i = 1, #packets do
    local seq = packets[i][1]
    if not taken[seq] and not stored(seq) then
      taken[seq] = true
      count = count + 1
      bytes = bytes + #packets[i][3]
    end
  end
  return count, bytes
end

-- A call that was live across the upgrade to runs has its sequences in the old dedup keys (a
-- bitmap below 2^23, a set above): turn them into runs once, on its first request since, so that
-- dedup stays exact (the flush relies on it: a sequence is stored once). Runs are found with
-- BITPOS, so a call costs a lookup per run, not per sequence. Remove with the legacy keys once
-- no call from before runs can be live.
local function from_legacy()
  local bits = redis.call('STRLEN', KEYS[7]) * 8
  local pos = 0
  while pos < bits do
    local first = redis.call('BITPOS', KEYS[7], 1, pos, -1, 'BIT')
    if first < 0 then break end
    local after = redis.call('BITPOS', KEYS[7], 0, first, -1, 'BIT')
    if after < 0 then after = bits end
    redis.call('ZADD', RUNS, int(after - 1), int(first))
    pos = after
  end
  tail = max_seq + 1 -- every legacy run is below it: add_below() applies
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[8])) do
    local seq = tonumber(member)
    local left, right = neighbours(seq)
    if right == nil or right[1] > seq then add_below(seq, left, right) end
  end
  tail = tonumber(redis.call('ZRANGE', RUNS, -1, -1)[1] or int(max_seq))
  redis.call('DEL', KEYS[7], KEYS[8])
  -- Converted: later requests must not look again (the bytes it sent before are not known).
  redis.call('HSET', KEYS[2], 'last_run_from', int(tail))
  redis.call('HSETNX', KEYS[2], 'data_bytes', '0')
end

if had_packets > 0 and tail < 0 then
  from_legacy()
end

-- The caps. Counting the batch's new packets costs a second lookup per packet out of order, so
-- it is done only when the whole batch, duplicates included, might not fit.
local batch_bytes = 0
for i = 1, #packets do
  batch_bytes = batch_bytes + #packets[i][3]
end
if had_packets + #packets > max_packets or had_bytes + batch_bytes > max_bytes then
  local count, bytes = count_new()
  if had_packets + count > max_packets then
    return {-2, 1, had_packets, count}
  end
  if had_bytes + bytes > max_bytes then
    return {-2, 2, had_bytes, bytes}
  end
end

local out = {}
local received, received_bytes, duplicates, reordered = 0, 0, 0, 0
for i = 1, #packets do
  local packet = packets[i]
  local seq = packet[1]
  local outcome, gap_from = 0, 0
  if not place(seq) then
    duplicates = duplicates + 1
    outcome = 1
  else
    redis.call('XADD', KEYS[1], '*', 's', int(seq), 't', packet[2], 'd', packet[3])
    received = received + 1
    received_bytes = received_bytes + #packet[3]
    if max_seq < 0 then
      max_seq, min_seq = seq, seq
    elseif seq < max_seq then
      reordered = reordered + 1
      outcome = 2
      if seq < min_seq then min_seq = seq end
    else
      if seq > max_seq + 1 then
        outcome, gap_from = 3, max_seq + 1
      end
      max_seq = seq
    end
  end
  out[#out + 1] = outcome
  out[#out + 1] = gap_from
end
if received > 0 then
  if redis.call('HSETNX', KEYS[2], 'created_at', now) == 1 then
    redis.call('HSET', KEYS[2], 'state', 'IN_PROGRESS')
    redis.call('ZADD', KEYS[6], now, call_id)
  end
  -- Only a new packet shows the call is alive: a repeated one must not keep it open forever.
  redis.call('HSET', KEYS[2], 'received', int(had_packets + received),
    'data_bytes', int(had_bytes + received_bytes), 'max_seq', int(max_seq),
    'min_seq', int(min_seq), 'last_run_from', int(tail), 'last_packet_at', now)
  redis.call('ZADD', KEYS[5], now, call_id)
end
if duplicates > 0 then redis.call('HINCRBY', KEYS[2], 'duplicates', duplicates) end
if reordered > 0 then redis.call('HINCRBY', KEYS[2], 'out_of_order', reordered) end

-- The live feed (db/events.py), in the same step as the change: the call's first packet, then at
-- most one progress event per interval while packets come (a dashboard's counters), so the feed
-- grows with calls and seconds, never with packets.
local function publish(body)
  body.call_id, body.at = call_id, tonumber(now)
  redis.call('XADD', KEYS[9], 'MAXLEN', '~', ARGV[6], '*', 'e', cjson.encode(body))
end
local interval = tonumber(ARGV[7])
if had_packets == 0 and received > 0 then
  publish({type = 'state', state = 'IN_PROGRESS', reason = cjson.null})
  redis.call('HSET', KEYS[2], 'progress_at', now)
elseif interval > 0 and received + duplicates > 0
    and tonumber(now) - tonumber(meta[8] or '0') >= interval then
  local total = had_packets + received
  publish({type = 'progress', state = 'IN_PROGRESS', received = total,
    duplicates = tonumber(meta[6] or '0') + duplicates,
    out_of_order = tonumber(meta[7] or '0') + reordered,
    missing = max_seq - min_seq + 1 - total, data_bytes = had_bytes + received_bytes,
    last_packet_at = tonumber(now)})
  redis.call('HSET', KEYS[2], 'progress_at', now)
end
return out
