-- One finish alone (the function is in ``_finish.lua``).
return finish(KEYS, ARGV)
