-- Give claimed ids back without polling them (back-off, paused token, graceful stop): each id
-- still held by this claim becomes due at `due_ms`. When that makes them the queue's soonest, they
-- are announced on the wake channel like a registration (register.lua): no claim loop plans for
-- them, and the workers that ceded the queue to the releasing one (scheduler.QueuePlan) take over.
-- KEYS: 1 due zset, 2.. each id's task hash. ARGV: 1 claim id, 2 due_ms, 3 wake channel,
--       4 queue member, 5.. ids (in the order of their keys)
local n = 0
for i = 5, #ARGV do
  local key = KEYS[i - 3]
  if redis.call('HGET', key, 'claim') == ARGV[1] then
    redis.call('HDEL', key, 'claim')
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    n = n + 1
  end
end
if n > 0 then
  local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if soonest[2] and tonumber(soonest[2]) >= tonumber(ARGV[2]) then
    announce(ARGV[3], ARGV[4], ARGV[2])
  end
end
return n
