"""Reap storm: a fleet's leases all expire at once; does reaping them stall the server?

Setup, per round: ``--leases`` runs are submitted and leased with a 1 s ttl and
no grace, and left to expire (no reaper runs yet). A separate set of ``--live``
leases (long ttl) is held throughout.

Each round then measures, against one server:
1. baseline (``--baseline-s``): PINGs (``--ping-rate``/s) and renewals of the
   live leases (``--renew-rate`` calls/s of ``--batch`` leases each), both sent
   open loop, each call timed from send to reply;
2. the storm: ``--reapers`` reaper processes (the real Reaper, shared throttle,
   as workers run it) clear the expired leases while the same probes go on.
   Every reap.lua call is timed on the server twice: by the server itself
   (SLOWLOG, threshold SLOWLOG_US: the whole FCALL, wall
   time) and by the script's own report of its CPU time (os.clock; what the
   Reaper records as ``lessor.reaper.call``). Not a 0 µs threshold: the server
   then logs every command a script calls too, and SLOWLOG RESET of the
   setup's 200k entries stalled the server for 190 ms.

Reported per round: reap call ms (p50, p99, max), the time to clear the storm
(first reap call sent to the end of the pass that found nothing more), and the
PING and renewal p99 during the storm as ratios to their baseline just before.

Rounds (``--modes``, in the same run, each on fresh leases; ``--rounds`` repeats the list):
  budget  ``--limit`` items and ``--budget-ms`` per call, ``--in-flight`` calls in flight
          per reaper (the default Reaper: 500, 2 ms, 1)
  old     the reaper before the budget: 500 a call, no budget, one call per partition at once
each optionally ``=MS`` (a budget per call) and ``@N`` (N calls in flight per reaper):
``--modes budget=1,budget=2@4,old`` compares three reapers in one run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import anyio

from lessor.benchmarks.common import dump_json, percentile, print_table, server_cpu_s
from lessor.errors import ConfigError
from lessor.leasing.backend import Backend, open_backend, resolve_url
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.scheduler.submit import RunSpec, submit_runs

NAMESPACE = "bench/development"
LIVE_QUEUE = "reapstorm-live"
STORM_LEASE = LeaseConfig(ttl_ms=1000, grace_ms=0)
LIVE_LEASE = LeaseConfig(ttl_ms=600_000, grace_ms=60_000)
LIVE_WORKER, STORM_WORKER = "bench-live", "bench-storm"
SETUP_BATCH = 1000
# Above a PING and below a reap call that does anything: an idle partition's call (~0.06 ms)
# is left out of the figures, and stalls nobody.
SLOWLOG_US = 100


@dataclass(frozen=True)
class Mode:
    """How the round's reapers are configured (Reaper's own parameters)."""

    name: str
    limit: int
    budget_ms: float | None
    max_in_flight: int | None

    @property
    def short(self) -> str:
        """For a narrow table: budget and calls in flight (P: one per partition)."""
        return f"{f'{self.budget_ms:g} ms' if self.budget_ms else 'old'} @{self.max_in_flight or 'P'}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--leases", type=int, default=100_000, help="leases that expire at once (default 100000)")
    p.add_argument("--live", type=int, default=2000, help="live leases renewed throughout (default 2000)")
    p.add_argument("--batch", type=int, default=100, help="live leases per renewal call (default 100)")
    p.add_argument("--renew-rate", type=float, default=100.0, help="renewal calls/s, open loop (default 100)")
    p.add_argument("--ping-rate", type=float, default=200.0, help="PINGs/s, open loop (default 200)")
    p.add_argument("--baseline-s", type=float, default=5.0, help="seconds of baseline before each storm")
    p.add_argument("--reapers", type=int, default=1, help="reaper processes clearing the storm (default 1)")
    p.add_argument("--limit", type=int, default=500, help="items per reap call in the budget mode (default 500)")
    p.add_argument("--budget-ms", type=float, default=2.0, help="time budget per reap call (default 2)")
    p.add_argument("--in-flight", type=int, default=1,
                   help="reap calls each reaper keeps in flight in the budget mode (default 1, as Reaper)")
    p.add_argument("--modes", default="budget,old",
                   help="rounds to run, in order: budget, old (500 a call, no budget, one call per "
                        "partition), each optionally =MS (budget per call) and @N (calls in flight per "
                        "reaper), e.g. budget=1@2 (default budget,old)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the --modes list this many times (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")


def modes_of(args: argparse.Namespace) -> list[Mode]:
    """The rounds ``--modes`` asks for: ``budget`` (``--budget-ms`` per call, ``--in-flight`` calls
    in flight per reaper) or ``old`` (500 a call, no budget, one call per partition at once), each
    optionally ``=MS`` (budget ms per call) and ``@N`` (calls in flight per reaper), as in
    ``budget=1@2``. ValueError naming a bad entry."""
    modes = []
    for entry in (m.strip() for m in args.modes.split(",")):
        found = re.fullmatch(r"(budget|old)(?:=(\d+(?:\.\d+)?))?(?:@([1-9]\d*))?", entry)
        if not found or not 0 < float(found.group(2) or 1) <= 1000:
            raise ValueError(f"--modes takes a list of budget or old, each optionally =MS (0 < MS <= 1000) "
                             f"and @N (N >= 1); got {entry!r}")
        kind, budget, in_flight = found.groups()
        budget_ms = float(budget) if budget else (args.budget_ms if kind == "budget" else None)
        n = int(in_flight) if in_flight else (args.in_flight if kind == "budget" else None)
        flight = f"{n} in flight" if n else "1 per partition"
        limit = args.limit if kind == "budget" else 500
        what = f"budget {budget_ms:g} ms" if budget_ms else f"old: {limit} a call, no budget"
        modes.append(Mode(f"{what}, {flight}", limit, budget_ms, n))
    return modes


# --- setup -----------------------------------------------------------------------------------

async def lease_runs(backend: Backend, prefix: str, queue: str, n: int, worker: str,
                     config: LeaseConfig) -> list[Lease]:
    """Submit ``n`` runs on ``queue`` and lease all of them as ``worker``."""
    for start in range(0, n, SETUP_BATCH):
        await submit_runs(backend, [RunSpec("noop", namespace=NAMESPACE, queue=queue, run_id=f"{prefix}{i:07d}")
                                    for i in range(start, min(n, start + SETUP_BATCH))])
    client = LeaseClient(backend, worker, config)
    leases: list[Lease] = []
    while len(leases) < n:
        got = await client.acquire(NAMESPACE, queue, min(SETUP_BATCH, n - len(leases)))
        if not got:
            break
        leases.extend(got)
    if len(leases) != n:
        raise RuntimeError(f"bench reap-storm: leased {len(leases)} of {n} runs on {queue}")
    return leases


async def expired_storm(backend: Backend, round_no: int, n: int) -> None:
    """``n`` leases, all past deadline + grace when this returns (no reaper runs during setup)."""
    await lease_runs(backend, f"s{round_no}x", f"reapstorm-{round_no}", n, STORM_WORKER, STORM_LEASE)
    await anyio.sleep((STORM_LEASE.ttl_ms + STORM_LEASE.grace_ms) / 1000 + 0.1)


async def due_leases(backend: Backend) -> int:
    """Leases past their expiry still in the reap index, over every partition (server clock)."""
    seconds, micros = await backend.redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return sum([await backend.redis.zcount(keys.leases, "-inf", f"({now_ms}") for keys in backend.all_keys()])


# --- probes ----------------------------------------------------------------------------------

class Probes:
    """PINGs and renewals of the live leases, sent open loop (a stalled server delays none of the
    sends), each recorded as (due at, ms from due to reply) on the monotonic clock, which every
    process shares. At most IN_FLIGHT of each kind are outstanding (the connection pool is finite);
    one held back by that limit counts its wait, as it counts from when it was due."""

    IN_FLIGHT = 200

    def __init__(self, backend: Backend, live: list[Lease], batch: int) -> None:
        self.backend = backend
        self.client = LeaseClient(backend, LIVE_WORKER, LIVE_LEASE)
        by_p: dict[int, list[Lease]] = defaultdict(list)
        for lease in live:
            by_p[lease.partition].append(lease)
        self.batches = [g[i:i + batch] for g in by_p.values() for i in range(0, len(g), batch)]
        self.ping_ms: list[tuple[float, float]] = []
        self.renew_ms: list[tuple[float, float]] = []
        self.not_ok = 0   # live leases a renewal did not find OK (must stay 0: the reaper took a live lease)

    async def ping(self, i: int) -> None:
        await self.backend.redis.ping()

    async def renew(self, i: int) -> None:
        batch = self.batches[i % len(self.batches)]
        codes = await self.client.renew_partition(batch[0].partition, batch)
        self.not_ok += sum(1 for c in codes.values() if c is not Code.OK)

    async def run(self, ping_rate: float, renew_rate: float) -> None:
        """Send until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._paced, ping_rate, self.ping, self.ping_ms)
            tg.start_soon(self._paced, renew_rate, self.renew, self.renew_ms)

    async def _paced(self, rate: float, call, out: list[tuple[float, float]]) -> None:
        limiter = anyio.CapacityLimiter(self.IN_FLIGHT)

        async def timed(i: int, due: float) -> None:
            async with limiter:
                await call(i)
            out.append((due, (time.monotonic() - due) * 1e3))  # clock: benchmark timing only

        interval, i = 1.0 / rate, 0
        due = time.monotonic()  # clock: benchmark timing only
        async with anyio.create_task_group() as tg:
            while True:
                tg.start_soon(timed, i, due)
                i += 1
                due += interval
                await anyio.sleep(max(0.0, due - time.monotonic()))  # clock: benchmark timing only

    def stats_between(self, start: float, end: float) -> dict:
        """p50, p99 and count of each probe sent in [start, end)."""
        out = {}
        for name, samples in (("ping", self.ping_ms), ("renew", self.renew_ms)):
            ms = sorted(m for t, m in samples if start <= t < end)
            out |= {f"{name}_p50_ms": percentile(ms, 0.5), f"{name}_p99_ms": percentile(ms, 0.99),
                    f"{name}_n": len(ms)}
        return out


