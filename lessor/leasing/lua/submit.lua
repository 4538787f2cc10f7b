--[[ Submit a run: run_created + its root action a0, queued. Idempotent by run id
  (the client derives the run id from an idempotency key when one is given).
  KEYS[1]  partition prefix (string)
  ARGV[1] ns  ARGV[2] run id  ARGV[3] task  ARGV[4] queue  ARGV[5] inputs (bytes, may be "")
  ARGV[6] idempotency key (or "")  ARGV[7] system retries  ARGV[8] user retries
  ARGV[9] backoff_ms  ARGV[10] priority  ARGV[11] timeout_ms (0 = none)  ARGV[12] cache key (or "")
  ARGV[13] cached result (bytes) when the client found a cache entry, else absent
  Returns: {1, run id} when created, {0, run id} when the run already existed
  Events: run_created, action_created, (cache_hit, run_completed) ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local ns, run, task, queue = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local run_ref = ns .. '/' .. run
if redis.call('EXISTS', rkey(run_ref)) == 1 then return {0, run} end
local function opt(v) if v == '' then return nil end return v end
emit({type = 'run_created', ns = ns, run = run, task = task, queue = queue,
  inputs = opt(ARGV[5]), idempotency_key = opt(ARGV[6])})
local ref = run_ref .. '/a0'
emit({type = 'action_created', ns = ns, run = run, action = 'a0', task = task, queue = queue,
  inputs = opt(ARGV[5]), sys_retries = tonumber(ARGV[7]), user_retries = tonumber(ARGV[8]),
  backoff_ms = tonumber(ARGV[9]), priority = tonumber(ARGV[10]), timeout_ms = tonumber(ARGV[11]),
  cache_key = opt(ARGV[12]), parent_token = 0})
redis.call('SADD', PREFIX .. 'ra:' .. run_ref, 'a0')
redis.call('ZADD', PREFIX .. 'runs:' .. ns, NOW, run)
if ARGV[13] ~= nil then
  emit({type = 'cache_hit', ns = ns, run = run, action = 'a0', cache_key = ARGV[12], result = ARGV[13]})
else
  enqueue(ref, ns, queue, ARGV[10])
end
return {1, run}
