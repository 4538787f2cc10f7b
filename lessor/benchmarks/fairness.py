"""``lessor bench fairness``: fair share across namespaces, and what it costs per acquire.

Three measurements, all in one run on one server:

1. Starvation: namespace A has ``--backlog`` (100k) queued runs and workers of every
   namespace (``*``) are busy with them; then namespace B submits 10. A *round* is one
   acquire call of ``--batch`` on every partition (what a worker does with that many
   free slots). Reported: the rounds until B's first and last run started (target: 1).
2. Shares under saturation: A and B both have more queued than is taken; over
   ``--take`` leases, each one's share against its weight (1:1 and 3:1; target: within 5 %).
3. Cost: server CPU per acquired lease (the script time of INFO commandstats, and
   all the server's CPU from INFO cpu) of each way to acquire, against main's algorithm
   in the same run: main's acquire.lua (one ZPOPMIN from one namespace's queue, kept
   here as MAIN_ACQUIRE) with the running counters taken out of the prelude. The modes
   take turns every ``--slice-calls`` calls, since the machine is shared and its load
   changes from second to second; then the same leases are completed, the same way.
"""

from __future__ import annotations

import argparse

import msgpack

from lessor.benchmarks.common import dump_json, print_table, run, sample_server, stat_delta
from lessor.leasing import fairshare
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing.scripts import compose, script_source
from lessor.scheduler.submit import RunSpec, submit_runs

A, B = "big/prod", "small/prod"
LEASE = LeaseConfig(ttl_ms=3_600_000, grace_ms=60_000)   # nothing expires while we measure
SUBMIT_BATCH = 2000

# main's acquire.lua (commit 28763e3), the baseline: one namespace's queue, one ZPOPMIN.
MAIN_ACQUIRE = """local ns, queue, worker = ARGV[1], ARGV[2], ARGV[3]
local n, ttl_ms, grace_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
checked()
local out = {NOW}
local popped = redis.call('ZPOPMIN', qkey(ns, queue), n)
if #popped == 0 then return out end
--@@USES_LIB@@
local next_token, save_tokens = token_source()
for i = 1, #popped, 2 do
  local ref = popped[i]
  local key = akey(ref)
  local h = hget(key, 'phase', 'ns', 'run', 'action', 'attempt', 'task', 'inputs', 'parent', 'timeout_ms', 'aborting')
  if h.phase == 'queued' and h.aborting ~= '1' then
    local token = next_token()
    local attempt = tonumber(h.attempt) + 1
    local deadline = NOW + ttl_ms
    emit({type = 'action_leased', ns = h.ns, run = h.run, action = h.action, attempt = attempt,
      token = token, worker = worker, ttl_ms = ttl_ms, grace_ms = grace_ms, deadline_ms = deadline}, 'queued')
    redis.call('ZADD', LEASES, lease_expiry({deadline_ms = deadline, grace_ms = grace_ms}), ref)
    local timeout_ms = tonumber(h.timeout_ms)
    if timeout_ms > 0 then redis.call('ZADD', TIMEOUTS, NOW + timeout_ms, ref) end
    local n_out = #out
    out[n_out + 1], out[n_out + 2], out[n_out + 3], out[n_out + 4] = ref, token, attempt, deadline
    out[n_out + 5], out[n_out + 6], out[n_out + 7] = h.task, h.inputs or '', h.parent or ''
  end
end
save_tokens()
if #popped == 2 * n and redis.call('ZCARD', qkey(ns, queue)) > 0 then wake(ns, queue) end
return out
"""
_COUNTER_HOOK = "      count_running(key, ev.ns, nxt == 'running' and 1 or -1)\n"

# mode: (script, namespace acquired, weights of A and B, or None: A alone)
MODES = {
    "main": ("main", A, None),
    "one-ns": ("fair", A, None),
    "fair-1ns": ("fair", "*", None),
    "fair-1:1": ("fair", "*", (1, 1)),
    "fair-3:1": ("fair", "*", (3, 1)),
}


def main_script(backend: Backend, name: str):
    """main's acquire (or complete.lua, whose body is main's) on today's prelude without the
    running counters: main's algorithm."""
    source = compose("acquire", MAIN_ACQUIRE, backend.clock) if name == "acquire" else script_source(name, backend.clock)
    assert _COUNTER_HOOK in source, "the prelude's counter hook moved: update bench fairness"
    return backend.redis.register_script(source.replace(_COUNTER_HOOK, ""))


async def fill(backend: Backend, queue: str, counts: dict[str, int]) -> None:
    """Queue ``counts[ns]`` runs of each namespace on ``queue`` (interleaved in batches)."""
    left = dict(counts)
    while any(left.values()):
        for ns in left:
            k = min(SUBMIT_BATCH, left[ns])
            if k:
                await submit_runs(backend, [RunSpec("t", namespace=ns, queue=queue) for _ in range(k)])
                left[ns] -= k


