--[[ Shared prelude, prepended to every lessor script when it is loaded.
  Not a script of its own. Binds the partition's keys from KEYS[1] (the
  partition prefix, e.g. "lessor:{p3}:"; every key a script touches is built
  from it, so all share one hash tag and one Cluster slot), reads the clock
  once, and defines emit(): check the transition table, XADD the event and
  update the projection hash, together.

  Atomicity: Redis does not roll back a script that errors half-way, so every
  script checks all its arguments first, calls checked(), and only then writes
  (a test-only build makes checked() raise and shows nothing was written).
  emit() re-checks each event against its definition and the transition table
  as a backstop, before its XADD; a failure there is a bug, reported loudly.
  What can still fail after the first write is the server refusing a command
  (a missing ACL permission, which lessor doctor checks for up front).

  Generated at load time from Python (leasing/luagen.py, spliced in by
  leasing/scripts.py), so nothing below is a hand copy of a Python definition:
    now_ms()                    the clock: server TIME, or a virtual clock
    OK, STALE, ... CREATED      reply codes (leasing/codes.py)
    akey, STREAM, LEASES, ...   the key schema (core/keyspace.py)
    ACTION_T, RUN_T, TERMINAL   the transition tables (MOVES of core/events.py)
    EVF, ON, ON_RUN             each event's fields and projection handler
                                (PROJECT of core/events.py, core/effects.py)
    TEXT, FROM_PAYLOAD, NO_PHASE
  Where the rules live, once each: lease_dead() (the grace rule), check_token() (the
  token check), expire_lease(), fence(). ]]
-- Per call (set by enter_call): the script's name, the partition prefix (KEYS[1]),
-- the clock read once, the partition's key names, the queues already woken, the fair-share
-- rotations already joined, acquire's deferred running counts, complete's deferred ends, the
-- events written so far (encoded when the call ends) and the runs finished so far, both written when
-- the call ends.
local SCRIPT, PREFIX, NOW, woken, joined, deferred, ending, logged, finished
--@@GENERATED_TRACER@@

--@@GENERATED_CLOCK@@

-- Exact integer text (tostring rounds to 14 digits). '%d' for integers within the exact range
-- of a double: libc's integer printing costs a fifth of '%.0f''s float printing (callgrind: about
-- 9k instructions per action less); '%.0f' for anything else.
local function S(n)
  if n % 1 == 0 and n <= 9007199254740991 and n >= -9007199254740991 then return string.format('%d', n) end
  return string.format('%.0f', n)
end
-- checked(): every script calls it once all its arguments are checked, before its
-- first write. A no-op; a test-only build makes it raise, to show that everything
-- that can refuse a call comes before anything is written (tests/test_schema.py).
--@@GENERATED_HOT@@

-- The start of every call. In a FUNCTION library (leasing/scripts.py) the code above
-- and lib() are built once per library load, not once per call: what depends on the
-- call is set here, and every function of the library sees it.
local function enter_call(name, prefix)
  SCRIPT, PREFIX, woken, joined, deferred, ending, logged, finished = name, prefix, nil, nil, nil, nil, nil, nil
  NOW = now_ms()
  --@@GENERATED_BIND@@
end

