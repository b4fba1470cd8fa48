-- deriver: apply one chunk of a pipeline batch to Redis views, atomically with its checkpoint.
-- On a Redis Cluster every key named here (declared or passed in ARGV) carries the pipeline's
-- hash tag ({<pipeline>}, e.g. <prefix>:_meta:{<pipeline>}:applied_lsn): all are in one slot.
-- KEYS[1] checkpoint key (<prefix>:_meta:<pipeline>:applied_lsn)
-- KEYS[2] ledger hash (<prefix>:_ledger:<pipeline>): source key -> JSON list of view keys it wrote
-- KEYS[3] definition hash key (<prefix>:_meta:<pipeline>:definition_hash)
-- ARGV[1], ARGV[2]: batch LSN high and low 32 bits (decimal); ARGV[3]: batch LSN text
-- ARGV[4]: '1' to store the checkpoint (last chunk); ARGV[5]: '1' to remove every view first
-- ARGV[6]: '1' to return deleted view keys; ARGV[7]: definition hash
-- ARGV[8]: '1' to apply even when the checkpoint covers the batch (repair, rewrite); the
--          checkpoint then only moves forward.
-- KEYS[4] owner epoch key (<prefix>:_meta:<pipeline>:owner_epoch); KEYS[5] count of refused
--         (fenced) batches. ARGV[9]: the epoch this process claimed, or '' (no fencing).
--         A batch whose epoch is not the stored one comes from a process that lost ownership:
--         it is refused whole (error FENCED) and counted.
-- ARGV[10..]: ops. Per source key: key, n views, then per view: view key, type, m, m values.
--            n = 0 means the record is gone. json: m=1 (the JSON text); hash: field/value pairs;
--            set: m=1 (member); zset: m=2 (member, score).
-- Ledger entries: a view key (json, hash) or {key, member, 's'|'z'} (a set/zset contribution).
-- Returns {1, deleted...} when applied, {0} when the stored checkpoint already covers the batch.
if ARGV[9] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[9] then
  redis.call('INCR', KEYS[5])
  return redis.error_reply('FENCED another deriver process owns this pipeline now (owner epoch moved past ' .. ARGV[9] .. ')')
end
local cp = redis.call('GET', KEYS[1])
local covered = false
if cp then
  local h, l = string.match(cp, '^(%x+)/(%x+)$')
  if h then
    h = tonumber(h, 16); l = tonumber(l, 16)
    local bh, bl = tonumber(ARGV[1]), tonumber(ARGV[2])
    covered = h > bh or (h == bh and l >= bl)
  end
end
local force = ARGV[8] == '1'
if covered and not force then return {0} end
local want_deleted = ARGV[6] == '1'
local deleted = {}
local function entry_id(e)
  if type(e) == 'table' then return e[1] .. '\0' .. e[2] end
  return e
end
local function remove(e)
  if type(e) == 'table' then
    if e[3] == 'z' then redis.call('ZREM', e[1], e[2]) else redis.call('SREM', e[1], e[2]) end
    if want_deleted then deleted[#deleted + 1] = e[1] end
  else
    redis.call('DEL', e)
    if want_deleted then deleted[#deleted + 1] = e end
  end
end
if ARGV[5] == '1' then
  local cursor = '0'
  repeat
    local res = redis.call('HSCAN', KEYS[2], cursor, 'COUNT', 1000)
    cursor = res[1]
    local items = res[2]
    for i = 1, #items, 2 do
      for _, e in ipairs(cjson.decode(items[i + 1])) do remove(e) end
    end
  until cursor == '0'
  redis.call('DEL', KEYS[2])
end
local i = 10
local n_args = #ARGV
while i <= n_args do
  local src = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  local new = {}
  local list = {}
  for _ = 1, n do
    local key, typ, m = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 3
    local e = key
    if typ == 'json' then
      redis.call('SET', key, ARGV[i])
    elseif typ == 'hash' then
      redis.call('DEL', key)
      if m > 0 then redis.call('HSET', key, unpack(ARGV, i, i + m - 1)) end
    elseif typ == 'set' then
      redis.call('SADD', key, ARGV[i])
      e = {key, ARGV[i], 's'}
    elseif typ == 'zset' then
      redis.call('ZADD', key, ARGV[i + 1], ARGV[i])
      e = {key, ARGV[i], 'z'}
    end
    local id = entry_id(e)
    if not new[id] then
      new[id] = true
      list[#list + 1] = e
    end
    i = i + m
  end
  local old = redis.call('HGET', KEYS[2], src)
  local enc = #list > 0 and cjson.encode(list) or nil
  -- The same views as before (the common case): nothing to remove, the entry stays as it is.
  if not (old and old == enc) then
    if old then
      for _, e in ipairs(cjson.decode(old)) do
        if not new[entry_id(e)] then remove(e) end
      end
    end
    if enc then
      redis.call('HSET', KEYS[2], src, enc)
    elseif old then
      redis.call('HDEL', KEYS[2], src)
    end
  end
end
if ARGV[4] == '1' and not covered then
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('SET', KEYS[3], ARGV[7])
end
local out = {1}
for _, k in ipairs(deleted) do out[#out + 1] = k end
return out
