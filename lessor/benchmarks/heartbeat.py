"""Heartbeat throughput: lease renewals/s against the server's own limit, in one run.

Setup: ``--leases`` actions are submitted and leased by real acquires (long
ttl, so nothing expires), split over ``--workers`` renewing loops in this process.

Phases, all against the same server in the same run:
1. the server's limit for batched renewals: a C client (cclient.py) sends
   lessor's real ``renew.lua`` (its FUNCTION library, loaded as lessor loads it) by
   FCALL, ``--batch`` real leases per call, at saturation; the cost is server
   CPU time per renewed lease (``INFO cpu``), the limit one core's 1 / cost.
   Measured in two halves, before and after phase 2, so both see the same load;
2. closed loop, batched: each worker renews its leases in calls of ``--batch``
   leases as fast as it can -> sustained leases renewed/s, its own server CPU
   per lease, call latency, and the ratio to the limit of phase 1;
3. single renewals: one lease per call, ``--concurrency`` calls in flight,
   against the C client's single-renewal limit (``-P 16``, one lease per call);
4. latency at half the maximum sustained batched rate (paced, open loop).

``INFO commandstats`` time is shown too, labelled *script wall time*: the wall
time inside the script, which leaves out parsing, replies and the AOF and
counts preemption as script time, so it is no limit.

With ``--plot out.png``, a sweep of batch sizes is drawn (renewals/s and the
C client's limit vs batch).

On a cluster (``redis+cluster://``) the C client runs against the primary that
serves the partition it renews, so the limit is one primary core's; the server
CPU of the Python phases is summed over every primary.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from urllib.parse import quote

import anyio

from lessor.benchmarks.cclient import Load, c_client_version, c_clients_load, find_c_client, load_between
from lessor.benchmarks.common import (
    ServerSample, dump_json, percentile, print_table, run, sample_server, stopwatch, uvloop_name,
)
from lessor.errors import ServerError
from lessor.leasing.backend import Backend, open_backend, resolve_url
from lessor.leasing.client import Lease, LeaseClient, renew_args
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.urls import parse_multi
from lessor.scheduler.submit import RunSpec, submit_runs

NAMESPACE = "bench/development"
QUEUE = "heartbeat"
BENCH_LEASE = LeaseConfig(ttl_ms=600_000, grace_ms=60_000)
SCRIPT_COMMAND = "fcall"  # lessor calls its scripts as FUNCTIONs (leasing/scripts.py)
BENCH_WORKER = "bench-setup"  # holds every lease: only its renewals are on-time renewals (code OK)
# Shapes of the C client that keep the server saturated (server busy ~0.9-1.0 of a core on 2 cores).
BATCHED_C_CLIENT = {"clients": 4, "pipeline": 4}
SINGLE_C_CLIENT = {"clients": 8, "pipeline": 16}
# The spread limit: one C client process per batch (the whole working set), each with one call in flight;
# at most this many processes (10,000 leases in batches of 100 need 100).
SPREAD_C_CLIENT = {"clients": 1, "pipeline": 4}
MAX_C_PROCESSES = 128


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--leases", type=int, default=10_000, help="leases held in total (default 10000)")
    p.add_argument("--workers", type=int, default=8, help="concurrent renewing loops (default 8)")
    p.add_argument("--batch", type=int, default=100, help="leases per renewal call (default 100)")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight for single renewals")
    p.add_argument("--processes", type=int, default=1,
                   help="also renew in batches from N processes at once (--workers loops each), beside the "
                        "single process (default 1: the single process only)")
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
    client = LeaseClient(backend, BENCH_WORKER, BENCH_LEASE)
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

    cpu_before = time.process_time()  # this process's CPU time: the client's cost per lease
    with stopwatch() as t:
        async with anyio.create_task_group() as tg:
            for mine in shares:
                tg.start_soon(loop, mine)
    return loop_result(renewed, t[0], latencies, time.process_time() - cpu_before)


def loop_result(renewed: int, seconds: float, latencies: list[float], client_cpu_s: float) -> dict:
    """A closed loop's figures from its raw counts and per-call latencies (seconds)."""
    latencies = sorted(latencies)
    return {"renewed": renewed, "seconds": seconds, "renewals_per_s": renewed / seconds, "calls": len(latencies),
            "p50_ms": percentile(latencies, 0.5) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
            "p999_ms": percentile(latencies, 0.999) * 1e3, "latencies": latencies,
            "client_cpu_us_per_lease": client_cpu_s * 1e6 / max(renewed, 1)}


