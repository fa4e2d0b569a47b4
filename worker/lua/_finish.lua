-- Write a task's terminal state exactly once, with its events and hook deliveries (the
-- outbox) in the same step. A second observation (or a cancel racing a poll) changes nothing.
-- KEYS: 1 task, 2 due zset, 3 events, 4 outbox, 5 idx pending, 6 idx terminal, 7 lifetimes,
--       8 all-services idx terminal, 9 the service's callback counts (hint.lua)
-- ARGV: 1 the record, packed (store.codecs.finished_json), 2 state, 3 id, 4 now_ms, 5 retention_ms,
--       6 events maxlen, 7 delivery prefix, 8 events payload json, 9 lifetime sample ('' = don't
--       learn from it), 10 service, 11 lifetime samples kept, 12 finishes the callback counts stand
--       for (both are halved past twice this, so they follow what the upstream does now)
-- (``finish.lua`` runs it alone; ``write.lua`` runs many writes of one poll in one step.)
local function finish(KEYS, ARGV)
  if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
  local member = ARGV[10] .. ':' .. ARGV[3]
  redis.call('HSET', KEYS[1], 'record', ARGV[1], 'state', ARGV[2])
  redis.call('HDEL', KEYS[1], 'claim', 'sched', 'hint_ms')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[5], ARGV[3])
  redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3])
  redis.call('ZADD', KEYS[8], ARGV[4], member)
  if ARGV[9] ~= '' then
    redis.call('LPUSH', KEYS[7], ARGV[9])
    redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[11]) - 1)
    local finished = redis.call('HINCRBY', KEYS[9], 'finished', 1)
    if finished >= 2 * tonumber(ARGV[12]) then
      local called = tonumber(redis.call('HGET', KEYS[9], 'called') or '0')
      redis.call('HSET', KEYS[9], 'finished', math.floor(finished / 2), 'called', math.floor(called / 2))
    end
  end
  emit(KEYS[3], ARGV[6], KEYS[4], ARGV[7], tonumber(ARGV[5]), ARGV[4], cjson.decode(ARGV[8]))
  return 1
end
