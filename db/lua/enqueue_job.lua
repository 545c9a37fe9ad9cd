-- Queue a job as arq's enqueue_job does, in one step, and wake idle workers (the queue is arq's;
-- its names come as KEYS and ARGV, so this script knows nothing of arq). arq's own takes three
-- round trips (WATCH, EXISTS, MULTI/EXEC) for the same atomic check-and-set. The wake is sent
-- only if a worker said it is idle (the idle marker, which the wake takes): a busy worker is
-- not made to read a message per job.
-- KEYS: the job's key, its result's key, the queue (sorted set of job ids by due time in ms),
--       the idle marker
-- ARGV: job id, due time ms, job key ttl ms, the serialized job, the wake channel
-- Returns 1 if queued, 0 if a job or result of that id exists (nothing is written then).
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if redis.call('DEL', KEYS[4]) == 1 then
  -- pcall: a user whose ACL allows no channels still queues (workers read the queue every second)
  redis.pcall('PUBLISH', ARGV[5], '')
end
return 1
