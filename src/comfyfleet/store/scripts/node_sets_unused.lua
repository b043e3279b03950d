-- Delete the node class sets no backend's catalog names (atomic: a catalog written with its
-- set in one transaction is never seen half-way).
-- KEYS[1] backend -> catalog JSON ({"digest": ...}); KEYS[2] digest -> names. Returns the count.
local used = {}
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, catalog = pcall(cjson.decode, raw)
  if ok and type(catalog) == 'table' and catalog.digest then used[catalog.digest] = true end
end
local deleted = 0
for _, digest in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not used[digest] then
    deleted = deleted + redis.call('HDEL', KEYS[2], digest)
  end
end
return deleted