def c_client_shape(batch: int) -> dict:
    """Connections and pipeline depth with which the C client saturates the server at ``batch`` leases a call."""
    return SINGLE_C_CLIENT if batch < 10 else BATCHED_C_CLIENT


def served(before: ServerSample, after: ServerSample, result: dict) -> dict:
    """The server's side of a closed-loop phase: CPU time and script wall time per renewed lease."""
    load = dataclasses.replace(load_between(before, after, SCRIPT_COMMAND, 0), units=result["renewed"])
    return {"server_cpu_us_per_lease": load.cpu_us_per_unit,
            "script_wall_us_per_lease": load.script_wall_us_per_unit,
            # The old "ratio to the server's limit": the share of wall time inside renew scripts.
            "script_wall_share": load.script_usec / 1e6 / load.wall_s if load.wall_s else 0.0,
            "server_busy": load.busy, "leases_per_call": result["renewed"] / max(result["calls"], 1)}


async def measured(backend: Backend, phase) -> dict:
    """Run the closed-loop coroutine ``phase``; its result plus what it cost the server."""
    before = await sample_server(backend.redis)
    result = await phase
    after = await sample_server(backend.redis)
    return result | served(before, after, result)


async def batched_phase(backend: Backend, client: LeaseClient, leases: list[Lease], batch: int, workers: int,
                        duration_s: float, meters=None) -> dict:
    """Phase 2: sustained batched renewals from this process, and their server cost."""
    result = await measured(backend, closed_loop(client, batches_of(leases, batch), workers, duration_s,
                                                 meters=meters))
    return result | {"batch": batch}


def _renew_in_process(url: str, batches: list[list[Lease]], workers: int, duration_s: float, start_at: float,
                      use_uvloop: bool) -> dict:
    """One process of ``--processes``: its own connections, its share of the batches, from ``start_at``
    (time.time(), so every process starts together) for ``duration_s``; its raw figures."""
    import time

    async def go() -> dict:
        async with open_backend(url, max_connections=workers + 4) as backend:
            client = LeaseClient(backend, BENCH_WORKER, BENCH_LEASE)
            await client.renew_partition(batches[0][0].partition, batches[0])  # connected before the start
            await anyio.sleep(max(0.0, start_at - time.time()))  # clock: benchmark timing only
            return await closed_loop(client, batches, workers, duration_s)

    return run(go, use_uvloop=use_uvloop)


async def processes_phase(backend: Backend, url: str, leases: list[Lease], args: argparse.Namespace) -> dict:
    """Batched renewals from ``--processes`` processes at once (``--workers`` loops each, the batches dealt
    out between them), and their server cost: what one machine's clients can drive, beside one process."""
    import concurrent.futures
    import multiprocessing
    import time

    batches = batches_of(leases, args.batch)
    shares = [batches[i::args.processes] for i in range(args.processes)]
    context = multiprocessing.get_context("spawn")  # no fork of a running event loop
    with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        start_at = time.time() + 3.0  # clock: benchmark timing only (spawn + import + connect)
        futures = [pool.submit(_renew_in_process, url, share, args.workers, args.duration, start_at,
                               not args.no_uvloop) for share in shares if share]
        await anyio.sleep(max(0.0, start_at - time.time()))  # clock: benchmark timing only
        before = await sample_server(backend.redis)
        parts = [await anyio.to_thread.run_sync(f.result) for f in futures]
        after = await sample_server(backend.redis)
    renewed = sum(p["renewed"] for p in parts)
    seconds = max(p["seconds"] for p in parts)
    cpu = sum(p["client_cpu_us_per_lease"] * p["renewed"] for p in parts) / 1e6
    result = loop_result(renewed, seconds, [x for p in parts for x in p["latencies"]], cpu)
    return result | served(before, after, result) | {"batch": args.batch, "processes": args.processes}


