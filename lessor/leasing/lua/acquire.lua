--[[ Lease up to n queued actions of one queue to one worker.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, STREAM, TIMEOUTS, TOKENS, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] namespace, or '*': every namespace of the queue, by weighted fair share
  ARGV[2] queue  ARGV[3] worker id  ARGV[4] n (max leases)
  ARGV[5] ttl_ms  ARGV[6] grace_ms
  Returns: {now_ms, then 7 values per lease: ref, token, attempt, deadline_ms, task, inputs, parent}
  Events: action_leased (one per lease)
  Each lease gets a fresh fencing token (token_source, strictly increasing), a new
  attempt number and a deadline on the server clock; its expiry (deadline +
  grace) goes into the reap index.
  Fair share (docs/operations.md): with '*', each pick takes the namespace with the lowest
  pass in the queue's rotation (fair_key), then that namespace's queue in its own order
  (priority, then FIFO), and advances its pass by 1/weight per lease. A run of picks from
  one namespace is popped at once: as many as keep its pass at or below the next lowest,
  so a queue with one namespace costs one ZPOPMIN, as before. A namespace or the queue at
  its running limit (share_key; running_key counts: the leases granted here once per call,
  their ends in emit) gets no lease: the namespace leaves the rotation until one of its
  leases ends. ]]
local ns, queue, worker = ARGV[1], ARGV[2], ARGV[3]
local n, ttl_ms, grace_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ns_ok = ns == '*' or string.match(ns or '', '^[%w][%w_%.%-]*/[%w][%w_%.%-]*$')
if not n or n < 1 or n > 10000 or not ttl_ms or ttl_ms <= 0 or ttl_ms > 86400000 or not grace_ms
    or grace_ms < 0 or grace_ms > 86400000 or n % 1 ~= 0 or ttl_ms % 1 ~= 0 or grace_ms % 1 ~= 0
    or not string.match(worker or '', '^[%w][%w_%.%-]*$') or #worker > 63 or not ns_ok or #ns > 127
    or not string.match(queue or '', '^[%w][%w_%.%-]*$') or #queue > 63 then
  return redis.error_reply('LESSOR_BAD_ARG acquire needs a namespace (project/domain, or * for all), '
    .. 'a queue id, 1 <= n <= 10000, 0 < ttl_ms <= 1 day, 0 <= grace_ms <= 1 day (integers) and a valid worker id')
end
checked()
local out = {NOW}
local any = ns == '*'
-- An idle poll costs one ZCARD, not the library.
if redis.call('ZCARD', any and fair_key(queue) or qkey(ns, queue)) == 0 then return out end
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local next_token, save_tokens = token_source()
local fq, share, running = fair_key(queue), share_key(queue), running_key(queue)
local counts = defer_counts()   -- ns -> leases granted here, added to running_key at the end

-- One namespace's weight, limit and running count, read once per call and kept current here.
local cfg = {}
local function config(name)
  local c = cfg[name]
  if c then return c end
  local s = redis.call('HMGET', share, 'w:' .. name, 'max:' .. name)
  local weight = tonumber(s[1] or '1')
  if not weight or weight <= 0 then weight = 1 end
  c = {stride = 1 / weight, max = tonumber(s[2] or '0') or 0,
       running = tonumber(redis.call('HGET', running, name) or '0')}
  cfg[name] = c
  return c
end

