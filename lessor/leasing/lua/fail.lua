--[[ Record a failed attempt (the task's own error). Spends the user retry budget.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, SEQ, STREAM, TIMEOUTS, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] action ref  ARGV[2] token  ARGV[3] worker id  ARGV[4] error text
  ARGV[5] retryable (1/0)  ARGV[6] jitter in [0, 1) (drawn by the caller, so simulations are seeded)
  ARGV[7] the task's traceback, its tail (optional; '' or absent = none; at most 8192 bytes)
  Returns: {code, current token, ready_at_ms (0 = failed for good, or a repeated call)}: codes as
  complete.lua; a call repeated with the same token is answered 0 (already recorded)
  Events: action_requeued (backoff: ready at now + backoff_ms * 2^(attempt-1) * (0.5 + jitter),
  capped at 10 min) while user retries remain, else action_failed; action_aborted if an
  abort was requested; or report_rejected ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local ref, token, worker, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- Validate before any write: a token that is not an integer would write an undecodable event.
if bad_token(token) then
  return redis.error_reply('LESSOR_BAD_ARG fail: token must be an integer, got ' .. tostring(token))
end
local bad_jitter = not tonumber(ARGV[6]) or tonumber(ARGV[6]) < 0 or tonumber(ARGV[6]) >= 1
local refused = refuse('fail', bad_id('worker', worker), bad_text('error', err, 8192),
  ARGV[7] and bad_text('traceback', ARGV[7], 8192), bad_int('retryable', ARGV[5], 0, 1),
  bad_jitter and ('jitter must be a number in [0, 1), got ' .. tostring(ARGV[6])))
if refused then return refused end
local retryable, jitter = ARGV[5] == '1', tonumber(ARGV[6])
local tb = ARGV[7]
if tb == '' then tb = nil end
checked()
local h, code = fence(ref, token, worker, 'fail', 'attempt', 'user_left', 'sys_left', 'backoff_ms', 'queue',
  'priority', 'aborting', 'timeout_ms')
if code == REPEATED then return {OK, tonumber(token), 0} end  -- already recorded
if code ~= OK then return {code, tonumber(h.token or '0'), 0} end
local ns, run, action = split_ref(ref)
local attempt, user_left = tonumber(h.attempt), tonumber(h.user_left)
end_lease(ref, h.timeout_ms)
ended(ref, token, 'fail')
if h.aborting == '1' then
  -- An abort was asked for: nothing is retried after it (found by the simulator).
  emit({type = 'action_aborted', ns = ns, run = run, action = action,
    reason = 'aborted; the attempt failed meanwhile: ' .. err}, 'running')
  return {OK, tonumber(token), 0}
end
if retryable and user_left > 0 then
  local delay = math.min(tonumber(h.backoff_ms) * 2 ^ (attempt - 1), 600000) * (0.5 + jitter)
  local ready_at = NOW + math.floor(delay)
  emit({type = 'action_requeued', ns = ns, run = run, action = action, reason = 'user_error',
    ready_at_ms = ready_at, sys_left = tonumber(h.sys_left), user_left = user_left - 1, error = err, traceback = tb})
  if ready_at > NOW then redis.call('ZADD', DELAYED, ready_at, ref)
  else enqueue(ref, ns, h.queue, h.priority) end
  return {OK, tonumber(token), ready_at}
end
emit({type = 'action_failed', ns = ns, run = run, action = action, reason = 'user_error',
  error = err, traceback = tb, attempt = attempt, token = tonumber(token), worker = worker})
return {OK, tonumber(token), 0}
