-- Store a still-pending observation that changed the record and reschedule the id, only while
-- this poll holds the claim (a poll whose lease ran out must not move a newer claimer's
-- schedule) and the task is still pending. Emits progress / clip events with their deliveries
-- in the same step.
-- KEYS: 1 task, 2 due zset, 3 events, 4 outbox
-- ARGV: 1 claim id, 2 record json, 3 next_due_ms, 4 sched (scheduling fields), 5 id,
--       6 now_ms, 7 events maxlen, 8 delivery prefix, 9 retention_ms, 10 events payload json
-- (``update.lua`` runs it alone; ``write.lua`` runs many writes of one poll in one step; both with
-- ``_touch.lua``'s due_after_hint.)
local function update(KEYS, ARGV)
  if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
  if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[1] then return 0 end
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'sched', ARGV[4])
  redis.call('HDEL', KEYS[1], 'claim')
  redis.call('ZADD', KEYS[2], due_after_hint(KEYS[1], KEYS[2], ARGV[5], ARGV[3]), ARGV[5])
  emit(KEYS[3], ARGV[7], KEYS[4], ARGV[8], tonumber(ARGV[9]), ARGV[6], cjson.decode(ARGV[10]))
  return 1
end
