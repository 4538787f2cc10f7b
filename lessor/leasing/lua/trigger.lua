--[[ Create, fire or delete an event trigger (lessor/scheduler/triggers.py).
  KEYS[1]  partition prefix (string): the partition of (namespace, trigger name)
  Touches: DELAYED, SEQ, STREAM, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, runs_key, setkey, share_key, skey, tkey, trigger_runs, trigger_until, wake_key
  ARGV[1] verb, ARGV[2] namespace, ARGV[3] trigger name, then per verb:
    create: ARGV[4] task  ARGV[5] queue  ARGV[6] window_ms
    fire:   ARGV[4] dedup key  ARGV[5] window index the caller derived the run id from
            ARGV[6] run id (derived from trigger, dedup key and window index)  ARGV[7] inputs (bytes, may be "")
    delete: nothing more
  Returns: create: {CREATED}, {EXISTED} (the same definition again) or {CONFLICT} (another one
    under this name). fire: {CREATED, run} (a new run), {EXISTED, run} (deduplicated: the run this
    key started within its window), {UNKNOWN, ''} (no such trigger), or {STALE, index}: the
    server's clock is in another window than the caller derived the run id for (derive it for
    that index and call again; nothing was written). delete: {OK} or {UNKNOWN}.
  Events: trigger_created | trigger_fired + run_created + action_created | trigger_deleted
  At most once: the first fire of a dedup key starts a run and records the key until
  now + window_ms; a fire of that key before then is answered with that run. The run id is a
  function of (trigger, key, window index) on the server clock, so a retried fire whose record
  is gone still finds its run. ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local verb, ns, name = ARGV[1], ARGV[2], ARGV[3]
local err = refuse('trigger', bad_ns(ns), bad_id('trigger name', name),
  (verb ~= 'create' and verb ~= 'fire' and verb ~= 'delete') and ('verb must be create, fire or delete, got ' .. tostring(verb)))
if err then return err end
if verb == 'create' then
  err = refuse('trigger', bad_id('task', ARGV[4]), bad_id('queue', ARGV[5]), bad_int('window_ms', ARGV[6], 1, 31622400000))
elseif verb == 'fire' then
  err = refuse('trigger', bad_text('dedup key', ARGV[4], 256), bad_int('window index', ARGV[5], 0, SAFE_INT),
    bad_id('run id', ARGV[6]), bad_bytes('inputs', ARGV[7], 65536))
end
if err then return err end
checked()

local ref = ns .. '/' .. name
local h = hget(tkey(ref), 'phase', 'task', 'queue', 'window_ms')
if verb == 'create' then
  if h.phase then
    if h.task == ARGV[4] and h.queue == ARGV[5] and h.window_ms == ARGV[6] then return {EXISTED} end
    return {CONFLICT}
  end
  emit({type = 'trigger_created', ns = ns, trigger = name, task = ARGV[4], queue = ARGV[5],
    window_ms = tonumber(ARGV[6])}, NO_PHASE)
  return {CREATED}
end
if not h.phase then
  if verb == 'fire' then return {UNKNOWN, ''} end
  return {UNKNOWN}
end
if verb == 'delete' then
  emit({type = 'trigger_deleted', ns = ns, trigger = name}, h.phase)
  redis.call('DEL', trigger_runs(ref), trigger_until(ref))
  return {OK}
end

-- fire
local key, window = ARGV[4], tonumber(h.window_ms)
local until_key, runs_key_ = trigger_until(ref), trigger_runs(ref)
local till = redis.call('ZSCORE', until_key, key)
if till and tonumber(till) > NOW then
  return {EXISTED, redis.call('HGET', runs_key_, key)}
end
local index = math.floor(NOW / window)
if index ~= tonumber(ARGV[5]) then return {STALE, S(index)} end
-- Forget the keys whose window ended (a bounded number per fire), so the index stays small.
local ended = redis.call('ZRANGEBYSCORE', until_key, '-inf', NOW, 'LIMIT', 0, 100)
if #ended > 0 then
  redis.call('ZREM', until_key, unpack(ended))
  redis.call('HDEL', runs_key_, unpack(ended))
end
local run = ARGV[6]
if redis.call('EXISTS', root_key(ns, run)) == 1 then return {EXISTED, run} end
local inputs = ARGV[7]
if inputs == '' then inputs = nil end
create_run(ns, run, h.task, h.queue, inputs, nil, 3, 0, 1000, 0, 0, nil)
enqueue(ns .. '/' .. run .. '/a0', ns, h.queue, 0)
emit({type = 'trigger_fired', ns = ns, trigger = name, run = run, dedup_key = key, until_ms = NOW + window}, h.phase)
redis.call('HSET', runs_key_, key, run)
redis.call('ZADD', until_key, NOW + window, key)
return {CREATED, run}
