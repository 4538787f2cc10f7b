--[[ The reaper's pass over one partition, in bounded batches.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, REAP_DUE, SEQ, STREAM, TIMEOUTS, akey, children_key, done_key, qkey, rkey, run_actions_key
  ARGV[1] limit (max items of each kind handled in this call)
  ARGV[2] pass interval ms (optional, default 0): if another reaper finished a
          pass of this partition less than this long ago, skip (any number of
          workers and reapers then cost one pass per partition per interval)
  Returns: {expired, timed_out, promoted, lag_ms, more, failovers, skipped}
    failovers: expired leases whose action was requeued (the rest failed or were aborted)
    lag_ms: how long past its expiry the latest-reaped lease was (reaper lag)
    more:   1 if a kind hit the limit (call again now)
    skipped: 1 if the partition was reaped less than an interval ago (nothing done)
  Events: lease_expired + (action_requeued | action_failed | action_aborted);
          action_timed_out or action_requeued (reason timeout)
  Expires leases whose deadline + grace has passed on the server clock. The
  script is atomic, so reapers racing over the same partition never expire a
  lease twice: the second finds it gone from the index or no longer running.
  On a new server epoch it first extends every live lease (ensure_epoch).
  Cost: two INFO calls, a ZRANGEBYSCORE per index, and per due item its hash
  reads and writes. ]]
local limit, interval_ms = tonumber(ARGV[1]), tonumber(ARGV[2] or '0')
if not limit or limit < 1 or not interval_ms or interval_ms < 0 then
  return redis.error_reply('LESSOR_BAD_ARG reap needs limit >= 1 and interval_ms >= 0')
end
-- The partition's pass throttle. No token is needed: the pass is atomic and judged
-- on server state alone, so a second reaper in the same interval could only repeat
-- work, never undo it; the throttle only saves that work. A due time further off
-- than one interval means the server clock went back: it is ignored.
local due_at = tonumber(redis.call('GET', REAP_DUE) or '0')
if interval_ms > 0 and NOW < due_at and due_at - NOW <= interval_ms then
  return {0, 0, 0, 0, 0, 0, 1}
end
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local expired, timed_out, promoted, lag, more, failovers = 0, 0, 0, 0, 0, 0
-- A new server epoch (restart, failover) first gives every live lease a full ttl:
-- renewals lost with the old epoch's unsynced tail must not expire anyone.
checked()
ensure_epoch()

-- The index score is a lower bound of the expiry (renewals do not touch it):
-- a lease found renewed is re-scored to its real expiry and left alone.
-- Strictly past: at now == deadline + grace the lease is still valid (as renew.lua and fence() judge).
local due = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. S(NOW), 'LIMIT', 0, limit)
if #due >= limit then more = 1 end
for _, ref in ipairs(due) do
  local h = hget(akey(ref), 'phase', 'deadline_ms', 'grace_ms')
  local expiry = h.phase == 'running' and lease_expiry(h)
  if expiry and not lease_dead(h) then
    redis.call('ZADD', LEASES, expiry, ref)
  else
    local decision = expire_lease(ref)
    if decision then
      expired = expired + 1
      lag = math.max(lag, NOW - expiry)
      if decision == 'action_requeued' then failovers = failovers + 1 end
    end
  end
end

local late = redis.call('ZRANGEBYSCORE', TIMEOUTS, '-inf', NOW, 'LIMIT', 0, limit)
if #late >= limit then more = 1 end
for _, ref in ipairs(late) do
  end_lease(ref)
  local h = hget(akey(ref), 'phase', 'attempt', 'token', 'worker', 'timeout_ms', 'user_left', 'sys_left', 'queue', 'priority', 'aborting')
  if h.phase == 'running' then
    local ns, run, action = split_ref(ref)
    local user_left = tonumber(h.user_left)
    if user_left > 0 and h.aborting ~= '1' then
      emit({type = 'action_requeued', ns = ns, run = run, action = action, reason = 'timeout',
        sys_left = tonumber(h.sys_left), user_left = user_left - 1, ready_at_ms = 0,
        error = 'attempt ' .. h.attempt .. ' timed out after ' .. h.timeout_ms .. ' ms (worker ' .. h.worker .. ')'})
      enqueue(ref, ns, h.queue, h.priority)
    else
      emit({type = 'action_timed_out', ns = ns, run = run, action = action, attempt = tonumber(h.attempt),
        token = tonumber(h.token), worker = h.worker, timeout_ms = tonumber(h.timeout_ms)})
    end
    timed_out = timed_out + 1
  end
end

local ready = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', NOW, 'LIMIT', 0, limit)
if #ready >= limit then more = 1 end
for _, ref in ipairs(ready) do
  redis.call('ZREM', DELAYED, ref)
  local h = hget(akey(ref), 'phase', 'aborting', 'queue', 'priority')
  if h.phase == 'queued' then
    local ns, run, action = split_ref(ref)
    if h.aborting == '1' then  -- never left waiting: an aborted backoff ends here
      emit({type = 'action_aborted', ns = ns, run = run, action = action, reason = 'aborted during backoff'}, 'queued')
    else
      enqueue(ref, ns, h.queue, h.priority)
      promoted = promoted + 1
    end
  end
end
if interval_ms > 0 and more == 0 then redis.call('SET', REAP_DUE, S(NOW + interval_ms)) end
return {expired, timed_out, promoted, lag, more, failovers, 0}
