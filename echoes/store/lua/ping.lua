-- Whether echoes' scripts are on this server: /health calls it on each one, and it answers
-- only if the library (Redis >= 7) or the script cache (6.2) holds this version of them.
-- KEYS     none
-- ARGV     none
-- returns  1
--
-- Safe to run twice: it touches nothing.
return 1
