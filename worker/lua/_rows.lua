-- Shared prelude of the scripts that read tasks for a poll (claim, load).
-- pending_row(key): what one batch poll needs of a task hash: {record, state, sched,
-- deadline_at_ms, seen, missing_since_ms, misses} (the last four only in hashes written before
-- 'sched' held them; see store.load_rows).
local function pending_row(key)
  return redis.call('HMGET', key, 'record', 'state', 'sched', 'deadline_at_ms', 'seen', 'missing_since_ms', 'misses')
end
