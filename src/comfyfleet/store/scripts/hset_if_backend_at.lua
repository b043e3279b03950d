-- Write what was learnt of a server only while the backend that asked is registered at the url
-- it asked: a check or read that was under way when the backend moved (or was removed) answers
-- for the old server, and is not written under the name that now stands for another.
-- KEYS[1] the registry hash; KEYS[2..n] the hashes to write, one field each.
-- ARGV[1] the backend's name; ARGV[2] the url asked; ARGV[2i-1], ARGV[2i] field and value for KEYS[i].
-- Returns 1 when written, 0 when the backend is gone or now at another url.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record) ~= 'table' or record.url ~= ARGV[2] then return 0 end
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
end
return 1