-- The log's unit is the call: every event a call writes goes into one stream entry, the
-- events' msgpack maps back to back in its field 'e', in the order they were written
-- (core/codec.py decode_entry reads it). One XADD per call instead of one per event: the
-- XADDs were a tenth of the server's work per action and each carried ~80 bytes of AOF
-- framing (server_work --variant no_xadd). An entry is also what the call did atomically.
-- flush_log() appends what is pending and returns the entry's id (nil if nothing was).
-- Events are always replicated and written to the AOF, also at the end of a call that keeps
-- its own writes out of them (renew.lua's on-time renewals are soft state: set_repl NONE).
-- The call's events are encoded here, together: one msgpack array of their maps, whose header
-- is cut off, leaves the maps back to back. (Encoding each as it was emitted cost a buffer and
-- an interned string per event: 0.9x the encoding work, server_work --phases.) An event is
-- not changed after emit() collects it.
local function flush_log()
  if logged == nil then return nil end
  local events = logged
  logged = nil
  local packed = cmsgpack.pack(events)
  local kind = string.byte(packed)
  local header = (kind == 0xdc and 3) or (kind == 0xdd and 5) or 1   -- array 16, array 32, fixarray
  redis.set_repl(redis.REPL_ALL)
  return redis.call('XADD', STREAM, '*', 'e', string.sub(packed, header + 1))
end
-- One command over many arguments for one key (ZADD pairs, ZREM members), in chunks of 1000:
-- unpack has a stack limit.
local function call_chunked(command, key, args)
  for i = 1, #args, 1000 do
    redis.call(command, key, unpack(args, i, math.min(i + 999, #args)))
  end
end
-- A finished run enters its namespace's done index (``key``, done_key; retention reads it),
-- scored by the time it finished. Collected, and added in one ZADD per namespace when the call
-- ends: a ZADD per completed run was one command in twelve per action. Nothing reads the
-- index in a call that finishes runs (retire.lua only removes runs already finished).
local function finish_later(key, run)
  if finished == nil then finished = {keys = {}} end
  local args = finished[key]
  if args == nil then args = {}; finished[key] = args; finished.keys[#finished.keys + 1] = key end
  args[#args + 1], args[#args + 2] = NOW, run
end
local function flush_finished()
  if finished == nil then return end
  local f = finished
  finished = nil
  redis.set_repl(redis.REPL_ALL)
  for _, key in ipairs(f.keys) do call_chunked('ZADD', key, f[key]) end
end
-- The end of every call, ok or not: a script that fails half-way (a bug, or a command the
-- server refused after the first write) keeps what it wrote, so its events are appended too
-- and the log still says everything the projections do. Then the error goes on as it was.
-- (The done index goes first, protected: whatever it meets, the events still reach the log.)
local function finish_call(ok, ...)
  local done_ok, done_err = pcall(flush_finished)
  flush_log()
  if not ok then error((...), 0) end
  if not done_ok then error(done_err, 0) end
  return ...
end

-- Everything but the renewal hot path lives in lib(), built on first use: with EVAL a
-- script's prelude runs on every call, and building these closures and tables
-- costs more than renewing a lease (measured: ~3.4 us per call). In the FUNCTION
-- library it is built once per library load.
local lib_ = nil
local function lib()
  if lib_ then return lib_ end
  -- Globals the library calls per event (the generated checks call type() per field): upvalues
  -- are read without a lookup in the globals table.
  local type, tostring, tonumber = type, tostring, tonumber
  --@@GENERATED_TABLES@@
  local function nz(v) if v == false or v == nil then return '' end return v end

  -- Read hash fields into a table keyed by name. A missing field reads as its
  -- default ('0' for numbers, '' for text fields, TEXT), except phase: missing = no such key.
  -- (The reply table itself is returned, its values also keyed by name: one table fewer.)
  local function hget(key, ...)
    local names = {...}
    local vals = redis.call('HMGET', key, ...)
    for i = 1, #names do
      local name, v = names[i], vals[i]
      if not v and name ~= 'phase' then
        if TEXT[name] then v = '' else v = '0' end
      end
      vals[name] = v
    end
    return vals
  end

  -- As core/fold.py: events that move only a run, and those that move either when they name no action.
  local function is_run_event(ev)
    local kind = SUBJECT[ev.type]
    return kind == 'run' or (kind == 'both' and (ev.action == nil or ev.action == ''))
  end

  -- Projection updates, one per event type, generated from the effects each
  -- event declares (core/events.py PROJECT): each appends the hash fields to set to ``f``
  -- (which holds the phase already) and returns it (counters it increments itself); emit()
  -- writes them in one HSET.
  local ON, ON_RUN, ON_SCHEDULE, ON_SETTINGS, ON_TRIGGER = {}, {}, {}, {}, {}
  -- Append a field to set: numbers as exact integer text, nil as '' (a missing value).
  local function put(f, name, v)
    if v == nil then v = '' elseif type(v) == 'number' then v = S(v) end
    f[#f + 1], f[#f + 2] = name, v
  end
  -- The first argument present and not empty, or nil (FirstOf: the field keeps its value).
  local function first(...)
    for i = 1, select('#', ...) do
      local v = select(i, ...)
      if v ~= nil and v ~= '' then return v end
    end
  end
  -- The generated handlers write each field in a statement of its own (luagen.py), integers
  -- with fmt('%d', v): exact for every integer the event check lets through. Fields at their
  -- default ('' or 0) are not stored when a subject is created: readers treat a missing field
  -- as its default (hget above, query.py, replay.verify), and a 28-field HSET costs more than
  -- the rest of a submit.
  local fmt = string.format
  -- Where the server prints every integral Lua number of the exact range of a double exactly
  -- (Valkey and Redis 7.2+: an integer printer; Redis 7.0: '%.17g'), the handlers pass integers
  -- as numbers: string.format('%d') cost a twentieth of a lease's server work (callgrind). A
  -- server that prints with fpconv_dtoa alone writes 4000000000000000 as 4e+15: there
  -- (INT_TEXT) they are made text here. Asked once per library load.
  local INT_TEXT = redis.pcall('ECHO', 4000000000000000) ~= '4000000000000000'
    or redis.pcall('ECHO', 9007199254740991) ~= '9007199254740991'
  --@@GENERATED_HANDLERS@@

  -- A run has no hash of its own: it lives on its root action a0's (root_key). Its phase is
  -- a0's once a0 has ended (a0's end is the run's: IMPLIES_RUN), else running; its own fields
  -- (core/fold.py RUN_ON_ROOT) are a0's fields too, under their names there. (A run hash cost
  -- a tenth of the server's work per action and 200 bytes per run: server_work, capacity.)
  local function root_key(ns, run) return akey(ns .. '/' .. run .. '/a0') end
  local function run_phase(a0_phase)
    if not a0_phase then return NO_PHASE end
    if TERMINAL[a0_phase] then return a0_phase end
    return 'running'
  end

  -- The phase an event moves its subject to (nil if the table forbids it), its key,
  -- its current phase, its projection handler and what the subject is ('action', 'run' or
  -- nil for the others). No writes. ``cur`` may be passed when the caller has just read it
  -- (NO_PHASE = does not exist), saving a read.
  local function next_phase(ev, cur)
    local key, table_, handlers, kind
    local subject = SUBJECT[ev.type]
    if subject == 'settings' then
      key, table_, handlers = setkey(ev.ns), SETTINGS_T, ON_SETTINGS
    elseif subject == 'trigger' then
      key, table_, handlers = tkey(ev.ns .. '/' .. ev.trigger), TRIGGER_T, ON_TRIGGER
    elseif subject == 'schedule' then
      key, table_, handlers = skey(ev.ns .. '/' .. ev.schedule), SCHEDULE_T, ON_SCHEDULE
    elseif subject == 'run' or (subject == 'both' and (ev.action == nil or ev.action == '')) then
      key, table_, handlers, kind = root_key(ev.ns, ev.run), RUN_T, ON_RUN, 'run'
      if cur == nil then cur = run_phase(redis.call('HGET', key, 'phase')) end
    else
      key, table_, handlers, kind = akey(ev.ns .. '/' .. ev.run .. '/' .. ev.action), ACTION_T, ON, 'action'
    end
    if cur == nil then cur = redis.call('HGET', key, 'phase') or NO_PHASE end
    local moves = table_[cur]
    local nxt = moves and moves[ev.type]
    if nxt == FROM_PAYLOAD then
      if TERMINAL[ev.phase] then nxt = ev.phase else nxt = nil end
    end
    return nxt, key, cur, handlers[ev.type], kind
  end

  -- An event's fields against its definition (EVF, from core/events.py): the reason it
  -- may not be written, or nil. Readers decode exactly these types.
  local function bad_event(ev)
    local check = EVF[ev.type]
    if check == nil then return 'unknown event type ' .. tostring(ev.type) end
    local ok, why = pcall(check, ev)   -- a field neither number nor string raises (luagen.py _field_check)
    if not ok then return ev.type .. ': a field is neither a number nor a string (' .. tostring(why) .. ')' end
    return why
  end

  local abort_actions, abort_descendants  -- defined after emit (they emit, and emit calls them)

  -- Fair share (docs/operations.md, "Fair share and limits"). Each queue keeps, per partition,
  -- a rotation (fair_key) of the namespaces that have queued work, each with a pass (virtual
  -- time): acquire takes from the lowest pass and advances it by 1/weight per lease (stride
  -- scheduling). A namespace (re)joins at the rotation's lowest pass (or, the rotation empty, the
  -- pass of the queue's last pick: 'vt'), or where it left if that is later: idle time earns no
  -- credit, and a newcomer is next in turn, not behind the backlog.
  local function fair_pass(ns, queue)
    local low = redis.call('ZRANGE', fair_key(queue), 0, 0, 'WITHSCORES')[2]
    local s = redis.call('HMGET', share_key(queue), 'p:' .. ns, 'vt')
    -- 'vt' (the pass the last pick reached) only stands in for an empty rotation: past the
    -- lowest pass of a rotation it would put the newcomer behind those already waiting.
    if low then return math.max(tonumber(low), tonumber(s[1] or '0')) end
    return math.max(tonumber(s[1] or '0'), tonumber(s[2] or '0'))
  end
  -- True the first time the pair (a, b) is marked in ``seen``, false after: nested tables, so
  -- that asking (once per run of a batched submit) builds no key string.
  local function first_time(seen, a, b)
    local row = seen[a]
    if row == nil then row = {}; seen[a] = row elseif row[b] then return false end
    row[b] = true
    return true
  end
  local function fair_join(ns, queue)
    if joined == nil then joined = {} end   -- per call (enter_call resets it)
    if not first_time(joined, queue, ns) then return end
    local fq = fair_key(queue)
    if not redis.call('ZSCORE', fq, ns) then redis.call('ZADD', fq, fair_pass(ns, queue), ns) end
  end
  local wake  -- defined with enqueue

  -- The running counters (running_key) follow the action's phase inside emit(), so every path
  -- into and out of 'running' (lease; complete, fail, timeout, reap, abort, release) counts,
  -- in the same script as its event. A counter at 0 is deleted (and never goes below it: leases
  -- granted before the counters existed; lessor fairshare sync recounts).
  -- acquire counts its own leases, once per namespace per call (defer_counts): it knows their
  -- queue, and a HGET and two HINCRBY per lease cost a third of the rest of a lease (measured).
  -- (deferred is per call: enter_call resets it)
  -- complete counts the leases that end the same way (defer_ends): the caller names each
  -- action's queue (ending.queue_of[key], from the hash it has just read), and flush_ends
  -- applies the counts once per queue and namespace at the end of the call: an HGET, two
  -- HINCRBY and an HDEL per action were a seventh of a completion's server work (callgrind).
  -- Nothing in the same call reads the counts in between, so the result is the same.
  local function defer_counts() deferred = {}; return deferred end
  local function defer_ends() ending = {queue_of = {}, by = {}, order = {}}; return ending end
  local apply_running
  local function count_running(key, ns, by)
    if by > 0 and deferred then deferred[ns] = (deferred[ns] or 0) + by; return end
    local queue = ending and ending.queue_of[key]
    if queue then
      local group = queue .. ' ' .. ns   -- (ids have no spaces)
      if not ending.by[group] then
        ending.by[group] = 0
        ending.order[#ending.order + 1] = {queue, ns, group}   -- applied in a fixed order
      end
      ending.by[group] = ending.by[group] + by
      return
    end
    apply_running(redis.call('HGET', key, 'queue'), ns, by)
  end
  local function flush_ends()
    local e = ending
    if not e then return end
    ending = nil
    for _, g in ipairs(e.order) do
      if e.by[g[3]] ~= 0 then apply_running(g[1], g[2], e.by[g[3]]) end
    end
  end
  apply_running = function(queue, ns, by)
    local rk = running_key(queue)
    for _, field in ipairs({ns, '*'}) do
      if redis.call('HINCRBY', rk, field, by) <= 0 then redis.call('HDEL', rk, field) end
    end
    if by > 0 then return end
    -- Held back by a limit (acquire marked it): a namespace that stepped aside rejoins the
    -- rotation, and the queue's waiting workers are woken. One HDEL when nothing was held back.
    if redis.call('HDEL', share_key(queue), 'blocked', 'parked:' .. ns) > 0 then
      if redis.call('ZCARD', qkey(ns, queue)) > 0 then fair_join(ns, queue) end
      wake('*', queue)
      wake(ns, queue)
    end
  end

  -- A run's own events are implied by its root action's (the log writes and encodes two events
  -- fewer per run: about a twentieth of the server's work per action, callgrind). On the wire,
  -- version IMPLIES_RUN marks a0's action_created that also created its run (the run's own
  -- field, idempotency_key, rides along) and a0's move to a terminal phase that also completed
  -- its run (run_phase rides along). Readers expand them (core/codec.py decode_entry), so every
  -- reader sees run_created and run_completed where they always were.
  local IMPLIES_RUN = 2

  -- Log the event (appended with the call's others when it ends: flush_log) and update its
  -- projection. ``cur``: the subject's current phase if the caller just read it (optional).
  -- Correct by construction: the event is checked against its definition, its
  -- transition and its handler are resolved, and only then is anything written
  -- (the log, then the projection), so an event type without a handler, an
  -- illegal transition or a mistyped field can never reach the stream.
  -- ``also`` (optional): a hash field and its value the caller writes to the subject with
  -- the projection, in the same HSET (one call fewer; ended() marks done this way).
  -- ``implied``: a run event implied by its a0 event (see IMPLIES_RUN): checked and applied
  -- to the projection like any other, but not written to the log itself.
  local function emit(ev, cur, also, also_value, implied)
    if ev.v == nil then ev.v = 1 end
    ev.ts = NOW
    -- An implied event is not checked again: its fields are its a0 event's (checked, with the
    -- run's own idempotency_key riding along) and a phase from the transition table.
    local bad = not implied and (bad_event(ev) or ev.v == IMPLIES_RUN and ev.idempotency_key ~= nil
      and type(ev.idempotency_key) ~= 'string' and 'idempotency_key must be a string')
    if bad then error('lessor bug: refusing to write an event: ' .. bad) end
    local nxt, key, handler, kind
    nxt, key, cur, handler, kind = next_phase(ev, cur)
    local is_action = kind == 'action'
    if nxt == nil then
      error('lessor bug: illegal transition ' .. tostring(cur) .. ' --' .. ev.type .. '--> ? for ' .. key)
    end
    if handler == nil then error('lessor bug: no projection handler for ' .. ev.type) end
    if kind == 'run' and ev.type == 'run_completed' and not implied then
      -- The run lives on a0's hash: its end is a0's, and emit writes this event for it.
      error("lessor bug: run_completed is implied by its root action's end, never emitted on its own")
    end
    if is_action and (cur == 'running') ~= (nxt == 'running') then
      count_running(key, ev.ns, nxt == 'running' and 1 or -1)
    end
    local ends = is_action and TERMINAL[nxt] and not TERMINAL[cur]
    local ends_run = ends and ev.action == 'a0'
    if not implied then
      if ends_run then ev.v, ev.run_phase = IMPLIES_RUN, nxt end
      if logged == nil then logged = {ev} else logged[#logged + 1] = ev end   -- encoded by flush_log()
    end
    if nxt == RETIRED then   -- the subject leaves the state (its actions: the caller, retire.lua)
      redis.call('DEL', key)
      return
    end
    if kind == 'run' then
      -- On a0's hash: the run's own fields only (its phase is a0's). An implied event writes
      -- nothing: what it carries rides in its a0 event's HSET (create_run passes the
      -- idempotency key along; the phase a run completes with is a0's).
      if not implied then
        local fields = handler(key, ev, {})
        if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
      end
      return
    end
    -- The phase first: a small hash is a listpack, its fields in the order first written and
    -- found by a scan from its start, and the phase is what nearly every read asks for first
    -- (last, it cost a scan of the whole hash: 0.98x the instructions per action, server_work).
    local fields = handler(key, ev, {'phase', nxt})
    if also then fields[#fields + 1], fields[#fields + 2] = also, also_value end
    redis.call('HSET', key, unpack(fields))
    if ends then
      if ends_run then
        emit({type = 'run_completed', ns = ev.ns, run = ev.run, phase = nxt}, 'running', nil, nil, true)
        finish_later(done_key(ev.ns), ev.run)   -- retention finds finished runs there
      end
      -- Structured concurrency: an action that ends takes its live descendants with it
      -- (the root: every action of the run), so no child outlives its parent's deadline.
      abort_descendants(ev.ns, ev.run, ev.action, nxt)
    end
  end

  -- Abort live actions of a run: the given refs (action ids), or all of the run's.
  -- Queued ones become aborted now; running ones are marked and hear it from their
  -- next renewal. Returns {aborted now, abort requested}.
  abort_actions = function(ns, run, actions, reason)
    local run_ref = ns .. '/' .. run
    if actions == nil then
      actions = redis.call('SMEMBERS', run_actions_key(run_ref))
      table.insert(actions, 1, 'a0')
    end
    local now_aborted, requested = 0, 0
    for _, action in ipairs(actions) do
      local ref = run_ref .. '/' .. action
      local h = redis.call('HMGET', akey(ref), 'phase', 'aborting', 'queue')
      if h[1] == 'queued' then
        redis.call('ZREM', qkey(ns, h[3]), ref)
        redis.call('ZREM', DELAYED, ref)
        emit({type = 'action_aborted', ns = ns, run = run, action = action, reason = reason})
        now_aborted = now_aborted + 1
      elseif h[1] == 'running' and h[2] ~= '1' then
        emit({type = 'abort_requested', ns = ns, run = run, action = action, reason = reason})
        requested = requested + 1
      end
    end
    return {now_aborted, requested}
  end

  -- The live descendants of an action that just ended (children are kept per parent).
  abort_descendants = function(ns, run, action, phase)
    local children
    if action == 'a0' then
      children = redis.call('SMEMBERS', run_actions_key(ns .. '/' .. run))
    else
      children = redis.call('SMEMBERS', children_key(ns .. '/' .. run .. '/' .. action))
    end
    if #children > 0 then
      abort_actions(ns, run, children, 'parent ' .. action .. ' ended (' .. phase .. ') before this action')
    end
  end

  -- Put a queued action on its queue (priority first, then FIFO), and wake an idle
  -- worker: the queue's wake list holds at most one token, pushed once per queue per
  -- call; an idle worker BLPOPs it instead of polling. A token no one pops costs nothing.
  -- Workers of every namespace ('*', by fair share) wait on the queue's '*' list.
  wake = function(ns, queue)
    if woken == nil then woken = {} end   -- per call (enter_call resets it)
    if not first_time(woken, queue, ns) then return end
    local key = wake_key(ns, queue)
    if redis.call('LLEN', key) == 0 then redis.call('RPUSH', key, '1') end
  end
  -- Sorted-set adds a batched script collects (``adds``, from new_adds) and writes at its
  -- end with add_all: one ZADD per key and one INCRBY of SEQ per call instead of a ZADD
  -- (and an INCR) per item. Parallel arrays: key, score, member, and whether the score
  -- still needs its queue sequence number added.
  local function new_adds() return {k = {}, s = {}, m = {}, q = {}} end
  local function add_later(adds, key, score, member, needs_seq)
    local n = #adds.k + 1
    adds.k[n], adds.s[n], adds.m[n], adds.q[n] = key, score, member, needs_seq
  end
  local function add_all(adds)
    local queued = 0
    for i = 1, #adds.k do if adds.q[i] then queued = queued + 1 end end
    local seq = queued > 0 and redis.call('INCRBY', SEQ, queued) - queued or 0
    local by_key, keys = {}, {}
    for i = 1, #adds.k do
      local score = adds.s[i]
      if adds.q[i] then seq = seq + 1; score = seq + score end
      local args = by_key[adds.k[i]]
      if args == nil then args = {}; by_key[adds.k[i]] = args; keys[#keys + 1] = adds.k[i] end
      args[#args + 1], args[#args + 2] = score, adds.m[i]
    end
    for _, key in ipairs(keys) do call_chunked('ZADD', key, by_key[key]) end
  end

  -- ``adds`` (optional): collect the queue entry for add_all instead of writing it now.
  local function enqueue(ref, ns, queue, priority, adds)
    if adds then
      add_later(adds, qkey(ns, queue), -tonumber(priority) * 1e12, ref, true)
    else
      local seq = redis.call('INCR', SEQ)
      redis.call('ZADD', qkey(ns, queue), seq - tonumber(priority) * 1e12, ref)
    end
    fair_join(ns, queue)
    wake(ns, queue)
    wake('*', queue)
  end

  -- Create a run and queue its root action a0 (what submit does for one run without a cache
  -- hit; a schedule's tick does the same). The caller has checked every argument.
  -- ``adds`` (optional): the run index entry is collected for add_all.
  local function create_run(ns, run, task, queue, inputs, idempotency_key, sys_retries, user_retries,
                            backoff_ms, priority, timeout_ms, cache_key, adds)
    emit({type = 'run_created', ns = ns, run = run, task = task, queue = queue,
      inputs = inputs, idempotency_key = idempotency_key}, NO_PHASE, nil, nil, true)
    emit({type = 'action_created', v = IMPLIES_RUN, ns = ns, run = run, action = 'a0', task = task,
      queue = queue, inputs = inputs, sys_retries = sys_retries, user_retries = user_retries,
      backoff_ms = backoff_ms, priority = priority, timeout_ms = timeout_ms, cache_key = cache_key,
      parent_token = 0, idempotency_key = idempotency_key}, NO_PHASE,
      idempotency_key and RUN_ON_ROOT.idempotency_key, idempotency_key)   -- the run's own field, on a0's
    if adds then add_later(adds, runs_key(ns), NOW, run) else redis.call('ZADD', runs_key(ns), NOW, run) end
  end

  -- Record a refused write. Every refused write is recorded (renewals: once per token).
  local function reject(ref, h, kind, token, worker)
    local ns, run, action = string.match(ref, '^([^/]+/[^/]+)/([^/]+)/([^/]+)$')
    return emit({type = 'report_rejected', ns = ns, run = run, action = action, kind = kind,
      token = tonumber(token), worker = worker, current_token = tonumber(h.token or '0') or 0})
  end

  -- The grace rule, written once: a lease's expiry is deadline + grace on the server
  -- clock, and it is dead strictly after it (at the expiry itself it still holds).
  -- ``h`` holds the action's deadline_ms and grace_ms (hash fields, text or numbers).
  local function lease_expiry(h) return tonumber(h.deadline_ms) + tonumber(h.grace_ms) end
  local function lease_dead(h) return NOW > lease_expiry(h) end

  -- The token check, written once: only the current token of a running action owns it.
  local function check_token(h, token) return h.phase == 'running' and h.token == token end

  -- Expire the lease of a running action (judged already: deadline + grace passed),
  -- then decide: aborted if an abort was requested, requeued while the system retry
  -- budget lasts, failed with a reason that says so when it is spent.
  local function expire_lease(ref)
    local key = akey(ref)
    local h = hget(key, 'phase', 'ns', 'run', 'action', 'attempt', 'token', 'worker',
      'deadline_ms', 'grace_ms', 'sys_left', 'user_left', 'aborting', 'expirations', 'queue', 'priority')
    redis.call('ZREM', LEASES, ref)
    redis.call('ZREM', TIMEOUTS, ref)
    if h.phase ~= 'running' then return false end
    local base = {ns = h.ns, run = h.run, action = h.action}
    emit({type = 'lease_expired', ns = h.ns, run = h.run, action = h.action,
      attempt = tonumber(h.attempt), token = tonumber(h.token), worker = h.worker,
      deadline_ms = tonumber(h.deadline_ms), grace_ms = tonumber(h.grace_ms)})
    local sys_left = tonumber(h.sys_left)
    local times = tonumber(h.expirations) + 1
    if h.aborting == '1' then
      base.type, base.reason = 'action_aborted', 'aborted; lease expired before the worker confirmed'
    elseif sys_left > 0 then
      base.type, base.reason = 'action_requeued', 'lease_expired'
      base.sys_left, base.user_left, base.ready_at_ms = sys_left - 1, tonumber(h.user_left), 0
      base.error = 'lease expired for action ' .. h.action .. ' (attempt ' .. h.attempt ..
        ', worker ' .. h.worker .. '); retrying on another worker'
    else
      base.type, base.reason = 'action_failed', 'lease_expired'
      base.error = 'lease expired ' .. times .. ' times; last worker ' .. h.worker ..
        '; system retry budget spent'
    end
    emit(base)
    if base.type == 'action_requeued' then enqueue(ref, h.ns, h.queue, h.priority) end
    return base.type  -- action_requeued (a failover), action_failed or action_aborted
  end

  -- The server's epoch: its run_id (changes on every restart) and its
  -- master_replid (changes on every promotion, also when the same process is
  -- demoted and promoted again without a restart, as Sentinel and Cluster do
  -- to a partitioned old primary). Either change may come with lost writes:
  -- an AOF tail that was never fsynced, or a replication lag window.
  local function server_epoch()
    local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?'
    local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or '?'
    return run_id .. ':' .. replid
  end

  -- etcd's Promote(extend): on the first expiry-judging script of a new epoch,
  -- every live lease of this partition gets at least a full ttl from now before
  -- anything may expire. A renewal lost in the fsync or replication window
  -- (renewals are soft state) then cannot let the reaper take over from a
  -- worker that still believes it owns the lease. Costs one pass over the
  -- partition's live leases once per epoch (each extension logged as lease_extended);
  -- two INFO calls otherwise.
  -- Returns true if it extended (a new epoch), false if the epoch was known.
  local function ensure_epoch()
    local epoch = server_epoch()
    if redis.call('GET', EPOCH) == epoch then return false end
    local refs = redis.call('ZRANGE', LEASES, 0, -1)
    for _, ref in ipairs(refs) do
      local h = hget(akey(ref), 'phase', 'deadline_ms', 'ttl_ms', 'grace_ms', 'ns', 'run', 'action',
        'attempt', 'token', 'worker')
      local deadline = NOW + tonumber(h.ttl_ms)
      if h.phase == 'running' and deadline > tonumber(h.deadline_ms) then
        -- Logged, so the log explains a lease that outlived its last renewal's deadline.
        emit({type = 'lease_extended', ns = h.ns, run = h.run, action = h.action,
          attempt = tonumber(h.attempt), token = tonumber(h.token), worker = h.worker,
          deadline_ms = deadline}, 'running')
        redis.call('ZADD', LEASES, lease_expiry({deadline_ms = deadline, grace_ms = h.grace_ms}), ref)
      end
    end
    redis.call('SET', EPOCH, epoch)
    return true
  end

  -- Fencing tokens of this partition. Strictly increasing, never reused,
  -- also across a restart or a failover that lost the last writes:
  --   * floor: every token is at least now_ms * 1024, so a token issued before a
  --     crash (at most 1024 per ms) is below any issued after it;
  --   * epoch: when the server's epoch (run_id + master_replid) differs from the
  --     one stored with the counter, the counter jumps by 2^30 plus 1024 per ms
  --     elapsed since the counter was last written (``at``), and to at least
  --     now_ms * 1024 + 2^30. The fixed part covers a lost window without a jump
  --     of its own (the usual failover: whatever the new primary's clock says)
  --     and clocks that did not move or moved back; the elapsed part orders two
  --     histories that each jumped from the same surviving counter (a lost window
  --     that made its own jump, then a rollback and another new epoch) by the
  --     time of their jumps.
  -- The remaining bound: tokens repeat or go back only if a lost window issued
  -- more than 2^30 tokens in one partition, or if it made its own epoch jump and
  -- the next jump comes less than (its tokens / 1024) ms later on the new
  -- primary's clock. Each epoch moves the counter at most 2^30 past the clock
  -- floor: millions of epochs before tokens leave the exact range of a double.
  -- Returns next() and save(): tokens are handed out in memory and the counter
  -- is written once per script call (an acquire grants many leases at once).
  local function token_source()
    local epoch, last = nil, nil
    local function next()
      if last == nil then  -- first token of this call: read the counter and the epoch
        epoch = server_epoch()
        -- A partition's first lease records the epoch it was granted in: a first reap
        -- then knows the epoch and extends nothing, unless the server changed since.
        if redis.call('EXISTS', EPOCH) == 0 then ensure_epoch() end
        local t = redis.call('HMGET', TOKENS, 'last', 'epoch', 'at')
        last = tonumber(t[1] or '0')
        if t[2] ~= epoch then
          local elapsed = math.max(0, NOW - (tonumber(t[3] or '') or NOW))
          last = math.max(last + 1073741824 + elapsed * 1024, NOW * 1024 + 1073741824)
        end
      end
      last = math.max(last + 1, NOW * 1024)
      return last
    end
    local function save()
      if last ~= nil then redis.call('HSET', TOKENS, 'last', S(last), 'epoch', epoch, 'at', S(NOW)) end
    end
    return next, save
  end

  -- The guard of every fenced write (complete, fail, release, child submission):
  -- only the current token of a running action may write. Anything else is
  -- refused and recorded as report_rejected; a lease already past deadline +
  -- grace on the server clock is expired first (after ensure_epoch, so not on a
  -- new epoch), so its late report is refused too.
  -- Returns the action's fields and a code: OK owner, STALE, UNKNOWN, and REPEATED
  -- for a write repeated with the token and kind that already ended the attempt
  -- (a retried call whose reply was lost, or that was not confirmed durable:
  -- nothing to do, nothing to refuse). The scripts mark that with ended().
  local function fence(ref, token, worker, kind, ...)
    local key = akey(ref)
    local h = hget(key, 'phase', 'token', 'deadline_ms', 'grace_ms', ...)
    if not h.phase then return h, UNKNOWN end
    -- Only a non-owner can be a repeat (an attempt that ended left 'running' or got a new
    -- token), so the owner's usual call does not read '_ended' (a missing field costs HMGET a
    -- scan of the whole hash).
    if not check_token(h, token) and (redis.call('HGET', key, '_ended') == token .. ':' .. kind
        or (kind == 'complete' and h.phase == 'succeeded' and h.token == token)) then
      -- A repeat writes too: WAIT/WAITAOF cover the writes of their own connection up to
      -- its last one, and the first try may have gone out on another connection. This
      -- write comes after it in the replication stream, so waiting for it covers both.
      redis.call('HINCRBY', key, '_repeats', 1)
      return h, REPEATED
    end
    if check_token(h, token) and lease_dead(h) and not ensure_epoch() then
      expire_lease(ref)
      h.phase = 'expired'
    end
    if not check_token(h, token) then
      reject(ref, h, kind, token, worker)
      return h, STALE
    end
    return h, OK
  end

  -- Mark the attempt of ``token`` as ended by ``kind`` (complete, fail, release),
  -- so that the same call repeated is answered as done rather than refused.
  local function ended(ref, token, kind)
    redis.call('HSET', akey(ref), '_ended', token .. ':' .. kind)
  end

  -- The boundary, again in Lua (lessor/core/limits.py is the Python side): a
  -- foreign client may call a script directly, and one bad value written would
  -- poison the log for every reader. Each returns an error text, or nil if fine.
  -- Scripts check every argument with these before their first write.
  local SAFE_INT = 9007199254740991
  local function bad_int(name, v, lo, hi)
    local n = tonumber(v)
    if not v or not string.match(v, '^%-?%d+$') or not n or n < lo or n > hi then
      return name .. ' must be an integer within ' .. S(lo) .. '..' .. S(hi) .. ', got ' .. string.sub(tostring(v), 1, 40)
    end
  end
  local function bad_id(name, v)
    if not v or #v > 63 or not string.match(v, '^[%w][%w_%.%-]*$') then
      return name .. ' must be 1-63 letters, digits, _ . -, got ' .. string.sub(tostring(v), 1, 80)
    end
  end
  -- A fencing token: digits only, and exact as a double (tokens are written into events).
  -- Digit strings of one length compare as their numbers do, so the bound needs no tonumber
  -- (strtod of a 16-digit token was a few thousand instructions, callgrind).
  local function bad_token(t)
    if not t or #t > 16 or not string.match(t, '^%d+$') or (#t == 16 and t > '9007199254740991') then
      return 'token must be an integer within 0..' .. S(SAFE_INT) .. ', got ' .. string.sub(tostring(t), 1, 40)
    end
  end
  local function bad_ns(v)
    local p, d = string.match(v or '', '^([^/]+)/([^/]+)$')
    if not p or bad_id('project', p) or bad_id('domain', d) then
      return 'namespace must look like project/domain, got ' .. string.sub(tostring(v), 1, 80)
    end
  end
  -- Texts end up as msgpack strings that readers decode as UTF-8: check it (ASCII fast path).
  local function bad_utf8(name, v)
    if not string.find(v, '[\128-\255]') then return nil end
    local i, n = 1, #v
    while i <= n do
      local c = string.byte(v, i)
      local extra = (c < 0x80 and 0) or (c >= 0xC2 and c <= 0xDF and 1) or (c >= 0xE0 and c <= 0xEF and 2)
        or (c >= 0xF0 and c <= 0xF4 and 3) or nil
      if not extra or i + extra > n then return name .. ' must be valid UTF-8' end
      for k = 1, extra do
        local b = string.byte(v, i + k)
        if b < 0x80 or b > 0xBF then return name .. ' must be valid UTF-8' end
      end
      i = i + extra + 1
    end
  end
  local function bad_text(name, v, max)
    if not v or #v > max then return name .. ' must be at most ' .. max .. ' bytes' end
    return bad_utf8(name, v)
  end
  local function bad_bytes(name, v, max)   -- opaque values (inputs, results): only bounded
    if not v or #v > max then return name .. ' must be at most ' .. max .. ' bytes' end
  end
  -- The first error of a list of checks, as a LESSOR_BAD_ARG error reply (nil if none).
  local function refuse(script, ...)
    for i = 1, select('#', ...) do
      local why = select(i, ...)
      if why then return redis.error_reply('LESSOR_BAD_ARG ' .. script .. ': ' .. why) end
    end
  end

  -- A batch packed as one msgpack array (``blob``) of ``count`` items of ``width`` values
  -- each, instead of count * width arguments: redis-py packs every argument in Python,
  -- msgpack packs the whole array in C. Each value is a string, or an integer made exact
  -- text here, so the flat form's checks apply unchanged. Returns the values and their
  -- number, or nil and why not. Reads nothing, writes nothing.
  local function unpack_batch(blob, count, width)
    local n = tonumber(count)
    if not n or n < 1 or n > 1000000 or n % 1 ~= 0 then return nil, 'count must be an integer within 1..1000000' end
    local ok, t, trailing = pcall(cmsgpack.unpack, blob)
    if not ok or type(t) ~= 'table' or trailing ~= nil then return nil, 'values must be one msgpack array' end
    local total = n * width
    if t[total + 1] ~= nil then return nil, 'more values than count * ' .. width end
    for i = 1, total do
      local v = t[i]
      local kind = type(v)
      if kind == 'number' then
        if v % 1 ~= 0 or v > SAFE_INT or v < -SAFE_INT then
          return nil, 'value ' .. i .. ' must be a string or an integer within the exact range of a double'
        end
        t[i] = S(v)
      elseif kind ~= 'string' then
        return nil, 'value ' .. i .. ' must be a string or an integer, got ' .. kind
      end
    end
    return t, total
  end

  -- Split an action ref into ns, run, action.
  local function split_ref(ref)
    return string.match(ref, '^([^/]+/[^/]+)/([^/]+)/([^/]+)$')
  end

  -- Drop a lease from the indexes once its attempt has ended (the timeout index
  -- only holds actions with a timeout; pass timeout_ms when it is known).
  local function end_lease(ref, timeout_ms)
    redis.call('ZREM', LEASES, ref)
    if timeout_ms ~= '0' then redis.call('ZREM', TIMEOUTS, ref) end
  end
  --@@LIB_EXPORTS@@
  return lib_
end
