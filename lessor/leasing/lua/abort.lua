--[[ Abort a run: every non-terminal action of it. Queued ones become aborted now;
  running ones are marked, their workers learn it from the next renewal
  (code ABORTED), cancel, and confirm with release (or the lease expires).
  Nothing is requeued after an abort.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, STREAM, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] ns  ARGV[2] run id  ARGV[3] reason
  Returns: {aborted now, abort requested} or error LESSOR_UNKNOWN_RUN. A run already
  terminal has its live actions (descendants that outlived the root) aborted too.
  Events: abort_requested (run, and each running action), action_aborted (queued actions) ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local ns, run, reason = ARGV[1], ARGV[2], ARGV[3]
local err = refuse('abort', bad_ns(ns), bad_id('run', run), bad_text('reason', reason, 4096))
if err then return err end
local run_ref = ns .. '/' .. run
local root = root_key(ns, run)   -- the run lives on its root action's hash
local h = redis.call('HMGET', root, 'phase', RUN_ON_ROOT.aborting)
if not h[1] then return redis.error_reply('LESSOR_UNKNOWN_RUN ' .. run_ref) end
local phase = run_phase(h[1])
checked()
-- A terminal run may still have live descendants (children of a root that ended
-- before they did): they are aborted all the same; only the run-level event is skipped.
if not TERMINAL[phase] and h[2] ~= '1' then
  emit({type = 'abort_requested', ns = ns, run = run, action = '', reason = reason})
end
local counts = abort_actions(ns, run, nil, reason)
-- A repeat that changed nothing still writes, so a durability wait covers the first try.
redis.call('HINCRBY', root, '_repeats', 1)
return counts