def against_limit(result: dict, limit: Load) -> dict:
    """``result`` with the C client's figures beside it and its renewals/s as a ratio to that limit."""
    c_rate = limit.units / limit.wall_s if limit.wall_s else 0.0
    return result | {"c_client_cpu_us_per_lease": limit.cpu_us_per_unit, "server_limit_per_s": limit.limit_per_s,
                     "ratio_to_server_limit": result["renewals_per_s"] / max(limit.limit_per_s, 1e-9),
                     # On a loaded machine the server gets less than a core: the C client's own rate in the
                     # same run, under the same load, is the other honest yardstick.
                     "c_client_per_s": c_rate, "ratio_to_c_client": result["renewals_per_s"] / max(c_rate, 1e-9)}


def renew_command(backend: Backend, function: str, batch: list[Lease]) -> list:
    """The FCALL renewing ``batch`` (one partition) as their holder: what the C client sends each time."""
    return ["FCALL", function, 1, backend.keys(batch[0].partition).prefix,
            *renew_args(BENCH_WORKER, BENCH_LEASE.ttl_ms, batch)]


async def load_renew_script(backend: Backend) -> str:
    """FUNCTION LOAD of lessor's library exactly as lessor sends it; the name of its renew function."""
    command, function = backend.scripts.command("renew")
    if command != SCRIPT_COMMAND:
        raise ServerError(f"lessor's client calls renew with {command}, this benchmark measures {SCRIPT_COMMAND}")
    await backend.scripts.renew.library.load(backend.redis)
    return function


async def c_client_limit(backend: Backend, url: str, function: str, leases: list[Lease], batch: int,
                         duration_s: float, spread: bool = False) -> Load:
    """The server's limit for calls of ``batch`` real leases, measured by the C client.

    ``spread``: every full batch of ``leases`` gets a C client process of its own
    (up to MAX_C_PROCESSES), so the server renews the same working set as the
    Python loops do, not one batch that stays in its caches. Otherwise one
    process repeats one batch (the cache-hot figure). Each command is made here
    first and must renew every lease OK, so what the C client repeats is a real
    on-time renewal. Raises ServerError otherwise.
    """
    groups = spread_groups(leases, batch) if spread else spread_groups(leases, batch)[:1]
    commands = [renew_command(backend, function, group) for group in groups]
    for command in commands:
        codes = (await backend.redis.execute_command(*command))[1:]
        if any(Code(code) is not Code.OK for code in codes):
            raise ServerError(f"renew.lua refused the benchmark's own leases: codes {sorted(set(codes))}")
    # On a cluster the limit is one primary's: the C client renews the batches of the first group's partition.
    partition = groups[0][0].partition
    commands = [c for c, g in zip(commands, groups) if g[0].partition == partition or not backend.cluster]
    redis, target = limit_target(backend, url, partition)
    shape = SPREAD_C_CLIENT if spread else c_client_shape(batch)
    return await c_clients_load(redis, target, commands, len(groups[0]), duration_s, **shape)


def limit_target(backend: Backend, url: str, partition: int) -> tuple:
    """(client to sample, URL for the C client) of the server renewing ``partition``'s leases: the server
    itself, or on a cluster the primary serving that partition (the limit is then one primary core's)."""
    if not backend.cluster:
        return backend.redis, url
    prefix = backend.keys(partition).prefix
    node = backend.redis.get_node_from_key(prefix)
    parts = parse_multi(url)
    auth = (quote(parts.username or "") + ":" + quote(parts.password) + "@") if parts.password else ""
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    return backend.client_for(prefix), f"{scheme}://{auth}{node.host}:{node.port}"


def spread_groups(leases: list[Lease], batch: int) -> list[list[Lease]]:
    """The batches the spread C client renews: full ones only (calls are counted together, so every call
    must hold ``batch`` leases), at most MAX_C_PROCESSES; the largest batch if none is full."""
    groups = batches_of(leases, batch)
    return [g for g in groups if len(g) == batch][:MAX_C_PROCESSES] or [max(groups, key=len)]


def limit_summary(load: Load, batch: int, leases: list[Lease], spread: bool = False) -> dict:
    """A C-client measurement for the JSON output: per lease, with the client's shape and working set."""
    processes = len(spread_groups(leases, batch)) if spread else 1
    shape = SPREAD_C_CLIENT if spread else c_client_shape(batch)
    return {"batch": batch, **shape, "processes": processes, "working_set_leases": processes * batch,
            "calls": load.calls, "leases": load.units,
            "server_cpu_us_per_lease": load.cpu_us_per_unit, "limit_per_s": load.limit_per_s,
            "server_busy": load.busy, "script_wall_us_per_lease": load.script_wall_us_per_unit,
            "c_client_leases_per_s": load.units / load.wall_s if load.wall_s else 0.0}


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
        call_args = renew_args(client.worker_id, client.config.ttl_ms, batch)
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


