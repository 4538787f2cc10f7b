--[[ Bring a partition's fair-share state in line with its queues and leases (lessor fairshare sync).
  KEYS[1]  partition prefix (string)
  Touches: LEASES, akey, fair_key, qkey, running_key, share_key
  ARGV[1] count of (namespace, queue) pairs that follow, then the pairs: each namespace's
          queue found in the partition (its q: key); one with work joins the queue's rotation
  ARGV[...] the rest: queues whose running counters are recounted from the reap index
  Returns: {namespaces joined, running leases counted}
  Events: none (derived state only: the rotation and the counters are not in the log)
  What it repairs: a queue filled before fair share existed (its namespaces are in no
  rotation, so '*' workers would not see them; a worker of one namespace drains them
  anyway and joins them), and running counters that missed leases granted before they
  existed (or were lost with a snapshot restore). Safe to run at any time: one script, so
  no lease starts or ends half-way through the count. ]]
local pairs_n = tonumber(ARGV[1])
if not pairs_n or pairs_n < 0 or pairs_n % 1 ~= 0 or #ARGV < 1 + 2 * pairs_n then
  return redis.error_reply('LESSOR_BAD_ARG fair_sync needs a pair count, that many namespace, queue pairs, then queues')
end
for i = 2, #ARGV do
  local v = ARGV[i]
  local is_ns = i <= 1 + 2 * pairs_n and i % 2 == 0
  if (is_ns and not string.match(v, '^[%w][%w_%.%-]*/[%w][%w_%.%-]*$'))
      or (not is_ns and not string.match(v, '^[%w][%w_%.%-]*$')) or #v > 127 then
    return redis.error_reply('LESSOR_BAD_ARG fair_sync: bad namespace or queue id ' .. string.sub(v, 1, 80))
  end
end
checked()
--@@USES_LIB@@
local recount = {}
for i = 2 + 2 * pairs_n, #ARGV do
  recount[ARGV[i]] = true
  redis.call('DEL', running_key(ARGV[i]))
end
local counted = 0
for _, ref in ipairs(redis.call('ZRANGE', LEASES, 0, -1)) do
  local h = redis.call('HMGET', akey(ref), 'phase', 'ns', 'queue')
  if h[1] == 'running' and recount[h[3]] then
    redis.call('HINCRBY', running_key(h[3]), h[2], 1)
    redis.call('HINCRBY', running_key(h[3]), '*', 1)
    counted = counted + 1
  end
end
-- Then the rotation: a namespace with work joins, unless it is at its limit (it joins when
-- one of its leases ends, as acquire's step-aside does).
local joined = 0
for i = 2, 1 + 2 * pairs_n, 2 do
  local ns, queue = ARGV[i], ARGV[i + 1]
  local max = tonumber(redis.call('HGET', share_key(queue), 'max:' .. ns) or '0') or 0
  local running = tonumber(redis.call('HGET', running_key(queue), ns) or '0')
  if redis.call('ZCARD', qkey(ns, queue)) > 0 and not redis.call('ZSCORE', fair_key(queue), ns)
      and (max <= 0 or running < max) then
    fair_join(ns, queue)
    joined = joined + 1
  end
end
return {joined, counted}
