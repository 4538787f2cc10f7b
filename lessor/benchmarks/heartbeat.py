"""Heartbeat throughput: lease renewals/s against the server's own limit, in one run.

Setup: ``--leases`` actions are submitted and leased (long ttl, so nothing
expires), split over ``--workers`` renewing loops in this process.

Phases, all against the same server in the same run:
1. closed loop, batched: each worker renews its leases in calls of ``--batch``
   leases as fast as it can -> sustained leases renewed/s, call latency;
2. the server's limit for that batched script: server time per call from
   ``INFO commandstats`` (usec_per_call of EVALSHA) -> leases/s one core could do;
3. single renewals: one lease per call, ``--concurrency`` calls in flight;
4. the server's pipelined single-renewal limit: a tight loop of pipelines of
   single renewals (what one client connection can push through the server);
5. latency at half the maximum sustained batched rate (paced, open loop).

With ``--plot out.png``, a sweep of batch sizes is drawn (renewals/s vs batch).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import anyio

from lessor.benchmarks.common import (
    command_stats, dump_json, percentile, print_table, run, stat_delta, stopwatch, uvloop_name,
)
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.scheduler.submit import RunSpec, submit_runs

NAMESPACE = "bench/development"
QUEUE = "heartbeat"
BENCH_LEASE = LeaseConfig(ttl_ms=600_000, grace_ms=60_000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--leases", type=int, default=10_000, help="leases held in total (default 10000)")
    p.add_argument("--workers", type=int, default=8, help="concurrent renewing loops (default 8)")
    p.add_argument("--batch", type=int, default=100, help="leases per renewal call (default 100)")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight for single renewals")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured phase (default 5)")
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    p.add_argument("--plot", metavar="PNG", help="also sweep batch sizes and draw renewals/s vs batch")
    p.add_argument("--otel", action="store_true",
                   help="also measure the batched phase with OpenTelemetry metrics on (in-memory SDK)")
    p.add_argument("--durability", metavar="MODE",
                   help="also measure batched renewals that each wait for MODE (fsync, replicas:N), as a "
                        "ratio to the same renewals in memory: the cost lessor avoids by keeping on-time "
                        "renewals soft state")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")


async def setup_leases(backend: Backend, n: int) -> list[Lease]:
    """Submit ``n`` runs and lease their root actions (in batches)."""
    for start in range(0, n, 500):
        await submit_runs(backend, [RunSpec("noop", namespace=NAMESPACE, queue=QUEUE, run_id=f"hb{i:07d}")
                                    for i in range(start, min(n, start + 500))])
    client = LeaseClient(backend, "bench-setup", BENCH_LEASE)
    leases: list[Lease] = []
    while len(leases) < n:
        got = await client.acquire(NAMESPACE, QUEUE, min(500, n - len(leases)))
        if not got:
            break
        leases.extend(got)
    return leases


def batches_of(leases: list[Lease], size: int) -> list[list[Lease]]:
    """Group by partition, then cut into calls of at most ``size`` leases."""
    by_p: dict[int, list[Lease]] = defaultdict(list)
    for lease in leases:
        by_p[lease.partition].append(lease)
    return [group[i:i + size] for group in by_p.values() for i in range(0, len(group), size)]


async def closed_loop(client: LeaseClient, batches: list[list[Lease]], workers: int,
                      duration_s: float, pace_calls_per_s: float | None = None, meters=None,
                      renew=None) -> dict:
    """Renew ``batches`` round-robin from ``workers`` loops for ``duration_s``; latencies per call."""
    import time

    latencies: list[float] = []
    renewed = 0
    stop_at = time.perf_counter() + duration_s  # clock: benchmark timing only
    shares = [batches[w::workers] for w in range(workers)]

    async def loop(mine: list[list[Lease]]) -> None:
        nonlocal renewed
        i = 0
        interval = workers / pace_calls_per_s if pace_calls_per_s else 0.0
        next_at = time.perf_counter()  # clock: benchmark timing only
        while mine and time.perf_counter() < stop_at:  # clock: benchmark timing only
            batch = mine[i % len(mine)]
            i += 1
            t0 = time.perf_counter()  # clock: benchmark timing only
            codes = await (renew or client.renew_partition)(batch[0].partition, batch)
            latencies.append(time.perf_counter() - t0)  # clock: benchmark timing only
            ok = sum(1 for c in codes.values() if c is Code.OK)
            renewed += ok
            if meters is not None:  # what the keeper records per heartbeat
                meters.renewal_latency_ms.record(latencies[-1] * 1e3)
                meters.renewals.add(ok)
            if interval:
                next_at += interval
                delay = next_at - time.perf_counter()  # clock: benchmark timing only
                if delay > 0:
                    await anyio.sleep(delay)

    with stopwatch() as t:
        async with anyio.create_task_group() as tg:
            for mine in shares:
                tg.start_soon(loop, mine)
    latencies.sort()
    return {"renewed": renewed, "seconds": t[0], "renewals_per_s": renewed / t[0], "calls": len(latencies),
            "p50_ms": percentile(latencies, 0.5) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
            "p999_ms": percentile(latencies, 0.999) * 1e3}


async def batched_with_server_limit(backend: Backend, client: LeaseClient, leases: list[Lease],
                                    batch: int, workers: int, duration_s: float, meters=None) -> dict:
    """Phases 1+2: sustained batched renewals and the server's limit for that script."""
    before = await command_stats(backend.redis)
    result = await closed_loop(client, batches_of(leases, batch), workers, duration_s, meters=meters)
    after = await command_stats(backend.redis)
    calls, usec = stat_delta(before, after, "evalsha")
    usec_per_call = usec / max(calls, 1)
    leases_per_call = result["renewed"] / max(calls, 1)
    result["server_usec_per_lease"] = usec / max(result["renewed"], 1)
    result["server_limit_per_s"] = leases_per_call / usec_per_call * 1e6 if usec_per_call else 0.0
    result["ratio_to_server_limit"] = result["renewals_per_s"] / max(result["server_limit_per_s"], 1e-9)
    result["batch"] = batch
    return result


