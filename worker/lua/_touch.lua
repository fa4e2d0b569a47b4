-- Store many observations that changed nothing a reader sees (the common case: still running)
-- without rewriting their records: only the scheduling fields and the next due time move.
-- Each id is written only while this poll holds its claim and the task is still pending.
-- KEYS: 1 due zset, then each id's task hash, in the order of the ids
-- ARGV: 1 claim id, then per id 3 values: id, next_due_ms, sched
-- Returns how many ids were written.
-- (``touch.lua`` runs it alone; ``write.lua`` runs many writes of one poll in one step.)
-- a callback that came while this poll was in flight (hint.lua) makes the task due at its time,
-- first among the due ids (_front.lua)
local function due_after_hint(key, due_key, id, due_ms)
  local hinted = redis.call('HGET', key, 'hint_ms')
  if not hinted then return due_ms end
  redis.call('HDEL', key, 'hint_ms')
  return ahead_of_backlog(due_key, id, math.min(tonumber(hinted), tonumber(due_ms)))
end

local function touch(KEYS, ARGV)
  local n = 0
  for i = 2, #ARGV, 3 do
    local key = KEYS[1 + (i + 1) / 3]
    local now = redis.call('HMGET', key, 'state', 'claim')
    if now[1] == 'pending' and now[2] == ARGV[1] then
      redis.call('HDEL', key, 'claim')
      redis.call('HSET', key, 'sched', ARGV[i + 2])
      redis.call('ZADD', KEYS[1], due_after_hint(key, KEYS[1], ARGV[i], ARGV[i + 1]), ARGV[i])
      n = n + 1
    end
  end
  return n
end
