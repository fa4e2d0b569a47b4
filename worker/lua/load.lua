-- Read what one batch poll needs of each claimed id, in one round trip.
-- ARGV: 1 task key prefix, 2.. ids. Returns one pending_row (see _rows.lua) per id.
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = pending_row(ARGV[1] .. ARGV[i])
end
return out
