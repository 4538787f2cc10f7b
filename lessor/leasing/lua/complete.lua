--[[ Accept attempts' results: the fenced commit of their outputs, batched.
  KEYS[1]  partition prefix (string)
  Touches: DELAYED, EPOCH, LEASES, SEQ, STREAM, TIMEOUTS, akey, cache_hash, cache_times, children_key, done_key, fair_key, qkey, run_actions_key, running_key, setkey, share_key, skey, tkey, wake_key
  ARGV[1] worker id  ARGV[2..] triples: action ref, token, result (bytes, may be "")
    or, packed (what leasing/client.py sends): ARGV[2] one msgpack array of those
    triples' values, ARGV[3] the number of triples; see unpack_batch
  Returns: {code, current token} per triple: 0 accepted (or already accepted with this
    token: a retried call whose reply was lost), 3 stale (refused, recorded), 4 unknown
  Events: action_succeeded (+ run_completed for a0), or report_rejected
  Cache: an action submitted with a cache key also stores its result in the
  partition's cache hash (cache:<ns>, field = cache key), in this same fenced
  script, so only the current owner's output can ever be cached. ]]
--@@USES_LIB@@ (binds emit, enqueue, fence, ... from the prelude's lib())
local worker = ARGV[1]
local A, o, n = ARGV, 1, #ARGV - 1   -- the triples are A[o + 1 .. o + n]
if #ARGV == 3 then
  local why
  A, why = unpack_batch(ARGV[2], ARGV[3], 3)
  if not A then return refuse('complete', why) end
  o, n = 0, why
end
local bad = refuse('complete', bad_id('worker', worker), n % 3 ~= 0 and 'triples of ref, token, result')
if bad then return bad end
-- Validate before any write: a token that is not an integer would write an undecodable event.
for i = o + 1, o + n, 3 do
  local bad_result = bad_bytes('result', A[i + 2] or '', 65536)
  if bad_result then return redis.error_reply('LESSOR_BAD_ARG complete: ' .. bad_result) end
  if bad_token(A[i + 1]) then
    return redis.error_reply('LESSOR_BAD_ARG complete: token of ' .. tostring(A[i]) .. ' must be an integer')
  end
end
checked()
local out, ended_refs = {}, {}
local ends = defer_ends()   -- running counts: once per queue and namespace, after the loop
for i = o + 1, o + n, 3 do
  local ref, token, result = A[i], A[i + 1], A[i + 2]
  local token_n = tonumber(token)
  local h, code = fence(ref, token, worker, 'complete', 'attempt', 'cache_key', 'timeout_ms', 'queue')
  if code == OK then
    local ns, run, action = split_ref(ref)
    ends.queue_of[akey(ref)] = h.queue
    if result == '' then result = nil end
    -- The projection's HSET also marks the attempt ended (what ended() writes), in one call.
    emit({type = 'action_succeeded', ns = ns, run = run, action = action,
      attempt = tonumber(h.attempt), token = token_n, worker = worker, result = result}, 'running',
      '_ended', token .. ':complete')
    -- end_lease, batched: the leases leave the index in one ZREM after the loop.
    ended_refs[#ended_refs + 1] = ref
    if h.timeout_ms ~= '0' then redis.call('ZREM', TIMEOUTS, ref) end
    if h.cache_key ~= '' then
      redis.call('HSET', cache_hash(ns), h.cache_key, result or '')
      redis.call('ZADD', cache_times(ns), NOW, h.cache_key)   -- for the cache's own retention
    end
  end
  if code == OK or code == REPEATED then
    out[#out + 1], out[#out + 2] = OK, token_n
  else
    out[#out + 1], out[#out + 2] = code, tonumber(h.token)
  end
end
call_chunked('ZREM', LEASES, ended_refs)
flush_ends()
return out
