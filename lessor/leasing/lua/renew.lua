--[[ Renew every lease a worker holds, in one call (the heartbeat hot path).
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, SEQ, STREAM, TIMEOUTS, akey, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] worker id  ARGV[2] ttl_ms  ARGV[3..] pairs: action ref, token
    or, packed (what leasing/client.py sends): ARGV[3] one JSON array of the pairs'
    values, every one a string: ["ref","token","ref","token"]
  Returns: {now_ms, then one code per lease (leasing/codes.py)}:
    0 OK       renewed on time: deadline = now + ttl (no event: the hot path)
    1 RESUMED  renewed inside the grace window: lease_resumed logged with late_ms
    2 ABORTED  the action was aborted: cancel the work (deadline not moved)
    3 STALE    the token is not current (or the lease had already passed
               deadline + grace, in which case it is expired here and now):
               report_rejected logged once per token
    4 UNKNOWN  no such action
  Events: lease_resumed, report_rejected, (lease_expired + decision)
  Cost: an on-time renewal is one HMGET and one HSET, kept out of the AOF and
  replication (soft state, see below). The reap index is not
  touched: its score (deadline + grace at grant time) is a lower bound of the
  expiry, and the reaper re-scores a lease it finds renewed (reap.lua). ]]
local worker, ttl_ms = ARGV[1], tonumber(ARGV[2])
if not ttl_ms or ttl_ms <= 0 or ttl_ms > 86400000 or ttl_ms % 1 ~= 0 then
  return redis.error_reply('LESSOR_BAD_ARG renew needs an integer 0 < ttl_ms <= 1 day')
end
-- The worker id goes into the events a late or stale renewal writes: one check per call.
if #worker > 63 or not string.match(worker, '^[%w][%w_%.%-]*$') then
  return redis.error_reply('LESSOR_BAD_ARG renew: worker must be 1-63 letters, digits, _ . -')
end
-- Packed, the pairs are one argument: redis-py packs each argument in Python and
-- writes it as its own buffer (measured: 0.5 ms of client CPU for a call of 100 flat
-- pairs, two thirds of it packing and writing). JSON, decoded in C by cjson: 0.09 µs
-- a lease here (gmatch over a text: 0.5; cmsgpack: 0.06, but a C client such as
-- redis-benchmark -x, the server's limit in bench heartbeat, cannot send its NULs).
local A, first = ARGV, 3
if #ARGV == 3 then
  local ok, t = pcall(cjson.decode, ARGV[3])
  local bad = not ok or type(t) ~= 'table' or #t % 2 ~= 0
  if not bad then
    for i = 1, #t do
      if type(t[i]) ~= 'string' then bad = true; break end
    end
  end
  if bad then
    return redis.error_reply('LESSOR_BAD_ARG renew: ARGV[3] must be one JSON array of strings: ref, token, ref, token...')
  end
  A, first = t, 1
end
checked()
local new_deadline = NOW + ttl_ms
-- On-time renewals are soft state: they stay out of the AOF and the replication
-- stream (measured: 0.79x the server CPU per renewal with appendfsync everysec).
-- A renewal lost in a crash or failover is harmless: the first script of a new
-- epoch gives every live lease a full ttl (ensure_epoch). Events are replicated
-- (slow_path switches replication back on before it writes anything).
redis.set_repl(redis.REPL_NONE)
local out = {NOW}
-- Deadlines are compared as text where they have as many digits as the clock (always, until
-- the year 2286): equal-length digit strings order as their numbers do, and tonumber (strtod)
-- was about a tenth of an on-time renewal's server work (callgrind, server_work --phases).
local now_text = string.format('%d', NOW)
local now_digits = #now_text

-- Everything off the hot path: late, aborted, stale, unknown, expired.
local function slow_path(ref, token, key, h)
  local L = lib()
  redis.set_repl(redis.REPL_ALL)
  local lease = {phase = h[1], token = h[2], deadline_ms = h[3]}
  if not lease.phase then return UNKNOWN end
  local deadline = tonumber(h[3])
  if L.check_token(lease, token) then
    lease.grace_ms = redis.call('HGET', key, 'grace_ms') or '0'
    if L.lease_dead(lease) and L.ensure_epoch() then
      -- A new epoch: every live lease was just extended (a renewal of ours may have
      -- been lost with the old epoch's tail); this one is on time again.
      return OK
    elseif L.lease_dead(lease) then
      L.expire_lease(ref)   -- dead on the server clock even if no reaper came yet
    elseif h[4] == '1' then
      return ABORTED
    else
      local ns, run, action = L.split_ref(ref)
      L.emit({type = 'lease_resumed', ns = ns, run = run, action = action,
        attempt = tonumber(redis.call('HGET', key, 'attempt')), token = tonumber(token),
        worker = worker, late_ms = NOW - deadline, deadline_ms = NOW + ttl_ms})
      return RESUMED
    end
  end
  if L.bad_token(token) then return STALE end  -- not a token at all: refused, nothing to record
  if redis.call('HSETNX', key, '_rej:' .. token, 1) == 1 then
    L.reject(ref, {token = h[2]}, 'renew', token, worker)
  end
  return STALE
end

for i = first, #A, 2 do
  local ref, token = A[i], A[i + 1]
  local key = akey(ref)
  local h = redis.call('HMGET', key, 'phase', 'token', 'deadline_ms', 'aborting')
  -- The hot path inlines the on-time test (not the grace rule: a renewal inside the
  -- grace window takes the slow path, is RESUMED and logged): no library, no tables.
  local deadline = h[3]
  if h[1] == 'running' and h[2] == token and h[4] ~= '1' and (#deadline == now_digits and deadline >= now_text
      or #deadline ~= now_digits and NOW <= tonumber(deadline)) then
    redis.call('HSET', key, 'deadline_ms', new_deadline)
    out[#out + 1] = OK
  else
    out[#out + 1] = slow_path(ref, token, key, h)
    redis.set_repl(redis.REPL_NONE)
  end
end
return out
