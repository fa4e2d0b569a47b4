-- Register a task once: a second enqueue of (service, id) keeps the first record, unless
-- `reopen` asks to restart a finished task. Optionally acks and deletes the intake entry in
-- the same step, so an entry is never both registered and left for another worker.
-- KEYS: 1 task, 2 due zset, 3 queues set, 4 services set, 5 intake stream,
--       6 idx pending, 7 idx succeeded, 8 idx failed (this service),
--       9 all-services idx succeeded, 10 all-services idx failed
-- ARGV: 1 record json, 2 sched (scheduling fields), 3 due_ms, 4 queue member, 5 service, 6 id,
--       7 now_ms, 8 reopen (0/1), 9 intake group, 10 intake entry id ('' for none), 11 wake channel
-- A task due sooner than every other of its queue, or the first of a new queue, is published on
-- the wake channel ('<queue member>|<due_ms>'): no worker's claim loop plans to look by then, since
-- each sleeps until its queue's soonest due time (see loops.WakeLoop).
local state = redis.call('HGET', KEYS[1], 'state')
local created = 0
if (not state) or (ARGV[8] == '1' and state ~= 'pending') then
  local member = ARGV[5] .. ':' .. ARGV[6]
  -- a new task's first write is the HSET: Redis checks it against maxmemory (a script's later
  -- writes are not checked), so a full Redis refuses the registration whole instead of growing
  if state then redis.call('DEL', KEYS[1]) end
  redis.call('HSET', KEYS[1], 'record', ARGV[1], 'state', 'pending', 'sched', ARGV[2])
  local soonest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
  local new_queue = redis.call('SADD', KEYS[3], ARGV[4])
  if new_queue == 1 or #soonest == 0 or tonumber(soonest[2]) > tonumber(ARGV[3]) then
    announce(ARGV[11], ARGV[4], ARGV[3])
  end
  redis.call('SADD', KEYS[4], ARGV[5])
  redis.call('ZREM', KEYS[7], ARGV[6])
  redis.call('ZREM', KEYS[8], ARGV[6])
  redis.call('ZADD', KEYS[6], ARGV[7], ARGV[6])
  -- pending tasks are indexed per service only (one sorted-set entry less per pending task)
  redis.call('ZREM', KEYS[9], member)
  redis.call('ZREM', KEYS[10], member)
  created = 1
end
if ARGV[10] ~= '' then
  redis.call('XACK', KEYS[5], ARGV[9], ARGV[10])
  redis.call('XDEL', KEYS[5], ARGV[10])
end
-- the stored record as store.codecs.record_of reads it (a missing field is false: a nil reply)
local stored = redis.call('HMGET', KEYS[1], 'record', 'sched', 'response')
return {created, stored[1], stored[2], stored[3]}
