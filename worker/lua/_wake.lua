-- Shared prelude of the scripts that announce work no claim loop plans for (register, release, hint).
-- announce(channel, member, due_ms): publish '<service>:<token>|<due_ms>' on the wake channel
-- (store.Store.wakes reads it back).
local function announce(channel, member, due_ms)
  redis.call('PUBLISH', channel, member .. '|' .. due_ms)
end
