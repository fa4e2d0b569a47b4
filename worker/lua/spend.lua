-- Spend one request of a token's shared rate budget (GCRA), for requests beyond a claim's own
-- (a 413 split). KEYS: 1 rate key. ARGV: 1 now_ms, 2 emission_ms, 3 burst tolerance ms.
-- Returns 0 when spent, else the ms to wait.
local now = tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local allow_at = tat - tonumber(ARGV[3])
if now < allow_at then return allow_at - now end
local new_tat = tat + tonumber(ARGV[2])
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return 0