# --- reapers (child processes) ---------------------------------------------------------------

def start_reaper(url: str, mode: Mode) -> subprocess.Popen:
    from lessor.server import spawn_child

    return spawn_child([sys.executable, "-m", "lessor.benchmarks.reapstorm", url, json.dumps(asdict(mode))],
                       stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


async def reap_until_clear(url: str, mode: Mode) -> dict:
    """In a reaper process: passes back to back (as Reaper.run while there is more) until one finds
    nothing more due. Its calls' own timings and when it started and finished (monotonic)."""
    from lessor.leasing.reaper import Reaper

    async with open_backend(url) as backend:
        reaper = Reaper(backend, limit=mode.limit, budget_ms=mode.budget_ms, max_in_flight=mode.max_in_flight,
                        shared=True)
        call_ms: list[float] = []
        expired = passes = 0
        started = time.monotonic()  # clock: benchmark timing only
        while True:
            result = await reaper.reap_once()
            call_ms.extend(result.call_ms)
            expired += result.expired
            passes += 1
            if result.failed:
                raise RuntimeError("a reap call failed (see the reaper's log line)")
            if not result.more:
                break
        return {"started": started, "cleared": time.monotonic(),  # clock: benchmark timing only
                "expired": expired, "passes": passes, "call_ms": call_ms}


# --- a round ---------------------------------------------------------------------------------

async def reap_calls_on_server(backend: Backend) -> list[float]:
    """Durations (ms) of every reap.lua call (FCALL or EVALSHA) in the slow log, as the server timed them."""
    command, ident = backend.scripts.command("reap")
    entries = await backend.redis.execute_command("SLOWLOG", "GET", -1)
    return [int(e[2]) / 1000 for e in entries
            if len(e[3]) > 1 and e[3][0].lower() == command.encode() and e[3][1] == ident.encode()]


async def storm(url: str, mode: Mode, reapers: int) -> list[dict]:
    """Run ``reapers`` reaper processes until each found nothing more due; their reports."""
    procs: list[subprocess.Popen] = []
    try:
        procs = [start_reaper(url, mode) for _ in range(reapers)]
        while any(p.poll() is None for p in procs):
            await anyio.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    reports = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0 or not out.strip():
            raise RuntimeError(f"a reaper process failed (exit {p.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


async def one_round(backend: Backend, url: str, probes: Probes, mode: Mode, round_no: int,
                    args: argparse.Namespace) -> dict:
    """Set up a storm, measure a baseline, reap it; the round's figures (see ``summary``)."""
    await expired_storm(backend, round_no, args.leases)
    due = await due_leases(backend)
    await backend.redis.execute_command("SLOWLOG", "RESET")
    rewrites = await aof_rewrites(backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(probes.run, args.ping_rate, args.renew_rate)
        t0 = time.monotonic()  # clock: benchmark timing only
        await anyio.sleep(args.baseline_s)
        t_base = time.monotonic()  # clock: benchmark timing only
        cpu0 = await server_cpu_s(backend.redis)
        reports = await storm(url, mode, args.reapers)
        cpu1 = await server_cpu_s(backend.redis)
        tg.cancel_scope.cancel()
    start, end = min(r["started"] for r in reports), max(r["cleared"] for r in reports)
    return summary(mode, reports, sorted(await reap_calls_on_server(backend)),
                   probes.stats_between(t0, t_base), probes.stats_between(start, end)) | {
        "round": round_no, "leases": args.leases, "due_at_start": due, "left_after": await due_leases(backend),
        "server_busy": (cpu1 - cpu0) / max(end - start, 1e-9),
        # Load-independent: what clearing cost the server (the probes' share included). On a machine
        # where the server gets less than a core, clear_s stretches; these do not.
        "server_cpu_s": cpu1 - cpu0, "server_cpu_us_per_expiry": (cpu1 - cpu0) * 1e6 / max(args.leases, 1),
        "aof_rewrites": await aof_rewrites(backend) - rewrites}


def summary(mode: Mode, reports: list[dict], server_ms: list[float], before: dict, during: dict) -> dict:
    """A round's figures: reap calls as the server timed them (and as the script did), the clear
    time, and the probes' p99 during the storm as ratios to the baseline."""
    script_ms = sorted(ms for r in reports for ms in r["call_ms"])
    clear_s = max(r["cleared"] for r in reports) - min(r["started"] for r in reports)
    expired = sum(r["expired"] for r in reports)
    return {"mode": mode.name, "short": mode.short, "reapers": len(reports), "expired": expired,
            "calls": len(server_ms),   # those over SLOWLOG_US
            "call_ms_p50": percentile(server_ms, 0.5), "call_ms_p99": percentile(server_ms, 0.99),
            "call_ms_max": server_ms[-1] if server_ms else 0.0,
            "calls_over_5ms": sum(1 for ms in server_ms if ms > 5.0),
            "script_call_ms_p99": percentile(script_ms, 0.99),
            "script_call_ms_max": script_ms[-1] if script_ms else 0.0,
            "clear_s": clear_s, "expired_per_s": expired / max(clear_s, 1e-9), "before": before, "during": during,
            "ping_p99_ratio": during["ping_p99_ms"] / max(before["ping_p99_ms"], 1e-9),
            "renew_p99_ratio": during["renew_p99_ms"] / max(before["renew_p99_ms"], 1e-9)}


async def aof_rewrites(backend: Backend) -> int:
    """AOF rewrites the server has done (a fork and a busy child: noise the figures should show)."""
    return int((await backend.redis.info("persistence")).get("aof_rewrites", 0))


def by_mode(rounds: list[dict]) -> list[dict]:
    """Per mode over its rounds: the median ratios and clear time, the worst call."""
    out = []
    for name in dict.fromkeys(r["mode"] for r in rounds):
        mine = [r for r in rounds if r["mode"] == name]

        def median(key: str) -> float:
            return statistics.median(r[key] for r in mine)

        out.append({"mode": name, "short": mine[0]["short"], "rounds": len(mine),
                    "call_ms_p99": median("call_ms_p99"),
                    "call_ms_max": max(r["call_ms_max"] for r in mine), "clear_s": median("clear_s"),
                    "ping_p99_ratio": median("ping_p99_ratio"), "renew_p99_ratio": median("renew_p99_ratio"),
                    "server_cpu_s": median("server_cpu_s"),
                    "script_call_ms_max": max(r["script_call_ms_max"] for r in mine)})
    return out


async def measure(args: argparse.Namespace) -> dict:
    from lessor.server import EmbeddedServer

    modes = modes_of(args) * args.rounds
    url = resolve_url(args.redis_url)
    server = None if url else EmbeddedServer().start()
    try:
        url = url or server.url
        async with open_backend(url, max_connections=512) as backend:
            if backend.cluster:
                raise ConfigError("bench reap-storm measures one server's stalls: pass one server's URL")
            if server is not None:  # our own server: no AOF rewrite (a fork, then a busy child) mid-round
                await backend.redis.config_set("auto-aof-rewrite-percentage", 0)
            # Every reap call goes to the slow log (picked out by its sha; see SLOWLOG_US).
            saved = await backend.redis.config_get("slowlog-*")
            await backend.redis.config_set("slowlog-log-slower-than", SLOWLOG_US)
            await backend.redis.config_set("slowlog-max-len", 1_000_000)
            try:
                live = await lease_runs(backend, "live", LIVE_QUEUE, args.live, LIVE_WORKER, LIVE_LEASE)
                probes = Probes(backend, live, args.batch)
                rounds = [await one_round(backend, url, probes, mode, n, args) for n, mode in enumerate(modes)]
            finally:
                for name, value in saved.items():
                    await backend.redis.config_set(name, value)
            if probes.not_ok:
                raise RuntimeError(f"{probes.not_ok} renewals of live leases were not OK: the reaper took live leases")
            return {"partitions": backend.partitions, "live": len(live), "rounds": rounds, "modes": by_mode(rounds)}
    finally:
        if server is not None:
            server.stop()


def main(args: argparse.Namespace) -> int:
    """`lessor bench reap-storm`."""
    if (args.leases < 1 or args.live < 1 or args.batch < 1 or args.renew_rate <= 0 or args.ping_rate <= 0
            or args.baseline_s <= 0 or args.reapers < 1 or args.rounds < 1 or args.in_flight < 1):
        raise ValueError("--leases, --live, --batch, --reapers, --rounds, --in-flight must be >= 1; rates and "
                         "--baseline-s > 0")
    modes_of(args)  # fail before measuring, not after
    out = anyio.run(measure, args)
    if args.json:
        dump_json(out)
    else:
        print_results(out, args)
    return 0


def print_results(out: dict, args: argparse.Namespace) -> None:
    """One row per round, one line per round with the probes' ms, one row per mode (medians)."""
    rows = [{"round": r["round"] + 1, "mode": r["short"], "calls": r["calls"], "p50": r["call_ms_p50"],
             "p99": r["call_ms_p99"], "max": r["call_ms_max"], "clear": r["clear_s"], "busy": r["server_busy"],
             "ping": r["ping_p99_ratio"], "renew": r["renew_p99_ratio"]} for r in out["rounds"]]
    columns = [("round", "#"), ("mode", "budget @in flight"), ("calls", "calls"), ("p50", "call p50 ms"),
               ("p99", "call p99 ms"), ("max", "call max ms"), ("clear", "clear s"), ("busy", "server busy"),
               ("ping", "PING p99 ×"), ("renew", "renew p99 ×")]
    print_table(f"reap storm: {args.leases:,} leases expire at once, {args.reapers} reaper(s), {out['partitions']} "
                f"partitions", rows, columns)
    for r in out["rounds"]:
        b, d = r["before"], r["during"]
        print(f"#{r['round'] + 1} {r['mode']}: PING p99 {b['ping_p99_ms']:.1f} -> {d['ping_p99_ms']:.1f} ms "
              f"(p50 {b['ping_p50_ms']:.1f} -> {d['ping_p50_ms']:.1f}), renewal p99 {b['renew_p99_ms']:.1f} -> "
              f"{d['renew_p99_ms']:.1f} ms (p50 {b['renew_p50_ms']:.1f} -> {d['renew_p50_ms']:.1f}); script CPU "
              f"per call p99 {r['script_call_ms_p99']:.2f}, max {r['script_call_ms_max']:.2f} ms; "
              f"{r['calls_over_5ms']} call(s) over 5 ms; "
              f"{r['expired']:,} expired, {r['left_after']:,} left due; clearing cost the server "
              f"{r['server_cpu_s']:.2f} s of CPU, {r['server_cpu_us_per_expiry']:.0f} µs per expiry"
              + (f"; {r['aof_rewrites']} AOF rewrite(s) during the round" if r["aof_rewrites"] else ""))
    if args.rounds > 1:
        print_table("per mode: medians over rounds (call max: the worst)",
                    [m | {"p99": m["call_ms_p99"], "max": m["call_ms_max"], "clear": m["clear_s"],
                          "ping": m["ping_p99_ratio"], "renew": m["renew_p99_ratio"]} for m in out["modes"]],
                    [("short", "budget @in flight"), ("rounds", "rounds"), ("p99", "call p99 ms"), ("max", "call max ms"),
                     ("clear", "clear s"), ("ping", "PING p99 ×"), ("renew", "renew p99 ×")])
    print(f"{out['live']:,} live leases renewed {args.batch} a call at {args.renew_rate:g} calls/s and PING at "
          f"{args.ping_rate:g}/s, open loop; × = p99 during the storm / p99 in the {args.baseline_s:g} s just before. "
          "call ms: each reap FCALL as the server timed it (SLOWLOG, wall time); script CPU: its own os.clock "
          "report (lessor.reaper.call).")


if __name__ == "__main__":  # a reaper process of a round: python -m lessor.benchmarks.reapstorm URL MODE_JSON
    print(json.dumps(anyio.run(reap_until_clear, sys.argv[1], Mode(**json.loads(sys.argv[2])))), flush=True)
