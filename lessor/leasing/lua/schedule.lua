--[[ Create, pause, resume or delete a schedule (lessor/scheduler/schedules.py).
  KEYS[1]  partition prefix (string): the partition of (namespace, schedule name)
  Touches: DELAYED, SCHEDULES, STREAM, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] verb, ARGV[2] namespace, ARGV[3] schedule name, then per verb:
    create: ARGV[4] task  ARGV[5] queue  ARGV[6] cron  ARGV[7] timezone  ARGV[8] catchup (all|latest|none)
            ARGV[9] start_ms  ARGV[10] inputs (bytes, may be "")  ARGV[11] misfire_grace_ms  ARGV[12] first due ms
            ARGV[13] jitter_ms  ARGV[14] retries (user retries of each run); both "0" if left out
    pause:  ARGV[4] reason
    resume: ARGV[4] from_ms (ticks after it fire again)  ARGV[5] next due ms
    delete: nothing more
  Returns: {code}: create: CREATED, EXISTED (the same definition again) or CONFLICT (another one
    under this name); the others: OK, or UNKNOWN (no such schedule), or STALE (pause of a paused
    one, resume of an active one: nothing to do)
  Events: schedule_created | schedule_paused | schedule_resumed | schedule_deleted
  The schedule is indexed in SCHEDULES by its next due tick (the ticker's work list). ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local verb, ns, name = ARGV[1], ARGV[2], ARGV[3]
local err = refuse('schedule', bad_ns(ns), bad_id('schedule name', name),
  (verb ~= 'create' and verb ~= 'pause' and verb ~= 'resume' and verb ~= 'delete')
    and ('verb must be create, pause, resume or delete, got ' .. tostring(verb)))
if err then return err end
if verb == 'create' then
  err = refuse('schedule', bad_id('task', ARGV[4]), bad_id('queue', ARGV[5]), bad_text('cron', ARGV[6], 256),
    bad_text('timezone', ARGV[7], 64),
    (ARGV[8] ~= 'all' and ARGV[8] ~= 'latest' and ARGV[8] ~= 'none') and 'catchup must be all, latest or none',
    bad_int('start_ms', ARGV[9], 0, SAFE_INT), bad_bytes('inputs', ARGV[10], 65536),
    bad_int('misfire_grace_ms', ARGV[11], 0, 86400000), bad_int('first due ms', ARGV[12], 0, SAFE_INT),
    bad_int('jitter_ms', ARGV[13] or '0', 0, 3600000), bad_int('retries', ARGV[14] or '0', 0, 100))
elseif verb == 'pause' then
  err = refuse('schedule', bad_text('reason', ARGV[4], 4096))
elseif verb == 'resume' then
  err = refuse('schedule', bad_int('from_ms', ARGV[4], 0, SAFE_INT), bad_int('next due ms', ARGV[5], 0, SAFE_INT))
end
if err then return err end
checked()

local ref = ns .. '/' .. name
local h = hget(skey(ref), 'phase', 'task', 'queue', 'cron', 'timezone', 'catchup', 'inputs', 'jitter_ms', 'retries')
if verb == 'create' then
  if h.phase then
    local same = h.task == ARGV[4] and h.queue == ARGV[5] and h.cron == ARGV[6] and h.timezone == ARGV[7]
      and h.catchup == ARGV[8] and h.inputs == ARGV[10] and h.jitter_ms == (ARGV[13] or '0') and h.retries == (ARGV[14] or '0')
    if same then redis.call('HINCRBY', skey(ref), '_repeats', 1) return {EXISTED} end
    return {CONFLICT}
  end
  local inputs = ARGV[10]
  if inputs == '' then inputs = nil end
  emit({type = 'schedule_created', ns = ns, schedule = name, task = ARGV[4], queue = ARGV[5], cron = ARGV[6],
    timezone = ARGV[7], catchup = ARGV[8], start_ms = tonumber(ARGV[9]), inputs = inputs,
    misfire_grace_ms = tonumber(ARGV[11]), jitter_ms = tonumber(ARGV[13] or '0'), retries = tonumber(ARGV[14] or '0')}, NO_PHASE)
  redis.call('ZADD', SCHEDULES, tonumber(ARGV[12]), ref)
  return {CREATED}
end
if not h.phase then return {UNKNOWN} end
if verb == 'pause' then
  if h.phase ~= 'active' then return {STALE} end
  emit({type = 'schedule_paused', ns = ns, schedule = name, reason = ARGV[4]}, h.phase)
  redis.call('ZREM', SCHEDULES, ref)
elseif verb == 'resume' then
  if h.phase ~= 'paused' then return {STALE} end
  emit({type = 'schedule_resumed', ns = ns, schedule = name, from_ms = tonumber(ARGV[4])}, h.phase)
  redis.call('ZADD', SCHEDULES, tonumber(ARGV[5]), ref)
else
  emit({type = 'schedule_deleted', ns = ns, schedule = name}, h.phase)
  redis.call('ZREM', SCHEDULES, ref)
end
return {OK}
