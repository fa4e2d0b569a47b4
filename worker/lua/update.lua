-- One update alone (the function is in ``_update.lua``).
return update(KEYS, ARGV)
