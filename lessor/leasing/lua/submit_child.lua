--[[ Submit a child action from inside a running action (tasks calling tasks).
  Fenced by the parent's token: a parent that lost its lease cannot spawn work.
  Idempotent by child id: a retried parent attempt that submits the same child
  (same id, derived from its call order) gets the existing child back, with its
  result if it has finished, instead of running it twice.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, SEQ, STREAM, TIMEOUTS, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] parent ref  ARGV[2] parent token  ARGV[3] worker id  ARGV[4] child action id
  ARGV[5] task  ARGV[6] inputs (bytes)  ARGV[7] queue  ARGV[8] system retries
  ARGV[9] user retries  ARGV[10] backoff_ms  ARGV[11] priority  ARGV[12] timeout_ms (0 = none; capped
  at what the parent's attempt has left of its own timeout)
  ARGV[13] cache key (or "")  ARGV[14] cached result (present only on a cache hit)
  Returns: {code, x}: code 0 ok (x = created 1/0), 2 the parent is being aborted (nothing created),
    3 parent token stale (refused, recorded; x = current token), 4 unknown parent
  Events: action_created (+ cache_hit), or report_rejected ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local parent_ref, token, worker, child = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- Validate before any write: a token that is not an integer would write an undecodable event.
if bad_token(token) then
  return redis.error_reply('LESSOR_BAD_ARG submit_child: token must be an integer, got ' .. tostring(token))
end
local ns, run, parent = split_ref(parent_ref)
local err = refuse('submit_child', (not ns) and ('parent ref must be project/domain/run/action, got ' .. tostring(parent_ref)),
  bad_id('worker', worker), bad_id('child action', child), bad_id('task', ARGV[5]), bad_bytes('inputs', ARGV[6], 65536),
  bad_id('queue', ARGV[7]), bad_int('system retries', ARGV[8], 0, 1000), bad_int('user retries', ARGV[9], 0, 1000),
  bad_int('backoff_ms', ARGV[10], 0, 86400000), bad_int('priority', ARGV[11], -1000, 1000),
  bad_int('timeout_ms', ARGV[12], 0, 31622400000), bad_text('cache key', ARGV[13] or '', 256),
  ARGV[14] and bad_bytes('cached result', ARGV[14], 65536))
if err then return err end
checked()
local ref = ns .. '/' .. run .. '/' .. child
local h, code = fence(parent_ref, token, worker, 'submit', 'aborting')
if code ~= OK then return {code, tonumber(h.token)} end
-- A parent being aborted spawns nothing: the abort could not reach a child made after it.
if h.aborting == '1' then return {ABORTED, 0} end
-- Already submitted by this or an earlier attempt of the parent: nothing to do.
if redis.call('EXISTS', akey(ref)) == 1 then
  redis.call('HINCRBY', akey(ref), '_repeats', 1)  -- a repeat writes: a durability wait covers the first try
  return {OK, 0}
end
local function opt(v) if v == '' then return nil end return v end
-- A child never outlives its parent's deadline: its own timeout is capped at the time the
-- parent's attempt has left (and when the parent ends, its live children are aborted).
local timeout_ms = tonumber(ARGV[12])
local parent_deadline = tonumber(redis.call('ZSCORE', TIMEOUTS, parent_ref) or '0')
if parent_deadline > 0 then
  local left = math.max(1, parent_deadline - NOW)
  if timeout_ms == 0 or timeout_ms > left then timeout_ms = left end
end
emit({type = 'action_created', ns = ns, run = run, action = child, task = ARGV[5], queue = ARGV[7],
  inputs = opt(ARGV[6]), parent = parent, parent_token = tonumber(token),
  sys_retries = tonumber(ARGV[8]), user_retries = tonumber(ARGV[9]), backoff_ms = tonumber(ARGV[10]),
  priority = tonumber(ARGV[11]), timeout_ms = timeout_ms, cache_key = opt(ARGV[13])})
redis.call('SADD', run_actions_key(ns .. '/' .. run), child)
redis.call('SADD', children_key(parent_ref), child)   -- so a parent that ends can abort it
if ARGV[14] ~= nil then
  emit({type = 'cache_hit', ns = ns, run = run, action = child, cache_key = ARGV[13], result = ARGV[14]})
else
  enqueue(ref, ns, ARGV[7], ARGV[11])
end
return {OK, 1}
