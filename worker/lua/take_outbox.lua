-- Take due deliveries from the outbox for one dispatcher: their score moves to now + lease,
-- so a dispatcher that dies before handing them to the job queue loses nothing; the caller
-- removes each one only after its job is enqueued.
-- KEYS: 1 outbox zset. ARGV: 1 now_ms, 2 lease_ms, 3 max count
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
end
return ids
