--[[ Lease up to n queued actions of one queue to one worker.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, STREAM, TIMEOUTS, TOKENS, akey, children_key, done_key, qkey, rkey, run_actions_key, setkey, skey, tkey, wake_key
  ARGV[1] namespace  ARGV[2] queue  ARGV[3] worker id  ARGV[4] n (max leases)
  ARGV[5] ttl_ms  ARGV[6] grace_ms
  Returns: {now_ms, then 7 values per lease: ref, token, attempt, deadline_ms, task, inputs, parent}
  Events: action_leased (one per lease)
  Each lease gets a fresh fencing token (token_source, strictly increasing), a new
  attempt number and a deadline on the server clock; its expiry (deadline +
  grace) goes into the reap index. ]]
local ns, queue, worker = ARGV[1], ARGV[2], ARGV[3]
local n, ttl_ms, grace_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if not n or n < 1 or n > 10000 or not ttl_ms or ttl_ms <= 0 or ttl_ms > 86400000 or not grace_ms
    or grace_ms < 0 or grace_ms > 86400000 or n % 1 ~= 0 or ttl_ms % 1 ~= 0 or grace_ms % 1 ~= 0
    or not string.match(worker or '', '^[%w][%w_%.%-]*$') or #worker > 63 then
  return redis.error_reply('LESSOR_BAD_ARG acquire needs 1 <= n <= 10000, 0 < ttl_ms <= 1 day, '
    .. '0 <= grace_ms <= 1 day (integers) and a valid worker id')
end
checked()
local out = {NOW}
local popped = redis.call('ZPOPMIN', qkey(ns, queue), n)
if #popped == 0 then return out end  -- an idle poll costs one ZPOPMIN, not the library
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local next_token, save_tokens = token_source()
local granted = {}   -- reap index entries (score, ref), added in one ZADD after the loop
for i = 1, #popped, 2 do
  local ref = popped[i]
  local key = akey(ref)
  local h = hget(key, 'phase', 'ns', 'run', 'action', 'attempt', 'task', 'inputs', 'parent', 'timeout_ms', 'aborting')
  -- Only a queued action is leased: a queue entry can outlive an abort.
  if h.phase == 'queued' and h.aborting ~= '1' then
    local token = next_token()
    local attempt = tonumber(h.attempt) + 1
    local deadline = NOW + ttl_ms
    emit({type = 'action_leased', ns = h.ns, run = h.run, action = h.action, attempt = attempt,
      token = token, worker = worker, ttl_ms = ttl_ms, grace_ms = grace_ms, deadline_ms = deadline}, 'queued')
    granted[#granted + 1], granted[#granted + 2] = lease_expiry({deadline_ms = deadline, grace_ms = grace_ms}), ref
    local timeout_ms = tonumber(h.timeout_ms)
    if timeout_ms > 0 then redis.call('ZADD', TIMEOUTS, NOW + timeout_ms, ref) end
    local n_out = #out
    out[n_out + 1], out[n_out + 2], out[n_out + 3], out[n_out + 4] = ref, token, attempt, deadline
    out[n_out + 5], out[n_out + 6], out[n_out + 7] = h.task, h.inputs or '', h.parent or ''
  end
end
save_tokens()
for i = 1, #granted, 1000 do   -- (unpack has a stack limit)
  redis.call('ZADD', LEASES, unpack(granted, i, math.min(i + 999, #granted)))
end
-- Took all it asked for and work is left: pass the wake-up on to the next idle worker
-- (one token wakes one worker; each hands it on while the queue is not empty).
if #popped == 2 * n and redis.call('ZCARD', qkey(ns, queue)) > 0 then wake(ns, queue) end
return out
