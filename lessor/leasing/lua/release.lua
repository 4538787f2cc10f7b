--[[ Give a lease back before it expires (graceful shutdown, or confirming an abort).
  The action is requeued at once without spending any retry budget, so it fails
  over now instead of after ttl + grace; an action being aborted becomes aborted.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, SEQ, STREAM, TIMEOUTS, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] action ref  ARGV[2] token  ARGV[3] worker id  ARGV[4] reason
  Returns: {code, current token}: codes as complete.lua (a call repeated with the same token: 0)
  Events: action_requeued (reason "released") or action_aborted; or report_rejected ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local ref, token, worker, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- Validate before any write: a token that is not an integer would write an undecodable event.
if bad_token(token) then
  return redis.error_reply('LESSOR_BAD_ARG release: token must be an integer, got ' .. tostring(token))
end
local err = refuse('release', bad_id('worker', worker), bad_text('reason', reason, 8192))
if err then return err end
checked()
local h, code = fence(ref, token, worker, 'release', 'aborting', 'sys_left', 'user_left', 'queue', 'priority')
if code == REPEATED then return {OK, tonumber(token)} end  -- already released
if code ~= OK then return {code, tonumber(h.token or '0')} end
local ns, run, action = split_ref(ref)
end_lease(ref)
ended(ref, token, 'release')
if h.aborting == '1' then
  emit({type = 'action_aborted', ns = ns, run = run, action = action, reason = 'aborted; worker ' .. worker .. ' cancelled it'})
else
  emit({type = 'action_requeued', ns = ns, run = run, action = action, reason = 'released',
    sys_left = tonumber(h.sys_left), user_left = tonumber(h.user_left), ready_at_ms = 0,
    error = 'released by worker ' .. worker .. ': ' .. reason})
  enqueue(ref, ns, h.queue, h.priority)
end
return {OK, tonumber(token)}
