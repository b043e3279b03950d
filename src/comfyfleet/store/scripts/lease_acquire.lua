-- Take one capacity slot for a holder on the least-loaded candidate backend, atomically.
-- KEYS[1]      the backend registry hash (name -> record JSON with "state" and "capacity")
-- KEYS[2..n]   the lease sorted set of each candidate (member holder, score expiry ms)
-- ARGV[1] now (ms)  ARGV[2] expiry of the new lease (ms)  ARGV[3] holder
-- ARGV[4 + 3i ..] per candidate i: name, slot limit (a half-open breaker passes 1), tier
-- Candidates come ordered by tier (preference) and, inside a tier, in round-robin order. The
-- first tier with any free slot wins; inside it the lowest load / capacity wins, ties to the
-- earlier candidate. Expired leases (a dead worker's) are dropped on the way. A holder that
-- still holds a slot on a candidate (a runner that died left it) keeps that one.
-- Returns the chosen name, or false when no candidate has a free slot.
local now = tonumber(ARGV[1])
local best, best_key, best_tier, best_ratio = nil, nil, nil, nil
for i = 2, #KEYS do
  local base = 4 + (i - 2) * 3
  local name = ARGV[base]
  local limit = tonumber(ARGV[base + 1])
  local tier = tonumber(ARGV[base + 2])
  if best ~= nil and tier > best_tier then
    break
  end
  local raw = redis.call('HGET', KEYS[1], name)
  if raw then
    local record = cjson.decode(raw)
    if record['state'] == 'active' then
      local capacity = math.min(limit, tonumber(record['capacity']) or 1)
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
      if redis.call('ZSCORE', KEYS[i], ARGV[3]) then
        redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3])
        return name
      end
      local load = redis.call('ZCARD', KEYS[i])
      if load < capacity then
        local ratio = load / capacity
        if best == nil or ratio < best_ratio then
          best, best_key, best_tier, best_ratio = name, KEYS[i], tier, ratio
          if ratio == 0 then
            break  -- an idle backend: nothing later can be less loaded
          end
        end
      end
    end
  end
end
if best == nil then
  return false
end
redis.call('ZADD', best_key, ARGV[2], ARGV[3])
return best
