-- Shared prelude of the scripts that read tasks for a poll (claim, load).
-- pending_row(key): what one batch poll needs of a task hash: {record, state, sched}
-- (store.codecs.pending_rows reads it).
local function pending_row(key)
  return redis.call('HMGET', key, 'record', 'state', 'sched')
end