async def one_round(backend: Backend, client: LeaseClient, namespace: str, queue: str, batch: int) -> list:
    """One acquire of ``batch`` on every partition; the leases granted."""
    out = []
    for p in range(backend.partitions):
        out += await client.acquire_from(p, namespace, queue, batch)
    return out


async def starvation(backend: Backend, args: argparse.Namespace) -> dict:
    queue = "starve"
    await fill(backend, queue, {A: args.backlog})
    client = LeaseClient(backend, "w-starve", LEASE)
    for _ in range(3):   # the workers are busy with A's backlog
        await one_round(backend, client, "*", queue, args.batch)
    await submit_runs(backend, [RunSpec("t", namespace=B, queue=queue) for _ in range(10)])
    first, rounds, started = None, 0, 0
    while started < 10 and rounds < 10_000:
        rounds += 1
        got = sum(lease.ref.startswith(B + "/") for lease in await one_round(backend, client, "*", queue, args.batch))
        started += got
        if got and first is None:
            first = rounds
    last = rounds if started >= 10 else None
    return {"backlog": args.backlog, "batch": args.batch, "first_round": first, "all_round": last}


async def shares(backend: Backend, args: argparse.Namespace, weights: tuple[int, int]) -> dict:
    queue = f"share-{weights[0]}-{weights[1]}"
    await fill(backend, queue, {A: args.take, B: args.take})   # both stay backlogged: neither can run dry
    await fairshare.set_fair_share(backend, queue, A, weight=weights[0])
    await fairshare.set_fair_share(backend, queue, B, weight=weights[1])
    client = LeaseClient(backend, "w-share", LEASE)
    taken = {A: 0, B: 0}
    while sum(taken.values()) < args.take:
        for lease in await one_round(backend, client, "*", queue, args.batch):
            taken["/".join(lease.ref.split("/")[:2])] += 1
    total = sum(taken.values())
    want = weights[0] / sum(weights)
    got = taken[A] / total
    return {"weights": f"{weights[0]}:{weights[1]}", "leases": total, "a": taken[A], "b": taken[B],
            "a_share": got, "a_weight_share": want, "off_pct": abs(got - want) / want * 100}


class _Tally:
    """One mode's totals over its slices: leases, server CPU and script time, to acquire and to complete."""

    def __init__(self) -> None:
        self.leases = self.ended = 0
        self.cpu_s = self.complete_cpu_s = 0.0
        self.usec = self.complete_usec = 0
        self.held: dict[int, list] = {}


async def _measured(backend: Backend, work) -> tuple[float, int]:
    """Server CPU seconds and evalsha µs that ``work()`` cost (nothing else runs on this server)."""
    before = await sample_server(backend.redis)
    await work()
    after = await sample_server(backend.redis)
    return after.cpu_s - before.cpu_s, stat_delta(before.commands, after.commands, "evalsha")[1]


async def cost(backend: Backend, args: argparse.Namespace, scripts: dict) -> dict[str, _Tally]:
    """Every mode's queue filled first; then slices of ``--slice-calls`` acquire calls per mode,
    the modes taking turns slice by slice, so that the load of this shared machine, which
    changes from second to second, falls on every mode alike; then completes, the same way."""
    tallies = {mode: _Tally() for mode in MODES}
    for mode, (_, _, weights) in MODES.items():
        queue = f"cost-{mode.replace(':', '-')}"
        await fill(backend, queue, {A: args.cost_leases} if weights is None else {A: args.cost_leases, B: args.cost_leases})
        for ns, w in zip((A, B), weights or ()):
            await fairshare.set_fair_share(backend, queue, ns, weight=w)
        tallies[mode].held = {p: [] for p in range(backend.partitions)}

    async def acquire_slice(mode: str) -> None:
        script, namespace, _ = MODES[mode]
        t = tallies[mode]
        call_args = [namespace, f"cost-{mode.replace(':', '-')}", "w-cost", args.batch, LEASE.ttl_ms, LEASE.grace_ms]
        for i in range(args.slice_calls):
            p = i % backend.partitions
            reply = await scripts[script](keys=[backend.keys(p).prefix], args=call_args)
            t.held[p] += [(reply[j], reply[j + 1]) for j in range(1, len(reply), 7)]
            t.leases += (len(reply) - 1) // 7

    async def complete_slice(mode: str) -> None:
        t = tallies[mode]
        complete = scripts["main-complete" if MODES[mode][0] == "main" else "complete"]
        for p, items in t.held.items():
            batch, t.held[p] = items[:args.batch], items[args.batch:]
            if batch:
                values = [v for ref, token in batch for v in (ref, int(token), b"")]
                await complete(keys=[backend.keys(p).prefix],
                               args=["w-cost", msgpack.packb(values, use_bin_type=False), len(batch)])
                t.ended += len(batch)

    turn = 0
    while any(t.leases < args.cost_leases for t in tallies.values()):
        for mode in _rotated(turn):   # who goes first changes too
            t = tallies[mode]
            if t.leases < args.cost_leases:
                cpu_s, usec = await _measured(backend, lambda: acquire_slice(mode))
                t.cpu_s, t.usec = t.cpu_s + cpu_s, t.usec + usec
        turn += 1
    while any(any(t.held.values()) for t in tallies.values()):
        for mode in _rotated(turn):
            t = tallies[mode]
            if any(t.held.values()):
                cpu_s, usec = await _measured(backend, lambda: complete_slice(mode))
                t.complete_cpu_s, t.complete_usec = t.complete_cpu_s + cpu_s, t.complete_usec + usec
        turn += 1
    return tallies


