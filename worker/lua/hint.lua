-- A hint that a task may be done (the upstream's own callback): make it due now, first among the due
-- ids (_front.lua), unless a poll holds it (its answer is on the way). The next claim polls it with
-- whatever else is due.
-- The first callback for a task, pending or finished, is counted in the service's callback counts
-- (_finish.lua counts the finishes): the cadence learns from them how far it may rely on callbacks.
-- KEYS: 1 task hash, 2 due zset, 3 the service's callback counts.
-- ARGV: 1 id, 2 now_ms, 3 wake channel, 4 queue member
-- Returns 'hinted', 'due' (due already: it only moves ahead), 'in_flight' (a poll holds it: due once
-- it answers) or 'finished'.
if redis.call('HSETNX', KEYS[1], 'called_ms', ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'called', 1)
end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 'finished' end
if redis.call('HEXISTS', KEYS[1], 'claim') == 1 then
  -- the poll's answer may predate the finish: the poll's write makes it due at this time instead
  -- of its next poll's (_touch.lua, _update.lua), so the next claim confirms it
  redis.call('HSET', KEYS[1], 'hint_ms', ARGV[2])
  return 'in_flight'
end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then return 'finished' end
local due, now = tonumber(score), tonumber(ARGV[2])
local first = ahead_of_backlog(KEYS[2], ARGV[1], math.min(due, now))
if first < due then redis.call('ZADD', KEYS[2], 'XX', first, ARGV[1]) end
if due <= now then return 'due' end
-- due sooner than any claim loop plans for: wake the one that claims this queue (register.lua)
announce(ARGV[3], ARGV[4], ARGV[2])
return 'hinted'
