-- Delete a hash field only if it still holds the value it was read with.
-- KEYS[1] hash; ARGV[1] field; ARGV[2] the value read. Returns 1 when deleted.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
