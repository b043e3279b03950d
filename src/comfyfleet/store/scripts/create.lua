-- create.lua: write a new job record atomically, reserving its idempotency key.
--
-- KEYS[1]  job hash            {p}:job:{id}
-- KEYS[2]  workflow            {p}:job:{id}:wf
-- KEYS[3]  all index           {p}:idx:all
-- KEYS[4]  status index        {p}:idx:status:{status}
-- KEYS[5]  owner index         {p}:idx:owner:{owner}   (unused when ARGV[4] is empty)
-- KEYS[6]  type index          {p}:idx:type:{type}
-- KEYS[7]  active index        {p}:idx:active
-- KEYS[8]  idempotency key     {p}:idem:{owner}:{key}  (unused when ARGV[11] is empty)
-- KEYS[9]  events stream       {p}:events:stream
-- KEYS[10] job counters        {p}:stats:jobs
--
-- ARGV[1]  job id              ARGV[2]  status          ARGV[3]  version
-- ARGV[4]  owner ('' = none)   ARGV[5]  type            ARGV[6]  created_at
-- ARGV[7]  priority            ARGV[8]  data (JSON)     ARGV[9]  workflow (JSON)
-- ARGV[10] active TTL (ms)     ARGV[11] idempotency key ('' = none)
-- ARGV[12] idempotency TTL (ms)
-- ARGV[13] event (JSON)        ARGV[14] events channel  ARGV[15] stream max length
-- ARGV[16] the counter (a field of KEYS[10]) a new job adds 1 to
-- ARGV[17] at most this many queued/running jobs per owner ('0' = no limit)
-- ARGV[18] the counter (a field of KEYS[10]) a refusal for that limit adds 1 to
-- ARGV[19] epoch ms the record, its workflow and its idempotency key last at least until: the
--          job's deadline plus the active TTL ('' = none, the job has no deadline)
--
-- Returns {'ok'}, {'exists'} (another record has this id), {'idempotency_key_reuse', job id}
-- or {'queue_full', active count} (nothing written).
-- A repeat of a create that already landed (same data) returns {'ok'} and publishes nothing.

local existing = redis.call('HGET', KEYS[1], 'data')
if existing then
  if existing == ARGV[8] then return {'ok'} end
  return {'exists'}
end

local limit = tonumber(ARGV[17]) or 0
if limit > 0 and ARGV[4] ~= '' then
  local active = redis.call('ZINTERCARD', 2, KEYS[5], KEYS[7], 'LIMIT', limit)
  if active >= limit then
    redis.call('HINCRBY', KEYS[10], ARGV[18], 1)
    return {'queue_full', tostring(active)}
  end
end

if ARGV[11] ~= '' then
  local taken = redis.call('SET', KEYS[8], ARGV[1], 'NX', 'PX', ARGV[12])
  if not taken then
    local holder = redis.call('GET', KEYS[8]) or ''
    if holder ~= ARGV[1] then return {'idempotency_key_reuse', holder} end
  end
end

redis.call('HSET', KEYS[1], 'status', ARGV[2], 'version', ARGV[3], 'owner', ARGV[4],
           'type', ARGV[5], 'created_at', ARGV[6], 'priority', ARGV[7], 'data', ARGV[8])
redis.call('SET', KEYS[2], ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[10])
redis.call('PEXPIRE', KEYS[2], ARGV[10])
if ARGV[19] ~= '' then
  -- nothing saves a queued job while it waits: it must last until its deadline is handled
  redis.call('PEXPIREAT', KEYS[1], ARGV[19], 'GT')
  redis.call('PEXPIREAT', KEYS[2], ARGV[19], 'GT')
  if ARGV[11] ~= '' then redis.call('PEXPIREAT', KEYS[8], ARGV[19], 'GT') end
end

local score = ARGV[6]
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('ZADD', KEYS[4], score, ARGV[1])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[5], score, ARGV[1]) end
redis.call('ZADD', KEYS[6], score, ARGV[1])
redis.call('ZADD', KEYS[7], score, ARGV[1])
redis.call('HINCRBY', KEYS[10], ARGV[16], 1)

redis.call('PUBLISH', ARGV[14], ARGV[13])
redis.call('XADD', KEYS[9], 'MAXLEN', '~', ARGV[15], '*', 'event', ARGV[13])
return {'ok'}
