-- A poll's writes in one step (one EVALSHA instead of a pipeline of one per task): any number
-- of update, finish and touch calls (``_update.lua``, ``_finish.lua``, ``_touch.lua``), then
-- optionally 'forget', which deletes the service's back-off failure count.
-- KEYS: every call's keys, in call order
-- ARGV: per call: its name, its key count, its argument count, then its arguments
-- Returns each call's result, in order.
local calls = {update = update, finish = finish, touch = touch}
calls.forget = function(keys)
  return redis.call('DEL', keys[1])
end
local out, k, i = {}, 1, 1
while i <= #ARGV do
  local call, nkeys, nargs = calls[ARGV[i]], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local keys, args = {}, {}
  for j = 1, nkeys do keys[j] = KEYS[k + j - 1] end
  for j = 1, nargs do args[j] = ARGV[i + 2 + j] end
  out[#out + 1] = call(keys, args)
  k = k + nkeys
  i = i + 3 + nargs
end
return out
