--[[ Append events, each with its projection update, all or none.
  KEYS[1]  partition prefix (string), e.g. "lessor:{p3}:"; keys derived from it
  Touches: DELAYED, STREAM, akey, children_key, done_key, fair_key, qkey, rkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1..n]  events in wire form (msgpack maps, core/codec.py); ts is set here
  Returns: array of stream ids, one per event
  Errors (nothing written): "LESSOR_BAD_EVENT <i> <why>", "LESSOR_ILLEGAL <i> <phase> <type>"
  Events: whatever is given (used by tools and tests; the scheduler uses the
  dedicated scripts, which also maintain queues and lease indexes). ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local events = {}
local seen = {}   -- phases as they will be after the earlier events of this call
for i = 1, #ARGV do
  local ok, ev = pcall(cmsgpack.unpack, ARGV[i])
  if not ok or type(ev) ~= 'table' then
    return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. ' not a msgpack map')
  end
  if ev.v ~= 1 then return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. ' unknown schema version ' .. tostring(ev.v)) end
  if type(ev.type) ~= 'string' or EVF[ev.type] == nil then
    return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. ' unknown event type ' .. tostring(ev.type))
  end
  if type(ev.ns) ~= 'string' or type(ev.run) ~= 'string' then
    return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. ' missing ns/run')
  end
  if not is_run_event(ev) and type(ev.action) ~= 'string' then
    return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. ' missing action')
  end
  local bad = bad_event(ev)   -- every field against its definition, before anything is written
  if bad then return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. ' ' .. bad) end
  local key, table_
  if is_run_event(ev) then key, table_ = rkey(ev.ns .. '/' .. ev.run), RUN_T
  else key, table_ = akey(ev.ns .. '/' .. ev.run .. '/' .. ev.action), ACTION_T end
  local cur = seen[key]
  if cur == nil then cur = redis.call('HGET', key, 'phase') or NO_PHASE end
  local nxt = table_[cur] and table_[cur][ev.type]
  if nxt == FROM_PAYLOAD then if TERMINAL[ev.phase] then nxt = ev.phase else nxt = nil end end
  if nxt == nil then
    return redis.error_reply('LESSOR_ILLEGAL ' .. i .. ' ' .. cur .. ' ' .. ev.type .. ' ' .. key)
  end
  seen[key] = nxt
  events[i] = ev
end
checked()
local ids = {}
for i, ev in ipairs(events) do emit(ev); ids[i] = flush_log() end   -- an entry each, as written
return ids
