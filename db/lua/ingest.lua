-- Store a batch of packets of one call atomically: refuse a completed call, drop duplicates,
-- append new packets to the stream, detect reordering and gaps, update the counters.
-- KEYS: packets, meta, seen, seen_high, done, idle index, unflushed index
-- ARGV: call_id, now, bitmap limit, packets as one JSON array of [sequence, "timestamp", "data"]
--   (one argument instead of three per packet: packing arguments is the client's main cost)
-- Returns {-1} for a completed call, else two numbers per packet: outcome, gap start
--   outcome 0 = new and in order, 1 = duplicate, 2 = out of order, 3 = new after a gap
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {-1}
end
local call_id, now = ARGV[1], ARGV[2]
local bitmap_limit = tonumber(ARGV[3])
local max_seq = tonumber(redis.call('HGET', KEYS[2], 'max_seq') or '-1')
local min_seq = tonumber(redis.call('HGET', KEYS[2], 'min_seq') or '-1')
local packets = cjson.decode(ARGV[4])
local out = {}
local received, duplicates, reordered = 0, 0, 0
for i = 1, #packets do
  local packet = packets[i]
  local seq = packet[1]
  local seq_s = string.format('%d', seq)
  local fresh
  if seq < bitmap_limit then
    fresh = redis.call('SETBIT', KEYS[3], seq, 1) == 0
  else
    fresh = redis.call('SADD', KEYS[4], seq_s) == 1
  end
  local outcome, gap_from = 0, 0
  if not fresh then
    duplicates = duplicates + 1
    outcome = 1
  else
    redis.call('XADD', KEYS[1], '*', 's', seq_s, 't', packet[2], 'd', packet[3])
    received = received + 1
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
    redis.call('ZADD', KEYS[7], now, call_id)
  end
  redis.call('HINCRBY', KEYS[2], 'received', received)
  redis.call('HSET', KEYS[2], 'max_seq', string.format('%d', max_seq),
    'min_seq', string.format('%d', min_seq))
end
if duplicates > 0 then redis.call('HINCRBY', KEYS[2], 'duplicates', duplicates) end
if reordered > 0 then redis.call('HINCRBY', KEYS[2], 'out_of_order', reordered) end
redis.call('HSET', KEYS[2], 'last_packet_at', now)
redis.call('ZADD', KEYS[6], now, call_id)
return out
