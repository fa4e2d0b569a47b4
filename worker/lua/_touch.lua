-- Store many observations that changed nothing a reader sees (the common case: still running)
-- without rewriting their records: only the scheduling fields and the next due time move.
-- Each id is written only while this poll holds its claim and the task is still pending.
-- KEYS: 1 due zset
-- ARGV: 1 claim id, 2 task key prefix, then per id 3 values: id, next_due_ms, sched
-- Returns how many ids were written.
-- (``touch.lua`` runs it alone; ``write.lua`` runs many writes of one poll in one step.)
local function touch(KEYS, ARGV)
  local n = 0
  for i = 3, #ARGV, 3 do
    local key = ARGV[2] .. ARGV[i]
    local now = redis.call('HMGET', key, 'state', 'claim')
    if now[1] == 'pending' and now[2] == ARGV[1] then
      redis.call('HDEL', key, 'claim')
      redis.call('HSET', key, 'sched', ARGV[i + 2])
      redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
      n = n + 1
    end
  end
  return n
end
