--[[ Append events, each with its projection update, all or none.
  KEYS[1]  partition prefix (string), e.g. "lessor:{p3}:"; keys derived from it
  Touches: DELAYED, STREAM, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1..n]  events in wire form (msgpack maps, core/codec.py); ts is set here
  Returns: array of stream ids, one per event
  Errors (nothing written): "LESSOR_BAD_EVENT <i> <why>", "LESSOR_ILLEGAL <i> <phase> <type>"
  A run lives on its root action's hash: run_created must come right before its a0's
  action_created, and a run completes by its a0's end only (no run_completed of its own).
  Events: whatever is given (used by tools and tests; the scheduler uses the
  dedicated scripts, which also maintain queues and lease indexes). ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local events = {}
local seen = {}   -- phases as they will be after the earlier events of this call
local rooting   -- the root key of the run the previous event created (its a0 must come next)
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
  -- else running, so the check follows a0's phase as the earlier events leave it. A run and
  -- its a0 are created together, run_created right before a0's action_created (a run without
  -- its root, or a root without its run, would be a run no reader sees as the log has it), and
  -- a run completes only by its a0's end (emit writes that run_completed itself).
  local run_event = is_run_event(ev)
  local key = run_event and root_key(ev.ns, ev.run) or akey(ev.ns .. '/' .. ev.run .. '/' .. ev.action)
  local creates_root = ev.type == 'action_created' and ev.action == 'a0'
  if rooting and not (creates_root and key == rooting) then
    return redis.error_reply('LESSOR_BAD_EVENT ' .. (i - 1) .. " run_created must be followed by its root "
      .. "action a0's action_created (a run lives on its root action)")
  end
  if creates_root and key ~= rooting then
    return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. " a0's action_created must follow its run's run_created")
  end
  if ev.type == 'run_completed' then
    return redis.error_reply('LESSOR_BAD_EVENT ' .. i .. " run_completed is written by its root action's end "
      .. '(a0 terminal), never on its own')
  end
  local cur = seen[key]
  if cur == nil then cur = redis.call('HGET', key, 'phase') or NO_PHASE end
  if run_event then cur = run_phase(cur ~= NO_PHASE and cur or nil) end
  local table_ = run_event and RUN_T or ACTION_T
  local nxt = table_[cur] and table_[cur][ev.type]
  if nxt == nil then
    return redis.error_reply('LESSOR_ILLEGAL ' .. i .. ' ' .. cur .. ' ' .. ev.type .. ' ' .. key)
  end
  rooting = nil
  if run_event then
    if ev.type == 'run_created' then rooting = key end
    if nxt == RETIRED then seen[key] = NO_PHASE end   -- its root's hash goes with it
  else
    seen[key] = nxt
  end
  events[i] = ev
end
if rooting then
  return redis.error_reply('LESSOR_BAD_EVENT ' .. #ARGV .. " run_created must be followed by its root "
    .. "action a0's action_created (a run lives on its root action)")
end
checked()
local ids = {}
for i, ev in ipairs(events) do emit(ev); ids[i] = flush_log() end   -- an entry each, as written
return ids
