-- save.lua: compare-and-set one job record, move it between indexes, refresh TTL, publish.
--
-- Mirrors domain/transitions.py: the stored status and version must equal what the caller read,
-- the version goes up by exactly one, terminal statuses absorb, and only the status moves the
-- transition table allows are accepted.
--
-- KEYS[1]  job hash            {p}:job:{id}
-- KEYS[2]  workflow            {p}:job:{id}:wf
-- KEYS[3]  old status index    {p}:idx:status:{expected status}
-- KEYS[4]  new status index    {p}:idx:status:{new status}
-- KEYS[5]  active index        {p}:idx:active
-- KEYS[6]  events stream       {p}:events:stream
-- KEYS[7]  job counters        {p}:stats:jobs
--
-- ARGV[1]  job id              ARGV[2]  expected status ARGV[3]  expected version
-- ARGV[4]  new status          ARGV[5]  new version     ARGV[6]  owner ('' = none)
-- ARGV[7]  type                ARGV[8]  created_at      ARGV[9]  priority
-- ARGV[10] data (JSON)         ARGV[11] '1' if the new status is terminal, else '0'
-- ARGV[12] TTL (ms)            ARGV[13] event (JSON)    ARGV[14] events channel
-- ARGV[15] stream max length   ARGV[16] cancel channel: told the job id when it turns canceling
-- ARGV[17] counters this change adds to (JSON object: field of KEYS[7] -> integer)
-- ARGV[18] epoch ms a record that is not finished lasts at least until: its deadline plus the
--          active TTL ('' = none: finished, or no deadline)
--
-- Returns {'ok'}, {'missing'}, {'conflict', stored status, stored version},
-- {'bad_version'} or {'forbidden'} (a status move the table refuses).
-- A repeat of a save that already landed (same data, version one up) returns {'ok'} quietly.

local MOVES = {
  queued    = {queued = true, running = true, canceled = true, failed = true, expired = true},
  running   = {running = true, queued = true, canceling = true, succeeded = true,
               failed = true, canceled = true, expired = true},
  canceling = {canceling = true, succeeded = true, failed = true, canceled = true,
               expired = true},
}

local stored = redis.call('HMGET', KEYS[1], 'status', 'version', 'data')
local status, version = stored[1], stored[2]
if not status then return {'missing'} end

if status ~= ARGV[2] or version ~= ARGV[3] then
  if version == ARGV[5] and stored[3] == ARGV[10] then return {'ok'} end
  return {'conflict', status, version}
end
if tonumber(ARGV[5]) ~= tonumber(ARGV[3]) + 1 then return {'bad_version'} end
local allowed = MOVES[status]
if not allowed or not allowed[ARGV[4]] then return {'forbidden'} end

redis.call('HSET', KEYS[1], 'status', ARGV[4], 'version', ARGV[5], 'owner', ARGV[6],
           'type', ARGV[7], 'created_at', ARGV[8], 'priority', ARGV[9], 'data', ARGV[10])

if ARGV[2] ~= ARGV[4] then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[1])
end
if ARGV[11] == '1' then
  redis.call('ZREM', KEYS[5], ARGV[1])
else
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[1])
end

redis.call('PEXPIRE', KEYS[1], ARGV[12])
redis.call('PEXPIRE', KEYS[2], ARGV[12])
if ARGV[18] ~= '' then  -- GT: only ever later than the sliding TTL just set, never sooner
  redis.call('PEXPIREAT', KEYS[1], ARGV[18], 'GT')
  redis.call('PEXPIREAT', KEYS[2], ARGV[18], 'GT')
end
if ARGV[17] ~= '{}' then
  for field, amount in pairs(cjson.decode(ARGV[17])) do
    redis.call('HINCRBY', KEYS[7], field, amount)
  end
end

redis.call('PUBLISH', ARGV[14], ARGV[13])
if ARGV[4] == 'canceling' and ARGV[2] ~= 'canceling' then
  redis.call('PUBLISH', ARGV[16], cjson.encode({job_id = ARGV[1], kind = 'cancel'}))
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[15], '*', 'event', ARGV[13])
return {'ok'}
