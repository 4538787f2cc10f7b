--[[ Fire the due ticks of this partition's schedules, under the partition's ticker lease.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, SCHEDULES, SEQ, STREAM, TICKER, TOKENS, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, runs_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] worker id  ARGV[2] ticker token ("0": none yet)  ARGV[3] ttl_ms  ARGV[4] grace_ms
  ARGV[5..] groups of 7: kind ("tick" | "skip"), namespace, schedule name, tick_ms (skip: the last
    skipped tick), run id (skip: the first skipped tick, as text), count (tick: 1), next due ms
  Returns: {code, token, fired, skipped}
    OK: the caller holds the ticker lease (token: its token, new if it just took the lease);
    STALE: another ticker holds it (token: its token, or 0); nothing fired. A caller that came
      with a token that is not current (a deposed ticker) has each of its ticks recorded as
      schedule_tick_rejected, like any stale report.
  Events: schedule_ticked + run_created + action_created (one run per tick), schedule_skipped,
    or schedule_tick_rejected
  Exactly once: a tick fires only if it is later than the schedule's last handled tick, and its
  run id is derived from (schedule, tick), so no tick can start two runs, whoever sends it and
  however often. The lease only decides who ticks; a deposed ticker's late write is refused. ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local worker, token = ARGV[1], ARGV[2]
local err = refuse('tick', bad_id('worker', worker), bad_token(token), bad_int('ttl_ms', ARGV[3], 1, 86400000),
  bad_int('grace_ms', ARGV[4], 0, 86400000), (#ARGV - 4) % 7 ~= 0 and 'groups of 7 values per tick')
if err then return err end
for i = 5, #ARGV, 7 do
  err = refuse('tick', (ARGV[i] ~= 'tick' and ARGV[i] ~= 'skip') and 'kind must be tick or skip',
    bad_ns(ARGV[i + 1]), bad_id('schedule name', ARGV[i + 2]), bad_int('tick_ms', ARGV[i + 3], 0, SAFE_INT),
    ARGV[i] == 'tick' and bad_id('run id', ARGV[i + 4]) or (ARGV[i] == 'skip' and bad_int('from_ms', ARGV[i + 4], 0, SAFE_INT)),
    bad_int('count', ARGV[i + 5], 1, 1000000), bad_int('next due ms', ARGV[i + 6], 0, SAFE_INT))
  if err then return err end
end
local ttl_ms, grace_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
checked()

-- The ticker lease: held (the caller's token, not dead), free (none, or dead), or someone else's.
local lease = hget(TICKER, 'token', 'worker', 'deadline_ms', 'grace_ms')
local free = lease.token == '0' or lease_dead(lease)
if token ~= '0' and token ~= lease.token then
  -- A deposed ticker: whatever it computed is refused, and recorded.
  for i = 5, #ARGV, 7 do
    local ref = ARGV[i + 1] .. '/' .. ARGV[i + 2]
    local phase = redis.call('HGET', skey(ref), 'phase')
    if phase then
      emit({type = 'schedule_tick_rejected', ns = ARGV[i + 1], schedule = ARGV[i + 2], tick_ms = tonumber(ARGV[i + 3]),
        token = tonumber(token), worker = worker, current_token = tonumber(lease.token)}, phase)
    end
  end
  return {STALE, tonumber(lease.token), 0, 0}
end
if token == '0' and not free then return {STALE, tonumber(lease.token), 0, 0} end
if token == '0' then
  local next_token, save_tokens = token_source()
  token = S(next_token())
  save_tokens()
elseif lease_dead(lease) then
  return {STALE, 0, 0, 0}   -- our own lease ran out: take it again with "0", recomputing the ticks
end
redis.call('HSET', TICKER, 'token', token, 'worker', worker, 'deadline_ms', S(NOW + ttl_ms), 'grace_ms', grace_ms)

local fired, skipped = 0, 0
for i = 5, #ARGV, 7 do
  local kind, ns, name, tick_ms = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local ref = ns .. '/' .. name
  local h = hget(skey(ref), 'phase', 'last_tick_ms', 'task', 'queue', 'inputs', 'retries')
  -- Only an active schedule ticks, and only forward: a tick at or before the last one handled
  -- was fired (or skipped) already.
  if h.phase == 'active' and tick_ms > tonumber(h.last_tick_ms) then
    if kind == 'tick' then
      local run = ARGV[i + 4]
      if redis.call('EXISTS', root_key(ns, run)) == 0 then
        local inputs = h.inputs
        if inputs == '' then inputs = nil end
        create_run(ns, run, h.task, h.queue, inputs, nil, 3, tonumber(h.retries), 1000, 0, 0, nil)   -- the schedule's retries
        enqueue(ns .. '/' .. run .. '/a0', ns, h.queue, 0)
      end
      emit({type = 'schedule_ticked', ns = ns, schedule = name, run = run, tick_ms = tick_ms,
        token = tonumber(token), worker = worker}, 'active')
      fired = fired + 1
    else
      emit({type = 'schedule_skipped', ns = ns, schedule = name, from_ms = tonumber(ARGV[i + 4]), to_ms = tick_ms,
        count = tonumber(ARGV[i + 5]), reason = 'catch-up policy', token = tonumber(token), worker = worker}, 'active')
      skipped = skipped + tonumber(ARGV[i + 5])
    end
  end
  if h.phase == 'active' then redis.call('ZADD', SCHEDULES, tonumber(ARGV[i + 6]), ref) end
end
return {OK, tonumber(token), fired, skipped}
