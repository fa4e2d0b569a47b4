-- Give claimed ids back without polling them (back-off, paused token, graceful stop): each id
-- still held by this claim becomes due at `due_ms`.
-- KEYS: 1 due zset. ARGV: 1 claim id, 2 due_ms, 3 task key prefix, 4.. ids
local n = 0
for i = 4, #ARGV do
  local key = ARGV[3] .. ARGV[i]
  if redis.call('HGET', key, 'claim') == ARGV[1] then
    redis.call('HDEL', key, 'claim')
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    n = n + 1
  end
end
return n