local granted = {}   -- reap index entries (score, ref), added in one ZADD after the loop
-- Lease the action at ``ref`` if it is still queued (a queue entry can outlive an abort).
-- The hash is read into locals, not through hget's table (a table per lease; HMGET answers a
-- missing field with false).
local function lease(ref)
  local phase, a_ns, run, action, attempt, task, inputs, parent, timeout_ms, aborting = unpack(redis.call('HMGET',
    akey(ref), 'phase', 'ns', 'run', 'action', 'attempt', 'task', 'inputs', 'parent', 'timeout_ms', 'aborting'))
  if phase ~= 'queued' or aborting == '1' then return false end
  local token = next_token()
  attempt = tonumber(attempt or '0') + 1
  local deadline = NOW + ttl_ms
  emit({type = 'action_leased', ns = a_ns, run = run, action = action, attempt = attempt,
    token = token, worker = worker, ttl_ms = ttl_ms, grace_ms = grace_ms, deadline_ms = deadline}, 'queued')
  granted[#granted + 1], granted[#granted + 2] = lease_expiry({deadline_ms = deadline, grace_ms = grace_ms}), ref
  if timeout_ms and timeout_ms ~= '0' then redis.call('ZADD', TIMEOUTS, NOW + tonumber(timeout_ms), ref) end
  local n_out = #out
  out[n_out + 1], out[n_out + 2], out[n_out + 3], out[n_out + 4] = ref, token, attempt, deadline
  out[n_out + 5], out[n_out + 6], out[n_out + 7] = task, inputs or '', parent or ''
  return true
end

-- A namespace leaves the rotation (no work left, or at its limit), remembering its pass.
local function leave(name, pass)
  redis.call('ZREM', fq, name)
  redis.call('HSET', share, 'p:' .. name, pass)
end

local qmax = tonumber(redis.call('HGET', share, 'max') or '0') or 0
local total = tonumber(redis.call('HGET', running, '*') or '0')
local leased, blocked, picked = 0, false, nil
-- Each turn leases at least one action, or takes a namespace out of the rotation.
for _ = 1, n + 64 do
  if leased >= n then break end
  if qmax > 0 and total >= qmax then blocked = true; break end
  local name, pass, next_pass
  if any then
    local top = redis.call('ZRANGE', fq, 0, 1, 'WITHSCORES')
    if #top == 0 then break end
    name, pass, next_pass = top[1], tonumber(top[2]), top[4] and tonumber(top[4])
  else   -- one namespace: its pass still advances, so '*' workers on the queue stay fair
    name = ns
    local score = redis.call('ZSCORE', fq, ns)
    pass = score and tonumber(score) or fair_pass(ns, queue)
  end
  local c = config(name)
  local room = n - leased
  if qmax > 0 then room = math.min(room, qmax - total) end
  if c.max > 0 then room = math.min(room, c.max - c.running) end
  if room <= 0 then
    leave(name, pass)
    blocked = true
    if c.max > 0 and c.running >= c.max then redis.call('HSET', share, 'parked:' .. name, '1') end
    if not any then break end
  else
    if next_pass then room = math.min(room, math.floor((next_pass - pass) / c.stride) + 1) end
    local popped = redis.call('ZPOPMIN', qkey(name, queue), room)
    local taken = #popped / 2
    for i = 1, #popped, 2 do
      if lease(popped[i]) then
        leased, total, c.running = leased + 1, total + 1, c.running + 1
      end
    end
    pass = pass + taken * c.stride
    -- The queue's virtual time is the pass this pick reached, not the one it started from: a
    -- namespace that joins later starts there, so the time another spent alone earns it no credit.
    if any then picked = pass end
    -- Fewer than asked: its queue is empty. (Exactly as many: it stays, and a pick that
    -- finds its queue empty takes it out; a ZCARD per pick would cost more.)
    if taken < room then
      leave(name, pass)
      if not any then break end
    else
      redis.call('ZADD', fq, pass, name)
    end
  end
end
save_tokens()
call_chunked('ZADD', LEASES, granted)
local sum = 0
for name, k in pairs(counts) do
  redis.call('HINCRBY', running, name, k)
  sum = sum + k
end
if sum > 0 then redis.call('HINCRBY', running, '*', sum) end
if picked then redis.call('HSET', share, 'vt', picked) end   -- where a namespace joins an empty rotation
-- Refused by a limit: the next lease to end wakes the queue's workers (emit's count_running).
if blocked then redis.call('HSET', share, 'blocked', '1') end
-- Took all it asked for and work is left: pass the wake-up on to the next idle worker
-- (one token wakes one worker; each hands it on while the queue is not empty).
if leased == n and redis.call('ZCARD', any and fq or qkey(ns, queue)) > 0 then wake(ns, queue) end
return out
