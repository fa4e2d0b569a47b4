-- Claim a batch of due ids for one (service, token) queue, atomically across workers.
-- Honours a token pause and a service back-off, spends one request of the token's shared
-- rate budget (GCRA), then takes ids due now, oldest first, and tops the batch up with ids
-- due within the coalesce window, except one polled less than min_repoll_ms ago (it would be
-- asked again moments after its last answer). A claimed id's due score becomes now + lease:
-- if the claimer dies, the id is due again after the lease; a finished poll reschedules it
-- (only with its claim id).
-- KEYS: 1 due zset, 2 backoff hash, 3 paused key, 4 rate key, 5 last claimer key
-- ARGV: 1 now_ms, 2 coalesce_ms, 3 lease_ms, 4 batch size, 5 claim id, 6 emission_ms,
--       7 burst tolerance ms, 8 task key prefix ('{p}:task:{service}:'), 9 min_repoll_ms,
--       10 early_ms: an id due within this is due now (a claimer's timer may fire a few ms
--       early; without it, that claim would find nothing and the claimer would ask again),
--       11 worker id, 12 planned_ms: when the claimer was told an id falls due (0: just a look),
--       13 the position of polled_ms among the '|'-separated sched fields (store.codecs.SCHED_POLLED)
-- A task's hash is ARGV[8] .. id: the one key a script builds, since a claim cannot name its ids
-- before it picks them.
-- Returns {1, next_ms, ids, rows, late_ms} when claimed, else {0, wait_ms, why} (wait_ms -1: nothing
-- is due at all); why: 'paused', 'backoff', 'rate' (the refusals), 'empty', 'later' (no id is due yet), or
-- 'taken': none is due, and another worker claimed this queue since the ids due at planned_ms could
-- be taken (topped up into its batch, coalesce_ms early): it took them, and it plans for this queue.
-- next_ms: 0 when more ids are due now (the batch is full) and the rate budget allows another
-- request now, else the ms until both hold: the next id falls due and the budget allows it (-1: none
-- left), so the claimer need not ask again to learn it. rows: each claimed id's
-- pending_row (_rows.lua), so the poll need not read them in a round trip of its own. late_ms: how
-- long the oldest id still due after this batch has been due (0: the batch left none overdue): how
-- far claims run behind their queue. Not the batch's own oldest: a task a poll placed ahead of the queue
-- (cadence.schedule_ms) would read as a backlog of its own making once the real one drained.
local now = tonumber(ARGV[1])
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return {0, paused, 'paused'} end
local until_ms = tonumber(redis.call('HGET', KEYS[2], 'until_ms') or '0')
if until_ms > now then return {0, until_ms - now, 'backoff'} end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return {0, -1, 'empty'} end
local first_due = tonumber(first[2])
local due_by = now + tonumber(ARGV[10] or '0')
if first_due > due_by then
  local planned = tonumber(ARGV[12] or '0')
  local last = planned > 0 and redis.call('GET', KEYS[5])
  if last then
    local who, at = string.match(last, '^(.*)|(%d+)$')
    if at and who ~= ARGV[11] and tonumber(at) >= planned - tonumber(ARGV[2]) - tonumber(ARGV[10]) then
      return {0, first_due - now, 'taken'}
    end
  end
  return {0, first_due - now, 'later'}
end
local tat = math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), now)
local allow_at = tat - tonumber(ARGV[7])
-- whole ms, rounded up: a wait that rounds down to 0 would be spent asking again at once
if now < allow_at then return {0, math.ceil(allow_at - now), 'rate'} end
local new_tat = tat + tonumber(ARGV[6])
redis.call('SET', KEYS[4], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
redis.call('SET', KEYS[5], ARGV[11] .. '|' .. ARGV[1], 'PX', math.max(1, tonumber(ARGV[3])))
local batch = tonumber(ARGV[4])
local recent = now - tonumber(ARGV[9] or '0')
local polled_at = '^' .. string.rep('[^|]*|', tonumber(ARGV[13]) - 1) .. '(%d+)'
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', math.max(due_by, now + tonumber(ARGV[2])), 'WITHSCORES', 'LIMIT', 0, batch * 2)
local lease_until = now + tonumber(ARGV[3])
local ids, rows = {}, {}
for i = 1, #found, 2 do
  if #ids >= batch then break end
  local id = found[i]
  local take = tonumber(found[i + 1]) <= due_by
  if not take then
    local sched = redis.call('HGET', ARGV[8] .. id, 'sched') or ''
    local polled = tonumber(string.match(sched, polled_at) or '0')
    take = polled <= recent
  end
  if take then
    redis.call('ZADD', KEYS[1], lease_until, id)
    redis.call('HSET', ARGV[8] .. id, 'claim', ARGV[5])
    ids[#ids + 1] = id
    rows[#rows + 1] = pending_row(ARGV[8] .. id)
  end
end
-- when the next claim can find something: at once if an id is still due (a full batch left it),
-- else at the next due time (a claim that found nothing would cost a round trip to learn it);
-- and not before the rate budget allows it (a claim it refused would cost one too)
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_ms = -1
local late_ms = 0
if next_due[2] then
  local next_at = tonumber(next_due[2])
  late_ms = math.max(0, now - next_at)
  next_ms = next_at <= due_by and 0 or math.max(1, next_at - now)
  local rate_ms = new_tat - tonumber(ARGV[7]) - now
  if rate_ms >= 1 then next_ms = math.max(next_ms, math.ceil(rate_ms)) end
end
return {1, next_ms, ids, rows, late_ms}
