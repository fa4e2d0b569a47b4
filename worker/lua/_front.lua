-- Shared prelude of the scripts that make a task due because the upstream called back (hint, and
-- a poll's write after a callback came while it was in flight: _touch.lua's due_after_hint).
-- A callback's task goes first among its queue's due ids: at ``at_ms``, or just before the soonest
-- due id when that is earlier. When the rate budget is short, due ids queue up oldest first, and a
-- task that is most likely done would otherwise wait behind every overdue poll of a running one.
local function ahead_of_backlog(due_key, id, at_ms)
  local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
  if head[1] and head[1] ~= id and tonumber(head[2]) <= at_ms then return tonumber(head[2]) - 1 end
  return at_ms
end
