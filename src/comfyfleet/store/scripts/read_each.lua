-- Read many job hashes in one call: housekeeping walks every retained record, and one command
-- per record would cost the client far more than the server.
-- KEYS[1..n]  hashes
-- ARGV[1]     a field to read; '' asks only whether each key exists
-- Returns one entry per key, in order: the field's value (nil where absent), or 1/0 for exists.
local out = {}
for i = 1, #KEYS do
  if ARGV[1] == '' then
    out[i] = redis.call('EXISTS', KEYS[i])
  else
    out[i] = redis.call('HGET', KEYS[i], ARGV[1])
  end
end
return out
