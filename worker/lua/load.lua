-- Read what one batch poll needs of each claimed id, in one round trip.
-- ARGV: 1 task key prefix, 2.. ids. Returns {record, state, sched, deadline_at_ms, seen,
-- missing_since_ms, misses} per id (the last four only in hashes written before 'sched' held them).
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. ARGV[i], 'record', 'state', 'sched', 'deadline_at_ms',
    'seen', 'missing_since_ms', 'misses')
end
return out