async def durable_renewals(backend: Backend, client: LeaseClient, leases: list[Lease],
                           args: argparse.Namespace) -> dict:
    """Batched renewals with and without a durability wait per call, interleaved in one run.

    lessor never waits on renewals (soft state, covered by the lease extension
    on every new epoch); this measures what waiting would cost.
    """
    from lessor.leasing.durability import Durability

    durable = Backend(redis=backend.redis, url=backend.url, partitions=backend.partitions,
                      durability=Durability.parse(args.durability))

    async def renew_durably(partition: int, batch: list[Lease]) -> dict:
        call_args: list = [client.worker_id, client.config.ttl_ms]
        for lease in batch:
            call_args += (lease.ref, lease.token)
        reply = await durable.call("renew", [backend.keys(partition).prefix], call_args, durable=True)
        return {lease.ref: Code(code) for lease, code in zip(batch, reply[1:])}

    batches = batches_of(leases, args.batch)
    rounds = {"memory": [], "durable": []}
    for _ in range(2):  # interleaved, so both see the same machine load
        rounds["memory"].append(await closed_loop(client, batches, args.workers, args.duration / 2))
        rounds["durable"].append(await closed_loop(client, batches, args.workers, args.duration / 2,
                                                   renew=renew_durably))
    rate = {k: sum(r["renewals_per_s"] for r in v) / len(v) for k, v in rounds.items()}
    return {"durability": str(durable.durability), "memory_per_s": rate["memory"],
            "durable_per_s": rate["durable"], "ratio_to_memory": rate["durable"] / max(rate["memory"], 1e-9),
            "durable_p99_ms": max(r["p99_ms"] for r in rounds["durable"])}


async def pipelined_single_limit(backend: Backend, leases: list[Lease], duration_s: float,
                                 depth: int = 500) -> float:
    """Phase 4: single renewals pushed through pipelines, one connection; leases/s."""
    import time

    script = backend.scripts.renew
    sha = backend.scripts.sha("renew")
    await script(keys=[backend.keys(leases[0].partition).prefix],
                 args=["bench-w", BENCH_LEASE.ttl_ms, leases[0].ref, leases[0].token])
    done = 0
    stop_at = time.perf_counter() + duration_s  # clock: benchmark timing only
    i = 0
    with stopwatch() as t:
        while time.perf_counter() < stop_at:  # clock: benchmark timing only
            pipe = backend.redis.pipeline(transaction=False)
            for _ in range(depth):
                lease = leases[i % len(leases)]
                i += 1
                pipe.evalsha(sha, 1, backend.keys(lease.partition).prefix, "bench-w",
                             BENCH_LEASE.ttl_ms, lease.ref, lease.token)
            await pipe.execute()
            done += depth
    return done / t[0]


async def single_renewals(client: LeaseClient, leases: list[Lease], concurrency: int,
                          duration_s: float) -> dict:
    """Phase 3: one lease per call, ``concurrency`` calls in flight."""
    return await closed_loop(client, [[lease] for lease in leases], concurrency, duration_s)


