-- Give a slot back and tell waiting workers at once.
-- KEYS[1] the backend's lease set   KEYS[2] the slots channel
-- ARGV[1] holder   ARGV[2] backend name
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
return removed
