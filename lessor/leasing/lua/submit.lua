--[[ Submit runs: for each, run_created + its root action a0, queued. Batched:
  one call submits any number of runs of one partition. Idempotent by run id
  (the client derives the run id from an idempotency key when one is given).
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, SEQ, STREAM, akey, children_key, done_key, qkey, rkey, run_actions_key, runs_key
  ARGV: 14 values per run:
    ns, run id, task, queue, inputs (bytes, may be ""), idempotency key (or ""),
    system retries, user retries, backoff_ms, priority, timeout_ms (0 = none),
    cache key (or ""), cache hit (1/0), cached result (bytes; "" unless a hit)
  Returns: per run {1 created | 0 already existed (the same request) | 2 conflict: the run id
    exists with another task or other inputs, run id}, flattened
  Events: run_created, action_created, (cache_hit, run_completed) ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local function opt(v) if v == '' then return nil end return v end
-- Every run's arguments are checked before the first write (lessor/core/limits.py has the same bounds).
if #ARGV == 0 or #ARGV % 14 ~= 0 then
  return redis.error_reply('LESSOR_BAD_ARG submit: 14 values per run, got ' .. #ARGV)
end
for i = 1, #ARGV, 14 do
  local err = refuse('submit', bad_ns(ARGV[i]), bad_id('run', ARGV[i + 1]), bad_id('task', ARGV[i + 2]),
    bad_id('queue', ARGV[i + 3]), bad_bytes('inputs', ARGV[i + 4], 65536), bad_text('idempotency key', ARGV[i + 5], 256),
    bad_int('system retries', ARGV[i + 6], 0, 1000), bad_int('user retries', ARGV[i + 7], 0, 1000),
    bad_int('backoff_ms', ARGV[i + 8], 0, 86400000), bad_int('priority', ARGV[i + 9], -1000, 1000),
    bad_int('timeout_ms', ARGV[i + 10], 0, 31622400000), bad_text('cache key', ARGV[i + 11], 256),
    bad_int('cache hit', ARGV[i + 12], 0, 1), bad_bytes('cached result', ARGV[i + 13], 65536))
  if err then return err end
end
checked()
local out = {}
for i = 1, #ARGV, 14 do
  local ns, run, task, queue = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local run_ref = ns .. '/' .. run
  local existing = redis.call('HMGET', rkey(run_ref), 'phase', 'task', 'inputs')
  if existing[1] then
    -- The same run id again: the same request is a repeat (0); another task or other
    -- inputs under the same id (an idempotency key reused) is a conflict (2).
    if existing[2] ~= task or (existing[3] or '') ~= ARGV[i + 4] then
      out[#out + 1], out[#out + 2] = CONFLICT, run
    else
      -- A repeat writes too, so a durability wait on this connection covers the first try.
      redis.call('HINCRBY', rkey(run_ref), '_repeats', 1)
      out[#out + 1], out[#out + 2] = EXISTED, run
    end
  else
    local inputs, priority, cache_key = opt(ARGV[i + 4]), ARGV[i + 9], opt(ARGV[i + 11])
    emit({type = 'run_created', ns = ns, run = run, task = task, queue = queue,
      inputs = inputs, idempotency_key = opt(ARGV[i + 5])}, NO_PHASE)
    emit({type = 'action_created', ns = ns, run = run, action = 'a0', task = task, queue = queue,
      inputs = inputs, sys_retries = tonumber(ARGV[i + 6]), user_retries = tonumber(ARGV[i + 7]),
      backoff_ms = tonumber(ARGV[i + 8]), priority = tonumber(priority), timeout_ms = tonumber(ARGV[i + 10]),
      cache_key = cache_key, parent_token = 0}, NO_PHASE)
    redis.call('ZADD', runs_key(ns), NOW, run)
    if ARGV[i + 12] == '1' then
      emit({type = 'cache_hit', ns = ns, run = run, action = 'a0', cache_key = cache_key,
        result = ARGV[i + 13]}, 'queued')
    else
      enqueue(run_ref .. '/a0', ns, queue, priority)
    end
    out[#out + 1], out[#out + 2] = CREATED, run
  end
end
return out
