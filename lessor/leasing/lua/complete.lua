--[[ Accept an attempt's result: the fenced commit of its output.
  KEYS[1]  partition prefix (string)
  ARGV[1] action ref  ARGV[2] token  ARGV[3] worker id  ARGV[4] result (bytes, may be "")
  Returns: {code, current token}: 0 accepted (or already accepted with this token),
    3 stale (refused, recorded), 4 unknown
  Events: action_succeeded (+ run_completed for a0), or report_rejected ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local ref, token, worker = ARGV[1], ARGV[2], ARGV[3]
-- Idempotent: the same token completing again (a retried call whose reply was lost) is OK.
local done = redis.call('HMGET', akey(ref), 'phase', 'token')
if done[1] == 'succeeded' and done[2] == token then return {0, tonumber(token)} end
local h, code = fence(ref, token, worker, 'complete', 'attempt')
if code ~= 0 then return {code, tonumber(h.token or '0')} end
local ns, run, action = split_ref(ref)
local result = nil
if ARGV[4] ~= '' then result = ARGV[4] end
emit({type = 'action_succeeded', ns = ns, run = run, action = action,
  attempt = tonumber(h.attempt), token = tonumber(token), worker = worker, result = result})
end_lease(ref)
return {0, tonumber(token)}
