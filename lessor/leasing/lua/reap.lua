--[[ The reaper's pass over one partition, in bounded batches with a time budget.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, REAP_DUE, SEQ, STREAM, TIMEOUTS, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] limit (max items of each kind handled in this call)
  ARGV[2] pass interval ms (optional, default 0): if another reaper finished a
          pass of this partition less than this long ago, skip (any number of
          workers and reapers then cost one pass per partition per interval)
  ARGV[3] budget_us (optional, default 0 = none): stop once the call has used this
          much server CPU time (µs, os.clock) and answer more = 1
  Returns: {expired, timed_out, promoted, lag_ms, more, failovers, skipped, call_us, next_due_ms}
    failovers: expired leases whose action was requeued (the rest failed or were aborted)
    lag_ms: how long past its expiry the latest-reaped lease was (reaper lag)
    more:   1 if a kind hit the limit or the budget ran out (call again now)
    skipped: 1 if the partition was reaped less than an interval ago (nothing done)
    call_us: server CPU time this call used from the throttle check on (µs, os.clock;
             0 where the server's Lua has no os.clock)
    next_due_ms: in how many ms (server clock) the earliest item left in the partition's
             indexes falls due (0: now), or -1 if they are empty; skipped calls answer it
             too. A reaper sleeps until then (bounded) instead of calling every interval.
  Events: lease_expired + (action_requeued | action_failed | action_aborted);
          action_timed_out or action_requeued (reason timeout)
  Expires leases whose deadline + grace has passed on the server clock. The
  script is atomic, so reapers racing over the same partition never expire a
  lease twice: the second finds it gone from the index or no longer running.
  On a new server epoch it first extends every live lease (ensure_epoch).
  Why a time budget: the server runs nothing else while a script runs. A storm
  of expired leases (a fleet lost at once) reaped 500 a call held the server
  34 ms a call (p50; 177 ms max); each item costs ~50 µs (its events, hashes
  and requeue), so a 2 ms budget keeps a call near 2 ms whatever the items cost.
  Which clock: not TIME, which the server freezes for the length of a script
  (measured on Valkey 8.1: two TIME calls around a busy loop return the same
  value), and not NOW, which is that frozen TIME or a virtual clock. os.clock(),
  the server process's CPU time in µs, is the one clock that moves inside a
  script; it leaves out time the server was preempted, which no budget could
  have saved anyway. Nothing is judged by it, only when to stop. A simulation
  (virtual clock) passes no budget, so its calls depend on the item limit alone
  and replay the same way every time. Where the server's Lua has no os.clock the
  budget becomes an item count at BUDGET_ITEM_US each (the measured cost of an
  expiry that requeues).
  Cost: two INFO calls, an os.clock per item (~0.5 µs), a ZRANGE of each index's
  first item (the only read of an index with nothing due: it also gives next_due_ms),
  a ZRANGEBYSCORE per CHUNK items of an index with items due, and per due item its
  hash reads and writes. ]]
local function whole(v, default)   -- a non-negative integer argument (digits only), or nil
  if v == nil then return default end
  if not string.match(v, '^%d+$') or #v > 12 then return nil end
  return tonumber(v)
end
local limit, interval_ms, budget_us = whole(ARGV[1]), whole(ARGV[2], 0), whole(ARGV[3], 0)
if not limit or limit < 1 or not interval_ms or not budget_us then
  return redis.error_reply('LESSOR_BAD_ARG reap needs integers limit >= 1, interval_ms >= 0, budget_us >= 0')
end
-- The budget's clock (see the header): CPU µs used so far, or items handled times
-- BUDGET_ITEM_US where os.clock is missing.
local BUDGET_ITEM_US = 50
local os_lib = rawget(_G, 'os')   -- rawget: reading a missing global is an error in the sandbox
local cpu_clock = os_lib and os_lib.clock
local handled = 0
local function clock_us()
  if cpu_clock then return math.floor(cpu_clock() * 1000000) end
  return handled * BUDGET_ITEM_US
end
local started_us = clock_us()
-- In how many ms the first item of ``index`` falls due (nil: empty). Leases are due
-- strictly past their score (see drain(LEASES, ...)), timeouts and backoffs at it.
local function due_in(index, strict)
  local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  return math.max(0, tonumber(first[2]) - NOW + (strict and 1 or 0))
end
local function earliest(...)
  local best = -1
  for _, d in ipairs({...}) do
    if d and (best < 0 or d < best) then best = d end
  end
  return best
end
local function next_due()
  return earliest(due_in(LEASES, true), due_in(TIMEOUTS, false), due_in(DELAYED, false))
end
-- The partition's pass throttle. No token is needed: the pass is atomic and judged
-- on server state alone, so a second reaper in the same interval could only repeat
-- work, never undo it; the throttle only saves that work. A due time further off
-- than one interval means the server clock went back: it is ignored.
local due_at = tonumber(redis.call('GET', REAP_DUE) or '0')
if interval_ms > 0 and NOW < due_at and due_at - NOW <= interval_ms then
  return {0, 0, 0, 0, 0, 0, 1, cpu_clock and clock_us() - started_us or 0, next_due()}
end
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local expired, timed_out, promoted, lag, more, failovers = 0, 0, 0, 0, 0, 0
-- A new server epoch (restart, failover) first gives every live lease a full ttl:
-- renewals lost with the old epoch's unsynced tail must not expire anyone.
checked()
ensure_epoch()

-- Due items are fetched a few at a time: with a budget a call handles a few dozen,
-- and fetching the whole limit each call would cost more than the items it reaches.
local CHUNK = 32
-- Handle the items of ``index`` scored up to ``upper`` with ``handle(ref)``, up to
-- ``limit``, until the budget is spent. Each handled item leaves the range
-- (removed, or re-scored past NOW), so every fetch starts at the front. At least one
-- item per index per call, so the timeouts and backoffs move on during a lease storm.
-- Returns when the index's first item left falls due (due_in); an index whose first
-- item is not due yet costs that one ZRANGE and nothing more.
local function drain(index, upper, strict, handle)
  local due = due_in(index, strict)
  if due ~= 0 then return due end
  local n = 0
  while n < limit do
    local want = math.min(CHUNK, limit - n)
    local refs = redis.call('ZRANGEBYSCORE', index, '-inf', upper, 'LIMIT', 0, want)
    for _, ref in ipairs(refs) do
      handle(ref)
      n, handled = n + 1, handled + 1
      if budget_us > 0 and clock_us() - started_us >= budget_us then
        more = 1
        return 0
      end
    end
    if #refs < want then return due_in(index, strict) end   -- nothing more is due
  end
  more = 1   -- the limit was reached
  return 0
end

-- The index score is a lower bound of the expiry (renewals do not touch it):
-- a lease found renewed is re-scored to its real expiry and left alone.
-- Strictly past: at now == deadline + grace the lease is still valid (as renew.lua and fence() judge).
local leases_due = drain(LEASES, '(' .. S(NOW), true, function(ref)
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
end)

local timeouts_due = drain(TIMEOUTS, S(NOW), false, function(ref)
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
end)

local delayed_due = drain(DELAYED, S(NOW), false, function(ref)
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
end)
-- A pass that stopped on its limit or budget is not done: the throttle is only set
-- once a call found nothing more due, so other reapers keep helping until then.
if interval_ms > 0 and more == 0 then redis.call('SET', REAP_DUE, S(NOW + interval_ms)) end
return {expired, timed_out, promoted, lag, more, failovers, 0, cpu_clock and clock_us() - started_us or 0,
  earliest(leases_due, timeouts_due, delayed_due)}
