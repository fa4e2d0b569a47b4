-- Read what one batch poll needs of each claimed id, in one round trip.
-- KEYS: each id's task hash. Returns one pending_row (see _rows.lua) per key.
local out = {}
for i = 1, #KEYS do
  out[#out + 1] = pending_row(KEYS[i])
end
return out