def _rotated(turn: int) -> list[str]:
    modes = list(MODES)
    k = turn % len(modes)
    return modes[k:] + modes[:k]


async def measure(args: argparse.Namespace) -> dict:
    async with open_backend(args.redis_url, partitions=args.partitions) as backend:
        scripts = {"main": main_script(backend, "acquire"), "main-complete": main_script(backend, "complete"),
                   "fair": backend.redis.register_script(script_source("acquire", backend.clock)),
                   "complete": backend.redis.register_script(script_source("complete", backend.clock))}
        out = {"partitions": backend.partitions, "starvation": await starvation(backend, args),
               "shares": [await shares(backend, args, w) for w in ((1, 1), (3, 1))]}
        out["cost"] = summarize(await cost(backend, args, scripts))
        return out


def summarize(tallies: dict[str, _Tally]) -> list[dict]:
    """Per mode: µs per lease, and the ratio to main's in the same run."""
    per = {m: {"leases": t.leases, "cpu_us_per_lease": t.cpu_s * 1e6 / t.leases,
               "script_us_per_lease": t.usec / t.leases,
               "complete_cpu_us_per_lease": t.complete_cpu_s * 1e6 / t.ended,
               "complete_script_us_per_lease": t.complete_usec / t.ended} for m, t in tallies.items()}
    keys = [k for k in per["main"] if k.endswith("_per_lease")]
    return [{"mode": m, **per[m], **{k.replace("us_per_lease", "ratio"): per[m][k] / per["main"][k] for k in keys}}
            for m in MODES]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backlog", type=int, default=100_000, help="A's queued runs before B submits 10 (default 100000)")
    p.add_argument("--take", type=int, default=20_000, help="leases taken to measure the shares (default 20000)")
    p.add_argument("--cost-leases", type=int, default=10_000, help="leases per mode per cost round (default 10000)")
    p.add_argument("--batch", type=int, default=64, help="leases asked per acquire call (default 64)")
    p.add_argument("--partitions", type=int, help="partitions of a new store (default: the store's, else 4)")
    p.add_argument("--slice-calls", type=int, default=16,
                   help="acquire calls per mode before the next mode's turn (default 16)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")


def main(args: argparse.Namespace) -> int:
    """`lessor bench fairness`."""
    if min(args.backlog, args.take, args.cost_leases, args.batch, args.slice_calls) < 1:
        raise ValueError("--backlog, --take, --cost-leases, --batch and --slice-calls must be >= 1")
    out = run(measure, args)
    if args.json:
        dump_json(out)
        return 0
    s = out["starvation"]
    print(f"starvation: {s['backlog']:,} runs of {A} queued and being taken, then 10 of {B}: the first started in "
          f"round {s['first_round']}, all 10 by round {s['all_round']} (a round: one acquire of {s['batch']} "
          f"on each of {out['partitions']} partitions)")
    print_table("shares under saturation (both namespaces backlogged throughout)", out["shares"],
                [("weights", "A:B"), ("leases", "leases"), ("a", "A"), ("b", "B"), ("a_share", "A's share"),
                 ("a_weight_share", "by weight"), ("off_pct", "off by %")])
    print_table(f"server cost per lease (modes taking turns every {args.slice_calls} calls; ratio to main's, same run)",
                out["cost"], [("mode", "mode"), ("script_us_per_lease", "acquire script µs"), ("script_ratio", "× main"),
                              ("cpu_us_per_lease", "acquire CPU µs"), ("cpu_ratio", "× main"),
                              ("complete_cpu_us_per_lease", "complete CPU µs"), ("complete_cpu_ratio", "× main")])
    print("script µs: INFO commandstats (evalsha, wall time in the server); CPU µs: INFO cpu (user + sys, all of "
          "the server). complete: the same leases ended in batches, main's complete without the counters. "
          "modes: main = main's acquire.lua, one namespace; one-ns = today's, one namespace named; fair-1ns = "
          "today's with '*', one namespace queued; fair-1:1 / fair-3:1 = '*' over two namespaces by weight")
    return 0