async def single_renewals(backend: Backend, client: LeaseClient, leases: list[Lease], concurrency: int,
                          duration_s: float) -> dict:
    """Phase 3: one lease per call, ``concurrency`` calls in flight, and their server cost."""
    return await measured(backend, closed_loop(client, [[lease] for lease in leases], concurrency, duration_s))


async def measure(args: argparse.Namespace) -> dict:
    max_conn = max(args.workers, args.concurrency) + 8
    async with open_backend(args.redis_url, max_connections=max_conn) as backend:
        url = resolve_url(args.redis_url) or backend.url  # unredacted: the C client must log in too
        leases = await setup_leases(backend, args.leases)
        client = LeaseClient(backend, BENCH_WORKER, BENCH_LEASE)
        function = await load_renew_script(backend)
        out: dict = {"leases": len(leases), "workers": args.workers, "loop": uvloop_name(not args.no_uvloop),
                     "c_client": c_client_version(find_c_client())}
        # The limit in two halves around the Python phase, so both see the machine's load of the moment.
        limit = await c_client_limit(backend, url, function, leases, args.batch, args.duration / 2, spread=True)
        out["batched"] = await batched_phase(backend, client, leases, args.batch, args.workers, args.duration)
        if args.processes > 1:
            out["processes"] = await processes_phase(backend, url, leases, args)
        limit += await c_client_limit(backend, url, function, leases, args.batch, args.duration / 2, spread=True)
        hot_limit = await c_client_limit(backend, url, function, leases, args.batch, args.duration / 2)
        out["batched"] = against_limit(out["batched"], limit)
        if args.processes > 1:
            out["processes"] = against_limit(out["processes"], limit)
        out["single"] = await single_renewals(backend, client, leases, args.concurrency, args.duration)
        single_limit = await c_client_limit(backend, url, function, leases, 1, args.duration)
        out["single"] = against_limit(out["single"], single_limit)
        out["limits"] = {"batched": limit_summary(limit, args.batch, leases, spread=True),
                         "batched, one batch": limit_summary(hot_limit, args.batch, leases),
                         "single": limit_summary(single_limit, 1, leases)}
        half_rate_calls = out["batched"]["renewals_per_s"] / 2 / out["batched"]["leases_per_call"]
        out["half_rate"] = await measured(backend, closed_loop(client, batches_of(leases, args.batch), args.workers,
                                                               args.duration, pace_calls_per_s=half_rate_calls))
        if args.otel:
            from lessor import telemetry

            meters = telemetry.setup("memory")
            otel = await batched_phase(backend, client, leases, args.batch, args.workers, args.duration, meters)
            out["batched_otel"] = against_limit(otel, limit)
            out["otel_overhead_ratio"] = out["batched_otel"]["renewals_per_s"] / out["batched"]["renewals_per_s"]
        if args.durability:
            out["durable"] = await durable_renewals(backend, client, leases, args)
        if args.plot:
            out["sweep"] = await sweep(backend, url, function, client, leases, args)
    return without_latencies(out)


def without_latencies(value):
    """``value`` with the raw per-call latency lists left out (the percentiles stay)."""
    if isinstance(value, dict):
        return {k: without_latencies(v) for k, v in value.items() if k != "latencies"}
    if isinstance(value, list):
        return [without_latencies(v) for v in value]
    return value


