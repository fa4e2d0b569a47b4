-- Take due deliveries from the outbox for one dispatcher: their score moves to now + lease,
-- so a dispatcher that dies before handing them to the job queue loses nothing; the caller
-- removes each one only after its job is enqueued.
-- KEYS: 1 outbox zset. ARGV: 1 now_ms, 2 lease_ms, 3 max count
-- Returns {{id, due_ms, id, due_ms, ...}, next_due_ms}: each taken id with its due time before
-- the lease, then the soonest due time left in the outbox (false when it is empty), so the
-- dispatcher can sleep until then.
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #taken, 2 do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), taken[i])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {taken, first[2] or false}
