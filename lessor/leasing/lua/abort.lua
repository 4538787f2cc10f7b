--[[ Abort a run: every non-terminal action of it. Queued ones become aborted now;
  running ones are marked, their workers learn it from the next renewal
  (code ABORTED), cancel, and confirm with release (or the lease expires).
  Nothing is requeued after an abort.
  KEYS[1]  partition prefix (string)
  ARGV[1] ns  ARGV[2] run id  ARGV[3] reason
  Returns: {aborted now, abort requested} or error LESSOR_UNKNOWN_RUN
  Events: abort_requested (run, and each running action), action_aborted (queued actions) ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local ns, run, reason = ARGV[1], ARGV[2], ARGV[3]
local err = refuse('abort', bad_ns(ns), bad_id('run', run), bad_text('reason', reason, 4096))
if err then return err end
local run_ref = ns .. '/' .. run
local phase = redis.call('HGET', rkey(run_ref), 'phase')
if not phase then return redis.error_reply('LESSOR_UNKNOWN_RUN ' .. run_ref) end
if TERMINAL[phase] then return {0, 0} end
if redis.call('HGET', rkey(run_ref), 'aborting') ~= '1' then
  emit({type = 'abort_requested', ns = ns, run = run, action = '', reason = reason})
end
local now_aborted, requested = 0, 0
-- The run's action set holds its children; the root a0 is implied.
local actions = redis.call('SMEMBERS', PREFIX .. 'ra:' .. run_ref)
table.insert(actions, 1, 'a0')
for _, action in ipairs(actions) do
  local ref = run_ref .. '/' .. action
  local h = hget(akey(ref), 'phase', 'aborting', 'queue')
  if h.phase == 'queued' then
    redis.call('ZREM', qkey(ns, h.queue), ref)
    redis.call('ZREM', DELAYED, ref)
    emit({type = 'action_aborted', ns = ns, run = run, action = action, reason = reason})
    now_aborted = now_aborted + 1
  elseif h.phase == 'running' and h.aborting ~= '1' then
    emit({type = 'abort_requested', ns = ns, run = run, action = action, reason = reason})
    requested = requested + 1
  end
end
return {now_aborted, requested}
