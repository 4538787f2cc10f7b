"""``lessor bench retention``: does memory plateau while runs flow through with a short retention?

Single-action runs are pushed through at full speed (submit, lease and
complete, batched), with a retention policy that keeps ``keep_runs`` finished
runs and a Housekeeper (retention + compaction into an archive) running as
every reaper would. Every ``sample_every`` runs it records ``used_memory``,
the streams' length and the live keys, so the curve shows whether memory
follows live work or all-time history. At the end: ``replay --verify`` time
and differences, the archive's bytes per run, and the renewal-call p99 of a
side client holding leases, with housekeeping running and (in a short baseline
push first, same run) without it.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import anyio

from lessor.benchmarks.common import dump_json, percentile, print_table
from lessor.errors import ConfigError
from lessor.leasing.archive import Archive
from lessor.leasing.backend import CONFIG_KEY, Backend, open_backend
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing.housekeeping import Housekeeper
from lessor.leasing.replay import verify
from lessor.leasing.retention import RetentionPolicy, set_policy
from lessor.scheduler.submit import RunSpec, submit_runs

NS = "bench/retention"
SIDE_NS = "bench/side"
QUEUE = "bench-retention"
SIDE_QUEUE = "bench-retention-side"


@dataclass
class RetentionBench:
    """The curve and the end figures."""

    samples: list[dict] = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0
    verify_s: float = 0.0
    verify_cpu_s: float = 0.0   # this process's CPU in the verify: less at the mercy of a loaded machine
    differences: int = 0
    archive_bytes: int = 0
    renew_p99_ms: dict[str, float] = field(default_factory=dict)
    max_housekeeping_ms: float = 0.0
    max_call_ms: float = 0.0
    slow_calls: dict[str, tuple[int, float]] = field(default_factory=dict)   # what -> (count > 1 ms, max ms)
    compactors: list[dict] = field(default_factory=list)   # per compactor process: steps, events, longest step


async def _used(backend: Backend) -> dict:
    info = await backend.redis.info("memory")
    keys = backend.all_keys()
    streams = sum([await backend.redis.xlen(k.stream) for k in keys])
    stream_bytes = sum([await backend.redis.memory_usage(k.stream, samples=0) or 0 for k in keys])
    snapshot_bytes = sum([await backend.redis.memory_usage(k.named("SNAPSHOT"), samples=0) or 0 for k in keys])
    return {"t": time.time(), "load1": os.getloadavg()[0], "used_memory": int(info["used_memory"]), "used_memory_rss": int(info["used_memory_rss"]),
            "stream_entries": streams, "stream_bytes": stream_bytes, "snapshot_bytes": snapshot_bytes,
            "keys": await backend.redis.dbsize()}


async def _push(backend: Backend, client: LeaseClient, batch: int) -> int:
    """One batch through: submitted, leased, completed."""
    await submit_runs(backend, [RunSpec("noop", namespace=NS, queue=QUEUE) for _ in range(batch)])
    done = 0
    while done < batch:
        leases = await client.acquire(NS, QUEUE, batch - done)
        if not leases:
            break
        by_partition = defaultdict(list)
        for lease in leases:
            by_partition[lease.partition].append((lease, b""))
        async with anyio.create_task_group() as tg:
            for partition, items in by_partition.items():
                tg.start_soon(client.complete_many, partition, items)
        done += len(leases)
    return done


async def bench_retention(url: str | None, runs: int, keep_runs: int, batch: int, sample_every: int,
                          archive_dir: str | None, rate: float = 0.0, progress=print,
                          compactors_n: int = 2, compact_batch: int = 10_000,
                          max_seconds: float = 0.0) -> RetentionBench:
    """Push ``runs`` runs through with ``keep_runs`` retained; the curve and the end figures.

    ``rate``: runs per second at most (0 = as fast as this client goes). ``compactors_n``
    processes compact the partitions between them (as that many ``lessor reaper --archive``
    would), ``compact_batch`` events per step at most. ``max_seconds``: stop pushing then,
    however many runs went through (0 = no limit), so a loaded machine still gives the figures.
    """
    out = RetentionBench()
    own_dir = archive_dir is None
    archive_dir = archive_dir or tempfile.mkdtemp(prefix="lessor-archive-")
    cfg = LeaseConfig(ttl_ms=30_000, grace_ms=5_000)
    try:
        async with open_backend(url) as backend:
            # It measures used_memory, and must not touch a user's data: only lessor's layout key may be there.
            if await backend.redis.dbsize() > await backend.redis.exists(CONFIG_KEY):
                raise ConfigError(f"bench retention needs an empty server, and {backend.url} holds keys: "
                                  "run it on the embedded server (no --redis-url) or an empty one")
            await set_policy(backend, NS, RetentionPolicy(keep_runs=keep_runs))
            keeper = Housekeeper(backend, Archive(archive_dir), interval_ms=1000, keep_window_ms=0,
                                 batch=compact_batch, limit=100)
            # Server-side time of every command over 1 ms, from the server itself (SLOWLOG).
            await backend.redis.config_set("slowlog-log-slower-than", 1000)
            await backend.redis.config_set("slowlog-max-len", 100_000)
            client = LeaseClient(backend, "bench-w", cfg)
            state = {"on": False, "stop": False}
            windows: dict[str, list[float]] = {"housekeeping on": [], "housekeeping off": []}

            async def retention_loop() -> None:   # compaction runs in its own processes (_Compactors)
                while not state["stop"]:
                    if state["on"]:
                        started_ = time.perf_counter()
                        result = await keeper.retire()
                        out.max_housekeeping_ms = max(out.max_housekeeping_ms, (time.perf_counter() - started_) * 1000)
                        out.max_call_ms = max(out.max_call_ms, result.max_call_ms)
                    await anyio.sleep(0.2)

            side = _SideRenewer(backend.url)
            async with anyio.create_task_group() as tg:
                tg.start_soon(retention_loop)
                # Baseline: the same load with housekeeping off (renewal latency only).
                windows["housekeeping off"].append(time.time())
                baseline, base_started = 0, time.perf_counter()
                while baseline < max(batch, min(runs // 10, 10_000)):   # short: it leaves history behind
                    baseline += await _push(backend, client, batch)
                    if rate > 0:
                        ahead_s = baseline / rate - (time.perf_counter() - base_started)
                        if ahead_s > 0:
                            await anyio.sleep(ahead_s)
                windows["housekeeping off"].append(time.time())
                progress(f"baseline: {baseline:,} runs with housekeeping off")
                state["on"] = True
                await backend.redis.slowlog_reset()
                await keeper.retire()
                await keeper.compact()
                compactors = _Compactors(backend.url, archive_dir, compactors_n, backend.partitions, keeper.batch)
                out.samples.append({"runs": 0, **await _used(backend)})
                windows["housekeeping on"].append(time.time())
                started = time.perf_counter()
                next_sample = sample_every
                while out.runs < runs and (max_seconds <= 0 or time.perf_counter() - started < max_seconds):
                    out.runs += await _push(backend, client, min(batch, runs - out.runs))
                    if rate > 0:   # a steady rate: wait until the schedule catches up
                        ahead_s = out.runs / rate - (time.perf_counter() - started)
                        if ahead_s > 0:
                            await anyio.sleep(ahead_s)
                    if out.runs >= next_sample:
                        await _drain_slow_calls(backend, out.slow_calls)
                        sample = {"runs": out.runs, **await _used(backend)}
                        out.samples.append(sample)
                        progress(f"{out.runs:>9,} runs  {time.perf_counter() - started:6.0f} s  used_memory "
                                 f"{sample['used_memory'] / 2**20:7.1f} MB  rss {sample['used_memory_rss'] / 2**20:6.1f} MB  "
                                 f"stream entries {sample['stream_entries']:>8,}  keys {sample['keys']:>7,}")
                        next_sample += sample_every
                windows["housekeeping on"].append(time.time())
                state["stop"] = True
                tg.cancel_scope.cancel()
            latencies = side.stop()
            out.compactors = compactors.stop()
            await _drain_slow_calls(backend, out.slow_calls)
            out.seconds = time.perf_counter() - started
            await keeper.run_once(force=True)      # the last runs' history too
            while any(c.archived >= keeper.batch for c in await keeper.compact()):
                pass
            await _drain_slow_calls(backend, out.slow_calls)
            out.samples.append({"runs": out.runs, **await _used(backend)})
            t0, cpu0 = time.perf_counter(), time.process_time()   # measurements of the verify
            out.differences = len(await verify(backend))
            out.verify_s, out.verify_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
            out.renew_p99_ms = {name: percentile(sorted(ms for at, ms in latencies if lo <= at <= hi), 0.99)
                                for name, (lo, hi) in windows.items()}
        out.archive_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(archive_dir) for f in fs)
    finally:
        if own_dir:
            shutil.rmtree(archive_dir, ignore_errors=True)
    return out


def report(result: RetentionBench, keep_runs: int, as_json: bool, plot: str | None) -> None:
    """Print the curve and the end figures (and draw the curve when asked)."""
    if as_json:
        dump_json(result.__dict__)
        return
    first_mb = result.samples[1]["used_memory"] / 2**20 if len(result.samples) > 1 else 0
    last_mb = result.samples[-1]["used_memory"] / 2**20
    peak_mb = max(s["used_memory"] for s in result.samples) / 2**20
    rows = [
        ["runs pushed through", f"{result.runs:,} in {result.seconds:.0f} s ({result.runs / result.seconds:,.0f}/s)"],
        ["retention", f"keep the newest {keep_runs:,} finished runs"],
        ["used_memory: first sample / last / peak", f"{first_mb:.1f} / {last_mb:.1f} / {peak_mb:.1f} MB"],
        ["last / peak (1.0 = flat)", f"{last_mb / peak_mb:.2f}"],
        ["used_memory_rss: last / peak", f"{result.samples[-1].get('used_memory_rss', 0) / 2**20:.1f} / "
                                         f"{max(s.get('used_memory_rss', 0) for s in result.samples) / 2**20:.1f} MB"],
        ["streams: entries / MEMORY USAGE, peak", f"{max(s['stream_entries'] for s in result.samples):,} / "
                                                  f"{max(s.get('stream_bytes', 0) for s in result.samples) / 2**20:.1f} MB"],
        ["snapshots (latest + previous): MEMORY USAGE, peak",
         f"{max(s.get('snapshot_bytes', 0) for s in result.samples) / 2**20:.1f} MB"],
        *[[f"compactor {i} (partitions {c['partitions']})",
           f"{c['events']:,} events in {c['steps']:,} steps, {c['cpu_s']:.0f} s CPU "
           f"({c['cpu_s'] * 1e6 / max(c['events'], 1):.0f} us/event), longest step {c['longest_step_ms']:.0f} ms"]
          for i, c in enumerate(result.compactors)],
        ["replay --verify", f"{result.verify_s:.2f} s ({result.verify_cpu_s:.2f} s CPU), "
                            f"{result.differences} differences"],
        ["machine load (1 min), median of the samples",
         f"{sorted(s.get('load1', 0) for s in result.samples)[len(result.samples) // 2]:.1f}"],
        ["archive", f"{result.archive_bytes / max(result.runs, 1):.0f} bytes per run (gzip JSON lines)"],
        ["renewal p99, housekeeping on / off", " / ".join(f"{result.renew_p99_ms.get(k, 0):.1f} ms"
                                                          for k in ("housekeeping on", "housekeeping off"))],
        ["longest retention script call (client-measured)", f"{result.max_call_ms:.1f} ms"],
        *[[f"server calls > 1 ms: {name}", f"{n} (max {worst:.1f} ms)"]
          for name, (n, worst) in sorted(result.slow_calls.items(), key=lambda kv: -kv[1][1])],
        ["longest housekeeping pass (many calls)", f"{result.max_housekeeping_ms:.0f} ms"],
    ]
    print_table("lessor bench retention", [{"figure": a, "value": b} for a, b in rows],
                [("figure", "figure"), ("value", "value")])
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        x = [s["runs"] for s in result.samples]
        ax.plot(x, [s["used_memory"] / 2**20 for s in result.samples], marker=".", label="used_memory")
        ax.plot(x, [s.get("used_memory_rss", 0) / 2**20 for s in result.samples], marker=".", label="used_memory_rss")
        ax.plot(x, [s.get("stream_bytes", 0) / 2**20 for s in result.samples], marker=".", label="streams")
        ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="50 MB")
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.set_xlabel("runs pushed through")
        ax.set_ylabel("MB")
        ax.set_title(f"lessor: memory with retention of {keep_runs:,} finished runs")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plot)
        print(f"plot: {plot}")


async def _drain_slow_calls(backend: Backend, into: dict[str, tuple[int, float]]) -> None:
    """Move what the server logged as slower than 1 ms into ``into`` (count and max, by command;
    scripts by name) and empty its SLOWLOG, which would otherwise count in the used_memory being
    measured (several MB over a long run on a loaded machine). A call logged between the read and
    the reset is not counted."""
    from lessor.leasing.scripts import SCRIPT_NAMES
    shas = {backend.scripts.command(name)[1]: name for name in SCRIPT_NAMES}
    entries = await backend.redis.slowlog_get(100_000)
    await backend.redis.slowlog_reset()
    for entry in entries:
        args = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in entry["command"].split()] \
            if isinstance(entry["command"], (bytes, str)) else []
        name = args[0].upper() if args else "?"
        if name in ("EVALSHA", "FCALL") and len(args) > 1:
            name = shas.get(args[1], name)
        count, worst = into.get(name, (0, 0.0))
        into[name] = (count + 1, max(worst, entry["duration"] / 1000))


class _Compactors:
    """``n`` processes, each compacting its share of the partitions (p % n == i) back to back
    while behind, every 0.5 s otherwise: compaction is CPU-bound Python, so one process has
    one core's worth of it, and the load generator must not share it."""

    def __init__(self, url: str, archive_dir: str, n: int, partitions: int, batch: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._procs = []
        for i in range(n):
            recv, send = ctx.Pipe(duplex=False)
            share = [p for p in range(partitions) if p % n == i]
            proc = ctx.Process(target=_compactor_main, args=(url, archive_dir, share, batch, self._stop, send),
                               daemon=True)
            proc.start()
            self._procs.append((proc, recv))

    def stop(self) -> list[dict]:
        """Stop them; each one's figures."""
        self._stop.set()
        out = []
        for proc, recv in self._procs:
            out.append(recv.recv())
            proc.join(30)
        return out


def _compactor_main(url: str, archive_dir: str, partitions: list[int], batch: int, stop, send) -> None:
    async def main() -> dict:
        figures = {"partitions": partitions, "steps": 0, "events": 0, "longest_step_ms": 0.0, "cpu_s": 0.0}
        cpu0 = time.process_time()   # a measurement of this process's CPU
        async with open_backend(url) as backend:
            keeper = Housekeeper(backend, Archive(archive_dir), keep_window_ms=0, batch=batch, partitions=partitions)
            while not stop.is_set():
                started = time.perf_counter()   # a measurement of the step
                results = await keeper.compact()
                figures["longest_step_ms"] = max(figures["longest_step_ms"], (time.perf_counter() - started) * 1000)
                figures["steps"] += 1
                figures["events"] += sum(c.archived for c in results)
                if not any(c.archived >= batch for c in results):
                    await anyio.sleep(0.5)
        figures["cpu_s"] = time.process_time() - cpu0
        return figures

    send.send(anyio.run(main))


class _SideRenewer:
    """A separate process holding 100 leases and renewing them every 50 ms, timing each call:
    the renewal latency other workers see, without this process's own CPU in it."""

    def __init__(self, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_side_main, args=(url, self._stop, send), daemon=True)
        self._proc.start()
        if self._recv.recv() != "ready":
            raise RuntimeError("the side renewer did not start")

    def stop(self) -> list[tuple[float, float]]:
        """Stop it; (wall time, call ms) of every renewal call it made."""
        self._stop.set()
        out = self._recv.recv()
        self._proc.join(10)
        return out


def _side_main(url: str, stop, send) -> None:
    async def main() -> list[tuple[float, float]]:
        out = []
        async with open_backend(url) as backend:
            client = LeaseClient(backend, "bench-side", LeaseConfig(ttl_ms=30_000, grace_ms=5_000))
            await submit_runs(backend, [RunSpec("noop", namespace=SIDE_NS, queue=SIDE_QUEUE) for _ in range(100)])
            held = await client.acquire(SIDE_NS, SIDE_QUEUE, 100)
            send.send("ready")
            while not stop.is_set():
                started = time.perf_counter()   # a latency measurement
                await client.renew(held)
                out.append((time.time(), (time.perf_counter() - started) * 1000))
                await anyio.sleep(0.05)
        return out

    send.send(anyio.run(main))


def add_arguments(p) -> None:
    """The options of `lessor bench retention`."""
    p.add_argument("--runs", type=int, default=200_000, help="runs pushed through (the issue's figure: 1000000)")
    p.add_argument("--keep-runs", type=int, default=10_000, help="finished runs retained (default 10000)")
    p.add_argument("--rate", type=float, default=2000.0, help="runs per second at most (0 = as fast as possible)")
    p.add_argument("--batch", type=int, default=500, help="runs per submit/acquire/complete batch")
    p.add_argument("--sample-every", type=int, default=0, help="runs between memory samples (default runs/20)")
    p.add_argument("--archive", metavar="DIR", help="keep the archive here (default: a temp dir, removed)")
    p.add_argument("--compactors", type=int, default=2, help="compactor processes, each with its share of the "
                                                              "partitions (default 2)")
    p.add_argument("--plot", metavar="PNG", help="draw used_memory against runs (needs the [plot] extra)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="stop pushing after this long, however many "
                                                                   "runs went through (default: no limit)")
    p.add_argument("--save", metavar="FILE", help="also write every sample and figure to FILE (JSON)")
    p.add_argument("--json", action="store_true")


def main(args) -> int:
    """`lessor bench retention`: push runs through, print the curve's figures (and plot it)."""
    result = anyio.run(functools.partial(
        bench_retention, args.redis_url, args.runs, args.keep_runs, args.batch,
        args.sample_every or max(args.runs // 20, 1000), args.archive, args.rate, compactors_n=args.compactors,
        max_seconds=args.max_seconds))
    if args.save:
        with open(args.save, "w") as f:
            json.dump(result.__dict__, f, indent=1)
    report(result, args.keep_runs, args.json, args.plot)
    return 0 if result.differences == 0 else 1
