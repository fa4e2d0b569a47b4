-- One touch alone (the function is in ``_touch.lua``).
return touch(KEYS, ARGV)
