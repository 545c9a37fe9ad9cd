-- Store a batch of packets of one call atomically: refuse a completed call, and a batch that would
-- take the call past its caps; drop duplicates, append new packets to the stream, detect
-- reordering and gaps per track, update the counters, and ask for a segment flush when the
-- unflushed tail is full.
-- KEYS: packets, meta, inbound runs, outbound runs, done, idle index, unflushed index, event feed,
--   segments index
-- ARGV: call_id, now, max packets per call, max data bytes per call,
--   the packets but their data as one flat JSON array, three values a packet: track, sequence,
--   "timestamp" (track 0 = inbound, 1 = outbound; flat, as cjson builds one table for the batch,
--   not one a packet),
--   the event feed's max length, seconds between a call's progress events (0: none),
--   stream entries per track that make a segment (0: never ask), seconds of arrival that do,
--   the call's IN_PROGRESS event as JSON (db/feed_events.py: told if this batch starts the call),
--   the entries a track's unflushed tail may hold (0: no bound),
--   then each packet's data, an argument each (ARGV[12] on), in the array's order: a frame's
--   data is not scanned by cjson nor made a Lua string twice (63.0k -> 58.4-58.8k instructions
--   of Redis a packet; the client packs arguments in C, db/pipelining.py)
-- Returns {-1} for a completed call; {-2, cap, stored, adding} when the batch's new packets would
--   pass a cap (cap 1 = packets, 2 = data bytes; nothing is stored); {-3, entries, bound} when
--   the unflushed tail is at its bound (the flush is behind: nothing is stored, the client is
--   told to wait); else two numbers per packet
--   (outcome, gap start), then the number of the segment flush this batch asked for (0: none)
--   outcome 0 = new and in order, 1 = duplicate, 2 = out of order, 3 = new after a gap
--
-- Each track is its own timeline: its sequences, its runs, its bounds (Twilio's media.chunk
-- counts per track). The call's totals (received, duplicates, out_of_order, data_bytes) are kept
-- as before; the outbound track keeps its own counts beside them (o_*), the inbound one's are
-- the totals minus those, so a one-track call costs what it always did.
--
-- Dedup keeps the runs of stored sequences, not one bit per sequence: a sorted set with one
-- member per run, the run's first sequence, scored by its last. Memory grows with the gaps a track
-- has, never with the numbers it names: an in-order track is one entry however long it is, and a
-- packet at 2^53-1 costs one entry like any other. Exact: sequences are integers below 2^53, which
-- doubles (Lua numbers and sorted-set scores alike) hold exactly. Runs are merged as soon as they
-- touch, so no two runs are adjacent and ordering by last sequence is ordering by first.
--
-- The last run (the one that ends at max_seq) is the one an in-order packet extends; its score is
-- left behind (it is only ever >= its first), and the hash keeps its first (last_run_from), so an
-- in-order packet costs no sorted-set command at all. Its score is set when a gap closes it.
-- Readers lose nothing: a gap lies between one run's last and the next run's first, and no run
-- comes after the last one.
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {-1}
end
-- A number from Redis' text or the client's, `default` for none: the arithmetic converts it once,
-- where tonumber() runs its strtod twice (lua_isnumber, then lua_tonumber).
local function num(text, default)
  if text then return text + 0 end
  return default
end

local call_id, now = ARGV[1], ARGV[2]
local max_packets, max_bytes = num(ARGV[3]), num(ARGV[4])
local packets = cjson.decode(ARGV[5])
local segment_entries = num(ARGV[8])

local meta = redis.call('HMGET', KEYS[2], 'received', 'data_bytes', 'duplicates', 'out_of_order',
  'progress_at', 'max_seq', 'min_seq', 'last_run_from', 'o_max_seq', 'o_min_seq',
  'o_last_run_from', 'o_received', 'o_duplicates', 'o_out_of_order', 'seg_open_at',
  'seg_asked_at', 'seg_asked', 'created_at')
-- Read once each: a conversion costs a strtod.
local had_packets, had_bytes = num(meta[1], 0), num(meta[2], 0)
local had_outbound = num(meta[12], 0)

-- Backpressure: a tail at its bound (per track: a two-track call's is twice a one-track call's)
-- takes nothing more until a flush trims it, so Redis holds a bounded tail of each live call
-- whatever the client's pace. A batch is checked as a whole: the tail may pass the bound by at
-- most one batch.
local max_tail = num(ARGV[11], 0)
local entries -- the stream's length before this batch, when read here
if max_tail > 0 then
  local tracks_in_call = (had_outbound > 0 and had_packets > had_outbound) and 2 or 1
  entries = redis.call('XLEN', KEYS[1])
  if entries >= max_tail * tracks_in_call then
    return {-3, entries, max_tail * tracks_in_call}
  end
end

-- Each track's state; `prefix` names its hash fields.
local tracks = {
  [0] = {runs = KEYS[3], prefix = '', max_seq = num(meta[6], -1),
         min_seq = num(meta[7], -1), tail = num(meta[8], -1),
         received = 0, duplicates = 0, reordered = 0},
  [1] = {runs = KEYS[4], prefix = 'o_', max_seq = num(meta[9], -1),
         min_seq = num(meta[10], -1), tail = num(meta[11], -1),
         received = 0, duplicates = 0, reordered = 0},
}

