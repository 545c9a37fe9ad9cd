-- Claim waiting jobs of a job queue in one step (the queue is arq's; its names come as ARGV, so
-- this script knows nothing of arq). For each id: skip it if its in-progress marker exists
-- (running elsewhere) or it is not due (gone, or deferred); else set the marker. Atomic like the
-- WATCH/MULTI transaction it replaces, one round trip for a whole batch instead of three per job.
-- The in-progress keys are built here, so the queue must live on one Redis (not a cluster).
-- At most `most` jobs are claimed; the ids after the last one claimed are left unlooked at.
-- KEYS: the queue (sorted set of job ids by due time in ms)
-- ARGV: now ms, marker ttl ms, in-progress key prefix, most to claim, job ids...
-- Returns {claimed id, its score, ..., '', running id, ...}
local now, ttl, prefix, most = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local claimed, running = {}, {}
local taken = 0
for i = 5, #ARGV do
  if taken >= most then break end
  local id = ARGV[i]
  if redis.call('EXISTS', prefix .. id) == 1 then
    running[#running + 1] = id
  else
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('SET', prefix .. id, '1', 'PX', ttl)
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
      taken = taken + 1
    end
  end
end
claimed[#claimed + 1] = ''
for _, id in ipairs(running) do claimed[#claimed + 1] = id end
return claimed
