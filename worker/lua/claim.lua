-- Claim a batch of due ids for one (service, token) queue, atomically across workers.
-- Honours a token pause and a service back-off, spends one request of the token's shared
-- rate budget (GCRA), then takes ids due now plus those due within the coalesce window,
-- oldest first. A claimed id's due score becomes now + lease: if the claimer dies, the id
-- is due again after the lease; a finished poll reschedules it (only with its claim id).
-- KEYS: 1 due zset, 2 backoff hash, 3 paused key, 4 rate key
-- ARGV: 1 now_ms, 2 coalesce_ms, 3 lease_ms, 4 batch size, 5 claim id, 6 emission_ms,
--       7 burst tolerance ms, 8 task key prefix ('{p}:task:{service}:')
-- Returns {1, ids...} when claimed, else {0, wait_ms} (wait_ms -1: nothing is due at all).
local now = tonumber(ARGV[1])
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return {0, paused} end
local until_ms = tonumber(redis.call('HGET', KEYS[2], 'until_ms') or '0')
if until_ms > now then return {0, until_ms - now} end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return {0, -1} end
local first_due = tonumber(first[2])
if first_due > now then return {0, first_due - now} end
local tat = math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), now)
local allow_at = tat - tonumber(ARGV[7])
if now < allow_at then return {0, allow_at - now} end
local new_tat = tat + tonumber(ARGV[6])
redis.call('SET', KEYS[4], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now + tonumber(ARGV[2]), 'LIMIT', 0, tonumber(ARGV[4]))
local lease_until = now + tonumber(ARGV[3])
local out = {1}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], lease_until, id)
  redis.call('HSET', ARGV[8] .. id, 'claim', ARGV[5])
  out[#out + 1] = id
end
return out