-- Redis' own clock, in seconds with milliseconds (a stream entry's id is its milliseconds): read
-- once, so the tail's opening and its age are one reading.
local clock
local function redis_now()
  if clock == nil then
    local t = redis.call('TIME')
    clock = string.format('%.3f', num(t[1]) + num(t[2]) / 1e6)
  end
  return clock
end

-- Numbers go to redis.call as they are: Redis prints a number argument with %.17g, exact for the
-- integers below 2^53 these are (Lua's own tostring would keep 14 significant digits).

-- The runs next to seq (< tail), as {first, last}: `left` ends at seq - 1; `right` is the first
-- run that ends at seq or later (it holds seq if it starts at seq or before). One lookup: the two
-- runs with the smallest last sequence >= seq - 1.
local function neighbours(t, seq)
  local found = redis.call('ZRANGE', t.runs, seq - 1, '+inf', 'BYSCORE', 'LIMIT', 0, 2,
    'WITHSCORES')
  local left, i = nil, 1
  if found[2] ~= nil and num(found[2]) == seq - 1 then
    left, i = {num(found[1]), seq - 1}, 3
  end
  if found[i] ~= nil then
    return left, {num(found[i]), num(found[i + 1])}
  end
  return left, nil
end

local function stored(t, seq)
  if t.max_seq < 0 or seq > t.max_seq then return false end
  if seq >= t.tail then return true end
  local _, right = neighbours(t, seq)
  return right ~= nil and right[1] <= seq
end

-- Add seq (below the last run, not stored) to the runs, merging it with the runs it touches. A
-- run is renamed (ZREM + ZADD) only when it grows downwards.
local function add_below(t, seq, left, right)
  local joins_right = right ~= nil and right[1] == seq + 1
  if left ~= nil and joins_right then
    redis.call('ZREM', t.runs, right[1])
    redis.call('ZADD', t.runs, right[2], left[1])
  elseif left ~= nil then
    redis.call('ZADD', t.runs, seq, left[1])
  elseif joins_right then
    redis.call('ZREM', t.runs, right[1])
    redis.call('ZADD', t.runs, right[2], seq)
  else
    redis.call('ZADD', t.runs, seq, seq)
  end
  if joins_right and right[1] == t.tail then
    t.tail = left ~= nil and left[1] or seq
  end
end

-- Record seq in the track's runs, before max_seq moves; false if it was stored already.
local function place(t, seq)
  if t.max_seq < 0 or seq > t.max_seq + 1 then
    -- A new last run; the one it follows gets its real last sequence.
    if t.max_seq >= 0 then redis.call('ZADD', t.runs, t.max_seq, t.tail) end
    redis.call('ZADD', t.runs, seq, seq)
    t.tail = seq
    return true
  end
  if seq == t.max_seq + 1 then return true end
  if seq >= t.tail then return false end
  local left, right = neighbours(t, seq)
  if right ~= nil and right[1] <= seq then return false end
  add_below(t, seq, left, right)
  return true
end

local function track_of(number)
  local t = tracks[number]
  if t == nil then error('unknown track ' .. tostring(number)) end
  return t
end

-- How many packets of the batch are new, and their data bytes, without storing anything.
local function count_new()
  local count, bytes, taken = 0, 0, {[0] = {}, [1] = {}}
  for i = 1, #packets, 3 do
    local track, seq = packets[i], packets[i + 1]
    if not taken[track][seq] and not stored(track_of(track), seq) then
      taken[track][seq] = true
      count = count + 1
      bytes = bytes + #ARGV[11 + (i + 2) / 3]
    end
  end
  return count, bytes
end

-- The caps. Counting the batch's new packets costs a second lookup per packet out of order, so
-- it is done only when the whole batch, duplicates included, might not fit.
local batch_bytes = 0
for i = 12, #ARGV do
  batch_bytes = batch_bytes + #ARGV[i]
end
if had_packets + #packets / 3 > max_packets or had_bytes + batch_bytes > max_bytes then
  local count, bytes = count_new()
  if had_packets + count > max_packets then
    return {-2, 1, had_packets, count}
  end
  if had_bytes + bytes > max_bytes then
    return {-2, 2, had_bytes, bytes}
  end
end

local out, n = {}, 0
local received, received_bytes, duplicates, reordered = 0, 0, 0, 0
local stream = KEYS[1]
for i = 1, #packets, 3 do
  local track, seq, data = packets[i], packets[i + 1], ARGV[11 + (i + 2) / 3]
  local t = tracks[track] or track_of(track)
  local outcome, gap_from = 0, 0
  -- The next in order, most packets, is new and extends the last run: place() would say so.
  if not ((seq == t.max_seq + 1 and t.max_seq >= 0) or place(t, seq)) then
    duplicates = duplicates + 1
    t.duplicates = t.duplicates + 1
    outcome = 1
  else
    redis.call('XADD', stream, '*', 'k', track, 's', seq, 't', packets[i + 2], 'd', data)
    received = received + 1
    t.received = t.received + 1
    received_bytes = received_bytes + #data
    if t.max_seq < 0 then
      t.max_seq, t.min_seq = seq, seq
    elseif seq < t.max_seq then
      reordered = reordered + 1
      t.reordered = t.reordered + 1
      outcome = 2
      if seq < t.min_seq then t.min_seq = seq end
    else
      if seq > t.max_seq + 1 then
        outcome, gap_from = 3, t.max_seq + 1
      end
      t.max_seq = seq
    end
  end
  out[n + 1], out[n + 2] = outcome, gap_from
  n = n + 2
end

-- Every field the batch changes goes in one HSET at the end (one command, one AOF entry); the
-- counters are the values read above plus the batch's, which is what HINCRBY would make of them.
local fields, f = {}, 0
local function set(name, value)
  fields[f + 1], fields[f + 2] = name, value
  f = f + 2
end
local outbound = tracks[1]
local new_call = received > 0 and not meta[18]
if received > 0 then
  if new_call then set('created_at', now); set('state', 'IN_PROGRESS') end
  -- Only a new packet shows the call is alive: a repeated one must not keep it open forever.
  set('received', had_packets + received)
  set('data_bytes', had_bytes + received_bytes)
  set('last_packet_at', now)
  for _, t in pairs(tracks) do
    if t.received > 0 then
      local p = t.prefix
      set(p .. 'max_seq', t.max_seq); set(p .. 'min_seq', t.min_seq)
      set(p .. 'last_run_from', t.tail)
    end
  end
  -- The tail's age starts with its oldest entry (segment_done.lua moves it on): read above,
  -- so a tail that is open costs no command. On Redis' clock, as segment_done.lua reads it
  -- from the oldest entry's id: one clock for the tail's age, whatever the API host's says.
  if not meta[15] then set('seg_open_at', redis_now()) end
end
if duplicates > 0 then set('duplicates', num(meta[3], 0) + duplicates) end
if reordered > 0 then set('out_of_order', num(meta[4], 0) + reordered) end
if outbound.received > 0 then set('o_received', had_outbound + outbound.received) end
if outbound.duplicates > 0 then
  set('o_duplicates', num(meta[13], 0) + outbound.duplicates)
end
if outbound.reordered > 0 then
  set('o_out_of_order', num(meta[14], 0) + outbound.reordered)
end

-- A segment flush is asked for once the unflushed tail holds a segment's entries per track, or
-- its oldest entry is a segment's length old; once, until the flush that answers it is done
-- (db/lua/segment_done.lua clears seg_asked_at). The segments index lets the reaper ask again
-- if the job is lost. Redis then holds about a segment of each live call, whatever its length.
-- The stream's length is the one read for the bound plus this batch's entries, when it was read.
local asked = 0
if received > 0 and segment_entries > 0 and not meta[16] then
  local total_outbound = had_outbound + outbound.received
  local both = total_outbound > 0 and (had_packets + received) > total_outbound
  local length = entries and entries + received or redis.call('XLEN', KEYS[1])
  local at = redis_now()
  local opened = num(meta[15] or at)
  if length >= segment_entries * (both and 2 or 1)
      or num(at) - opened >= num(ARGV[9]) then
    asked = num(meta[17], 0) + 1
    set('seg_asked', asked); set('seg_asked_at', now)
  end
end

-- The live feed (db/events.py), in the same step as the change: the call's first packet, then at
-- most one progress event per interval while packets come (a dashboard's counters), so the feed
-- grows with calls and seconds, never with packets. The first comes encoded by its model
-- (db/feed_events.py); a progress event's counters are known here only, so it is built here,
-- field for field as ProgressEvent (tests/db/test_feed_events.py holds it to the model).
local event
local interval = num(ARGV[7])
if had_packets == 0 and received > 0 then
  event = ARGV[10]
elseif interval > 0 and received + duplicates > 0
    and num(now) - num(meta[5], 0) >= interval then
  local total = had_packets + received
  local missing = 0
  for _, t in pairs(tracks) do
    if t.max_seq >= 0 then missing = missing + t.max_seq - t.min_seq + 1 end
  end
  event = cjson.encode({type = 'progress', call_id = call_id, state = 'IN_PROGRESS',
    at = num(now), received = total,
    duplicates = num(meta[3], 0) + duplicates,
    out_of_order = num(meta[4], 0) + reordered,
    missing = missing - total, data_bytes = had_bytes + received_bytes,
    last_packet_at = num(now)})
end
if event then set('progress_at', now) end

if f > 0 then redis.call('HSET', KEYS[2], unpack(fields, 1, f)) end
if new_call then redis.call('ZADD', KEYS[7], now, call_id) end
if received > 0 then redis.call('ZADD', KEYS[6], now, call_id) end
if asked > 0 then redis.call('ZADD', KEYS[9], now, call_id) end
if event then redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[6], '*', 'e', event) end
out[n + 1] = asked
return out
