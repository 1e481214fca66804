-- Count one request of a sender against its quotas: quotas.lua's count_request, whose
-- ``key`` is KEYS[1] and whose A[1...] are ARGV[1...].
return count_request(KEYS[1], ARGV, 0, now_ms())
