--[[ Retention for one namespace of one partition: retire finished runs, bound the cache.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, STREAM, akey, cache_hash, cache_times, children_key, done_key, fair_key, qkey, run_actions_key, running_key, runs_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] namespace  ARGV[2] keep_ms (finished longer ago than this are retired; 0 = no age limit)
  ARGV[3] keep_runs (beyond the newest this many finished runs are retired; -1 = no count limit)
  ARGV[4] limit (max runs, and max cache entries, handled in this call)
  ARGV[5] cache_keep_ms (0 = no age limit)  ARGV[6] cache_max (-1 = no size limit)
  ARGV[7] budget_us (optional, default 0 = none): stop once the call has used this much
          server CPU time (µs, os.clock, as reap.lua's budget) and answer more = 1
  Returns: {retired, still_live, cache_dropped, more}
    still_live: finished roots whose tree still has a live action (a descendant being
                aborted): kept, and looked at again after the others
    more: 1 if a limit was hit or the budget ran out (call again)
  Why a budget: the server runs nothing else while a script runs, and a run's cost
  grows with its actions (an event, a DEL per action): 100 runs of a long tree took
  a call 17.5 ms. The budget is checked after each run; at least one run is retired
  per call. Under a virtual clock the caller passes none (replayed calls stay alike).
  Events: run_retired (one per run)
  Only a run whose every action is terminal is retired. Its state goes (its
  action hashes, the root's holding the run too, with their refused-report markers; the run's child sets; its
  index entries); its events stay in the log until compaction has archived them
  durably and trims the stream (leasing/compaction.py). A running run, however
  old, is never touched: it is not in the finished index. ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local ns = ARGV[1]
local err = refuse('retire', bad_ns(ns), bad_int('keep_ms', ARGV[2], 0, 3162240000000),
  bad_int('keep_runs', ARGV[3], -1, SAFE_INT), bad_int('limit', ARGV[4], 1, 100000),
  bad_int('cache_keep_ms', ARGV[5], 0, 3162240000000), bad_int('cache_max', ARGV[6], -1, SAFE_INT),
  ARGV[7] and bad_int('budget_us', ARGV[7], 0, 60000000))
if err then return err end
local budget_us = tonumber(ARGV[7] or '0')
-- The budget's clock: the server's CPU time in µs (os.clock, the one clock that moves inside
-- a script: TIME is frozen for its length). Where the server's Lua has no os.clock, none.
local os_lib = rawget(_G, 'os')   -- rawget: reading a missing global is an error in the sandbox
local cpu_clock = budget_us > 0 and os_lib and os_lib.clock
local started_s = cpu_clock and cpu_clock()
local function spent() return cpu_clock and (cpu_clock() - started_s) * 1000000 >= budget_us end
local keep_ms, keep_runs, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cache_keep_ms, cache_max = tonumber(ARGV[5]), tonumber(ARGV[6])
checked()

local DONE = done_key(ns)
local retired, still_live, cache_dropped, more = 0, 0, 0, 0

-- The members of a time-scored index that a policy lets go, oldest first, at most limit:
-- older than keep_ms (0: no age limit), and beyond the newest keep_n (-1: no count limit).
local function due(index, keep_ms_, keep_n)
  local out, seen = {}, {}
  local function add(list)
    for _, member in ipairs(list) do
      if not seen[member] and #out < limit then seen[member] = true; out[#out + 1] = member end
    end
  end
  if keep_ms_ > 0 then
    local old = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. S(NOW - keep_ms_), 'LIMIT', 0, limit)
    if #old >= limit then more = 1 end
    add(old)
  end
  if keep_n >= 0 then
    local excess = redis.call('ZCARD', index) - keep_n
    if excess > 0 then
      if excess > limit then more = 1 end
      add(redis.call('ZRANGE', index, 0, math.min(excess, limit) - 1))
    end
  end
  return out
end

local candidates = due(DONE, keep_ms, keep_runs)

for i, run in ipairs(candidates) do
  if i > 1 and spent() then more = 1; break end   -- the rest are due still: the next call takes them
  local run_ref = ns .. '/' .. run
  local phase = run_phase(redis.call('HGET', root_key(ns, run), 'phase'))
  if not TERMINAL[phase] then
    redis.call('ZREM', DONE, run)          -- gone already, or not finished: not retention's
  else
    local actions = redis.call('SMEMBERS', run_actions_key(run_ref))
    table.insert(actions, 1, 'a0')
    local live = false
    for _, action in ipairs(actions) do
      local p = redis.call('HGET', akey(run_ref .. '/' .. action), 'phase')
      if p and not TERMINAL[p] then live = true; break end
    end
    if live then
      -- A descendant still winding down: look again after the others.
      redis.call('ZADD', DONE, NOW, run)
      still_live = still_live + 1
    else
      local reason = 'retention: finished ' .. S(NOW - tonumber(redis.call('ZSCORE', DONE, run))) .. ' ms ago'
      emit({type = 'run_retired', ns = ns, run = run, reason = reason, actions = #actions}, phase)
      for _, action in ipairs(actions) do
        redis.call('DEL', akey(run_ref .. '/' .. action), children_key(run_ref .. '/' .. action))
      end
      redis.call('DEL', run_actions_key(run_ref))
      redis.call('ZREM', runs_key(ns), run)
      redis.call('ZREM', DONE, run)
      retired = retired + 1
    end
  end
end

-- The cache's own bound: entries older than cache_keep_ms, and beyond the newest cache_max.
local TIMES, CACHE = cache_times(ns), cache_hash(ns)
if spent() then return {retired, still_live, 0, 1} end
local dropped = due(TIMES, cache_keep_ms, cache_max)
if #dropped > 0 then
  redis.call('HDEL', CACHE, unpack(dropped))
  redis.call('ZREM', TIMES, unpack(dropped))
  cache_dropped = #dropped
end
return {retired, still_live, cache_dropped, more}
