--[[ Submit runs: for each, run_created + its root action a0, queued. Batched:
  one call submits any number of runs of one partition. Idempotent by run id
  (the client derives the run id from an idempotency key when one is given).
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, SEQ, STREAM, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, runs_key, setkey, share_key, skey, tkey, wake_key
  ARGV: 14 values per run:
    ns, run id, task, queue, inputs (bytes, may be ""), idempotency key (or ""),
    system retries, user retries, backoff_ms, priority, timeout_ms (0 = none),
    cache key (or ""), cache hit (1/0), cached result (bytes; "" unless a hit)
  or, packed (what scheduler/submit.py sends): ARGV[1] one msgpack array of those
    values (strings, or integers), ARGV[2] the number of runs; see unpack_batch
  Returns: per run {1 created | 0 already existed (the same request) | 2 conflict: the run id
    exists with another task or other inputs, run id}, flattened
  Events: run_created, action_created, (cache_hit, run_completed)
  Cost: per run one HMGET (of its root action's hash: the run lives there) and one HSET; per
  call one XADD of its events, one INCRBY, one ZADD of the
  run index per namespace, one ZADD and one wake-up (LLEN, RPUSH) per queue. ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local function opt(v) if v == '' then return nil end return v end
local A, n = ARGV, #ARGV
if #ARGV == 2 then
  A, n = unpack_batch(ARGV[1], ARGV[2], 14)
  if not A then return redis.error_reply('LESSOR_BAD_ARG submit: ' .. n) end
end
-- Every run's arguments are checked before the first write (lessor/core/limits.py has the same bounds).
if n == 0 or n % 14 ~= 0 then
  return redis.error_reply('LESSOR_BAD_ARG submit: 14 values per run, got ' .. n)
end
-- The runs of a batch mostly share everything but their run id, inputs and cached result: a run
-- whose other values are the previous run's (checked already) has only those three checked.
-- (Checking every value of every run was a tenth of a submit's server work, callgrind.)
-- Checks are chained with `or`: the first bad value of a run is reported, in argument order.
local prev
for i = 1, n, 14 do
  local why
  if prev and A[i] == A[prev] and A[i + 2] == A[prev + 2] and A[i + 3] == A[prev + 3]
      and A[i + 5] == A[prev + 5] and A[i + 6] == A[prev + 6] and A[i + 7] == A[prev + 7]
      and A[i + 8] == A[prev + 8] and A[i + 9] == A[prev + 9] and A[i + 10] == A[prev + 10]
      and A[i + 11] == A[prev + 11] and A[i + 12] == A[prev + 12] then
    why = bad_id('run', A[i + 1]) or bad_bytes('inputs', A[i + 4], 65536)
      or bad_bytes('cached result', A[i + 13], 65536)
  else
    why = bad_ns(A[i]) or bad_id('run', A[i + 1]) or bad_id('task', A[i + 2]) or bad_id('queue', A[i + 3])
      or bad_bytes('inputs', A[i + 4], 65536) or bad_text('idempotency key', A[i + 5], 256)
      or bad_int('system retries', A[i + 6], 0, 1000) or bad_int('user retries', A[i + 7], 0, 1000)
      or bad_int('backoff_ms', A[i + 8], 0, 86400000) or bad_int('priority', A[i + 9], -1000, 1000)
      or bad_int('timeout_ms', A[i + 10], 0, 31622400000) or bad_text('cache key', A[i + 11], 256)
      or bad_int('cache hit', A[i + 12], 0, 1) or bad_bytes('cached result', A[i + 13], 65536)
  end
  if why then return redis.error_reply('LESSOR_BAD_ARG submit: ' .. why) end
  prev = i
end
checked()
local out, adds = {}, new_adds()   -- run and queue index entries: written together after the loop
local numbers = {}   -- text -> number, converted once per call: the runs of a batch share their numbers
local function num(text)
  local n = numbers[text]
  if n == nil then n = tonumber(text); numbers[text] = n end
  return n
end
for i = 1, n, 14 do
  local ns, run, task, queue = A[i], A[i + 1], A[i + 2], A[i + 3]
  local run_ref = ns .. '/' .. run
  local root = root_key(ns, run)   -- the run lives on its root action's hash
  local existing = redis.call('HMGET', root, 'phase', 'task', 'inputs')
  if existing[1] then
    -- The same run id again: the same request is a repeat (0); another task or other
    -- inputs under the same id (an idempotency key reused) is a conflict (2).
    if existing[2] ~= task or (existing[3] or '') ~= A[i + 4] then
      out[#out + 1], out[#out + 2] = CONFLICT, run
    else
      -- A repeat writes too, so a durability wait on this connection covers the first try.
      redis.call('HINCRBY', root, '_repeats', 1)
      out[#out + 1], out[#out + 2] = EXISTED, run
    end
  else
    local priority, cache_key = A[i + 9], opt(A[i + 11])
    create_run(ns, run, task, queue, opt(A[i + 4]), opt(A[i + 5]), num(A[i + 6]), num(A[i + 7]),
      num(A[i + 8]), num(priority), num(A[i + 10]), cache_key, adds)
    if A[i + 12] == '1' then
      emit({type = 'cache_hit', ns = ns, run = run, action = 'a0', cache_key = cache_key,
        result = A[i + 13]}, 'queued')
    else
      enqueue(run_ref .. '/a0', ns, queue, priority, adds)
    end
    out[#out + 1], out[#out + 2] = CREATED, run
  end
end
add_all(adds)
return out
