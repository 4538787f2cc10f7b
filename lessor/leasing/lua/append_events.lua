--[[ Append events, each with its projection update, all or none.
  KEYS[1]  partition prefix (string), e.g. "lessor:{p3}:"; keys derived from it
  Touches: DELAYED, STREAM, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1..n]  events in wire form (msgpack maps, core/codec.py); ts is set here
  Returns: array of stream ids, one per event
  Errors (nothing written): "LESSOR_BAD_EVENT <i> <why>", "LESSOR_ILLEGAL <i> <phase> <type>"
  Events: whatever is given (used by tools and tests; the scheduler uses the
  dedicated scripts, which also maintain queues and lease indexes). ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local events = {}
local seen = {}   -- phases as they will be after the earlier events of this call
local unrooted = {}   -- root key -> the run_created (its index) whose a0 is not created yet
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
  -- A run lives on its root action's hash (root_key): its phase is a0's once a0 has ended,
  -- else running, so the check follows a0's phase as the earlier events leave it. A run
  -- must be created with its a0 in the same call: a run without its root would not exist.
  local run_event = is_run_event(ev)
  local key = run_event and root_key(ev.ns, ev.run) or akey(ev.ns .. '/' .. ev.run .. '/' .. ev.action)
  local cur = seen[key]
  if cur == nil then cur = redis.call('HGET', key, 'phase') or NO_PHASE end
  if run_event then
    cur = cur == NO_PHASE and (unrooted[key] and 'running' or NO_PHASE) or run_phase(cur)
  end
  local table_ = run_event and RUN_T or ACTION_T
  local nxt = table_[cur] and table_[cur][ev.type]
  if nxt == FROM_PAYLOAD then if TERMINAL[ev.phase] then nxt = ev.phase else nxt = nil end end
  -- a0's end completes its run (emit writes the implied run_completed): an explicit one after it
  -- would find the run finished already.
  if nxt == nil then
    return redis.error_reply('LESSOR_ILLEGAL ' .. i .. ' ' .. cur .. ' ' .. ev.type .. ' ' .. key)
  end
  if run_event then
    if nxt == 'running' and cur == NO_PHASE then unrooted[key] = i end
    if nxt == RETIRED then seen[key] = NO_PHASE end   -- its root's hash goes with it
  else
    seen[key] = nxt
    if ev.action == 'a0' and ev.type == 'action_created' then unrooted[key] = nil end
  end
  events[i] = ev
end
local missing
for _, i in pairs(unrooted) do if missing == nil or i < missing then missing = i end end
if missing then
  return redis.error_reply('LESSOR_BAD_EVENT ' .. missing .. ' run_created needs its root action a0\'s '
    .. 'action_created in the same call (a run lives on its root action)')
end
checked()
local ids = {}
for i, ev in ipairs(events) do emit(ev); ids[i] = flush_log() end   -- an entry each, as written
return ids