async def measure(args: argparse.Namespace) -> dict:
    max_conn = max(args.workers, args.concurrency) + 8
    async with open_backend(args.redis_url, max_connections=max_conn) as backend:
        leases = await setup_leases(backend, args.leases)
        # The worker id must match the lease holder for renewals to be OK.
        client = LeaseClient(backend, "bench-setup", BENCH_LEASE)
        out: dict = {"leases": len(leases), "workers": args.workers, "loop": uvloop_name(not args.no_uvloop)}
        out["batched"] = await batched_with_server_limit(backend, client, leases, args.batch,
                                                         args.workers, args.duration)
        out["single"] = await single_renewals(client, leases, args.concurrency, args.duration)
        single_limit = await pipelined_single_limit(backend, leases, args.duration)
        out["single"]["server_limit_per_s"] = single_limit
        out["single"]["ratio_to_server_limit"] = out["single"]["renewals_per_s"] / single_limit
        half_rate_calls = out["batched"]["renewals_per_s"] / 2 / args.batch
        out["half_rate"] = await closed_loop(client, batches_of(leases, args.batch), args.workers,
                                             args.duration, pace_calls_per_s=half_rate_calls)
        if args.otel:
            from lessor import telemetry

            meters = telemetry.setup("memory")
            out["batched_otel"] = await batched_with_server_limit(backend, client, leases, args.batch,
                                                                  args.workers, args.duration, meters=meters)
            out["otel_overhead_ratio"] = out["batched_otel"]["renewals_per_s"] / out["batched"]["renewals_per_s"]
        if args.durability:
            out["durable"] = await durable_renewals(backend, client, leases, args)
        if args.plot:
            out["sweep"] = [
                await batched_with_server_limit(backend, client, leases, b, args.workers,
                                                max(1.0, args.duration / 3))
                for b in (1, 10, 25, 50, 100, 200, 500) if b <= len(leases)
            ]
    return out


def require_matplotlib() -> None:
    """ConfigError saying how to install matplotlib if it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from lessor.errors import ConfigError

        raise ConfigError("--plot needs matplotlib: `.venv/bin/pip install -e '.[plot]'` (make bench does)") from None


def draw(sweep: list[dict], path: str, title: str) -> None:
    """renewals/s and the server limit against batch size."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["batch"] for r in sweep]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [r["renewals_per_s"] for r in sweep], "o-", label="sustained renewals/s (client)")
    ax.plot(xs, [r["server_limit_per_s"] for r in sweep], "s--", label="server limit (commandstats)")
    ax.set_xscale("log")
    ax.set_xlabel("leases per renewal call (batch)")
    ax.set_ylabel("leases renewed per second")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args: argparse.Namespace) -> int:
    """`lessor bench heartbeat`."""
    if args.leases < 1 or args.workers < 1 or args.batch < 1 or args.duration <= 0:
        raise ValueError("--leases, --workers, --batch must be >= 1 and --duration > 0")
    if args.plot:
        require_matplotlib()  # fail before measuring, not after
    out = run(measure, args, use_uvloop=not args.no_uvloop)
    if args.plot and out.get("sweep"):
        draw(out["sweep"], args.plot, f"lessor heartbeat renewals ({out['loop']})")
    if args.json:
        dump_json(out)
        return 0
    b, s, h = out["batched"], out["single"], out["half_rate"]
    print_table(
        f"heartbeat: {out['leases']:,} leases, {out['workers']} workers, {out['loop']}",
        [
            {"mode": f"batched ({args.batch}/call)", "rate": b["renewals_per_s"], "limit": b["server_limit_per_s"],
             "ratio": b["ratio_to_server_limit"], "p50": b["p50_ms"], "p99": b["p99_ms"], "p999": b["p999_ms"],
             "cpu": b["server_usec_per_lease"]},
            {"mode": f"single ({args.concurrency} in flight)", "rate": s["renewals_per_s"],
             "limit": s["server_limit_per_s"], "ratio": s["ratio_to_server_limit"], "p50": s["p50_ms"],
             "p99": s["p99_ms"], "p999": s["p999_ms"]},
            {"mode": "batched at half max rate", "rate": h["renewals_per_s"], "p50": h["p50_ms"],
             "p99": h["p99_ms"], "p999": h["p999_ms"]},
        ] + ([{"mode": f"batched, OpenTelemetry on (x{out['otel_overhead_ratio']:.2f} of off)",
               "rate": out["batched_otel"]["renewals_per_s"], "limit": out["batched_otel"]["server_limit_per_s"],
               "ratio": out["batched_otel"]["ratio_to_server_limit"], "p50": out["batched_otel"]["p50_ms"],
               "p99": out["batched_otel"]["p99_ms"], "p999": out["batched_otel"]["p999_ms"]}] if args.otel else []),
        [("mode", "mode"), ("rate", "renewals/s"), ("limit", "server limit/s"), ("ratio", "× limit"),
         ("p50", "p50 ms"), ("p99", "p99 ms"), ("p999", "p99.9 ms"), ("cpu", "server µs/lease")],
    )
    if args.durability:
        d = out["durable"]
        print(f"renewals waiting for {d['durability']} each: {d['durable_per_s']:,.0f}/s vs {d['memory_per_s']:,.0f}/s "
              f"in memory, ×{d['ratio_to_memory']:.2f} (p99 {d['durable_p99_ms']:.1f} ms); lessor keeps on-time "
              "renewals soft state, so heartbeats pay none of this")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0