async def sweep(backend: Backend, url: str, function: str, client: LeaseClient, leases: list[Lease],
                args: argparse.Namespace) -> list[dict]:
    """Renewals/s and the C client's limit at each batch size, each pair measured back to back."""
    phase_s = max(1.0, args.duration / 3)
    points = []
    for b in (1, 10, 25, 50, 100, 200, 500):
        if b <= len(leases):
            result = await batched_phase(backend, client, leases, b, args.workers, phase_s)
            limit = await c_client_limit(backend, url, function, leases, b, phase_s, spread=b >= 10)
            points.append(against_limit(result, limit))
    return points


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
    ax.plot(xs, [r["server_limit_per_s"] for r in sweep], "s--",
            label="server limit, one core (C client, INFO cpu)")
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
    if args.leases < 1 or args.workers < 1 or args.batch < 1 or args.processes < 1 or args.duration <= 0:
        raise ValueError("--leases, --workers, --batch, --processes must be >= 1 and --duration > 0")
    find_c_client()  # fail before measuring, not after
    if args.plot:
        require_matplotlib()
    out = run(measure, args, use_uvloop=not args.no_uvloop)
    if args.plot and out.get("sweep"):
        draw(out["sweep"], args.plot, f"lessor heartbeat renewals ({out['loop']})")
    if args.json:
        dump_json(out)
    else:
        print_results(out, args)
    return 0


def table_row(mode: str, r: dict) -> dict:
    return {"mode": mode, "rate": r["renewals_per_s"], "cpu": r["server_cpu_us_per_lease"],
            "c_cpu": r.get("c_client_cpu_us_per_lease"), "limit": r.get("server_limit_per_s"),
            "ratio": r.get("ratio_to_server_limit"), "c_ratio": r.get("ratio_to_c_client"),
            "client": r["client_cpu_us_per_lease"], "wall": r["script_wall_us_per_lease"],
            "p50": r["p50_ms"], "p99": r["p99_ms"], "p999": r["p999_ms"]}


def print_results(out: dict, args: argparse.Namespace) -> None:
    """The tables and lines a person reads."""
    rows = [table_row(f"batched ({args.batch}/call)", out["batched"]),
            *([table_row(f"batched, {args.processes} processes", out["processes"])] if "processes" in out else []),
            table_row(f"single ({args.concurrency} in flight)", out["single"]),
            table_row("batched at half max rate", out["half_rate"])]
    if args.otel:
        rows.append(table_row(f"batched, OpenTelemetry on (x{out['otel_overhead_ratio']:.2f} of off)",
                              out["batched_otel"]))
    print_table(
        f"heartbeat: {out['leases']:,} leases, {out['workers']} workers, {out['loop']}; "
        f"limit = 1 / server CPU per lease under {out['c_client']} (one core)",
        rows,
        [("mode", "mode"), ("rate", "renewals/s"), ("cpu", "server CPU µs/lease"),
         ("c_cpu", "C client: server CPU µs/lease"), ("limit", "server limit/s"), ("ratio", "× limit"),
         ("c_ratio", "× C client's rate"), ("client", "client CPU µs/lease"),
         ("wall", "script wall time µs/lease"), ("p50", "p50 ms"), ("p99", "p99 ms"), ("p999", "p99.9 ms")],
    )
    for name, lim in out["limits"].items():
        procs = f"{lim['processes']} processes of " if lim["processes"] > 1 else ""
        print(f"server limit, {name}: {procs}{out['c_client']} -c {lim['clients']} -P {lim['pipeline']} running "
              f"renew.lua on {lim['batch']} real lease(s) a call ({lim['working_set_leases']:,} leases in all): "
              f"{lim['server_cpu_us_per_lease']:.2f} µs of server CPU per lease "
              f"-> {lim['limit_per_s']:,.0f} leases/s per core (server busy {lim['server_busy']:.2f} of a core; "
              f"script wall time {lim['script_wall_us_per_lease']:.2f} µs/lease)")
    b = out["batched"]
    print(f"the C client's own rate in the same run (the server's share of a loaded machine): "
          f"{b['c_client_per_s']:,.0f} leases/s; × C client's rate = renewals/s ÷ that")
    print(f"script wall time (INFO commandstats, not a limit): the batched client kept the server inside renew.lua "
          f"{b['script_wall_share']:.0%} of the wall time, {b['leases_per_call']:.1f} leases a call")
    if args.durability:
        d = out["durable"]
        print(f"renewals waiting for {d['durability']} each: {d['durable_per_s']:,.0f}/s vs {d['memory_per_s']:,.0f}/s "
              f"in memory, ×{d['ratio_to_memory']:.2f} (p99 {d['durable_p99_ms']:.1f} ms); lessor keeps on-time "
              "renewals soft state, so heartbeats pay none of this")
    if args.plot:
        print(f"plot written to {args.plot}")
