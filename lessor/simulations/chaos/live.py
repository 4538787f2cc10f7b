"""`lessor chaos`: real worker processes, real time, real faults; the simulation's checkers.

One private server (AOF, appendfsync always), a reaper, N `lessor worker`
processes each talking through its own ChaosProxy, a submitter, and a fault
injector: cut and heal a worker's connection, add latency, SIGSTOP/SIGCONT,
SIGKILL (and respawn), and one server restart from AOF. The jobs are sleeping
tasks and, about one in six, parents that await children (which a failed-over
parent re-attaches to). After ``duration`` seconds of faults everything is
healed, the runs must finish, and the same checkers judge the event log against
the workers' own records of what they ran.

``--scenario store-restart`` is another run (store.py): the store itself dies
under real workers and a real reaper, and comes back from its AOF.

Bounded in time; it ends only the processes it started.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import anyio

from lessor.core import events as ev
from lessor.core.phases import Phase
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.replay import verify
from lessor.scheduler.control import abort_run
from lessor.scheduler.query import run_phases
from lessor.scheduler.launch import worker_command
from lessor.scheduler.submit import Retries, RunSpec, submit_runs
from lessor.scheduler.values import pack_value
from lessor.server import EmbeddedServer, spawn_child
from lessor.simulations.chaos.app import APP
from lessor.simulations.chaos.proxy import ChaosProxy
from lessor.simulations.chaos.tolerate import tolerant as _tolerant
from lessor.simulations.checkers import Violation, liveness, no_runaway, single_owner
from lessor.simulations.truth import Execution, Truth

NAMESPACE, QUEUE = "chaos/development", "chaos"
TTL_MS, GRACE_MS = 1500, 1000
# Real time on a shared 2-core machine: the watchdog may wake late, so the
# self-fencing margin is wide (the simulator checks the tight case exactly).
MARGIN_MS = 800
# Timer and scheduling slack on a loaded 2-core machine; a run adds the worst lag it
# measured in its own scheduling (``Chaos.watch_lag``), since on a machine loaded past
# its cores every process, the workers' watchdogs too, wakes that much late.
TOLERANCE_MS = 150
# After heal, every run must finish within this (runs are short sleeps: only a machine
# starved of CPU takes long, and that is no reason to call the runs lost).
QUIESCE_S = 60
# A process resumed by SIGCONT after its lease expired could not stop earlier: it
# gets this long after waking (one heartbeat, plus being scheduled again) to
# notice and stop. Whatever it reports meanwhile is refused by the token.
RESUME_MS = 1000


def wall_ms() -> int:
    return int(time.time() * 1000)  # clock: live chaos evidence, compared with the server's TIME


@dataclass
class Proc:
    """One worker process incarnation and what was done to it."""

    index: int
    incarnation: int
    popen: subprocess.Popen
    proxy: ChaosProxy
    truth_path: str
    paused_since: int | None = None
    pauses: list[tuple[int, int]] = field(default_factory=list)
    killed_at: int | None = None
    exited_at: int | None = None    # it exited on its own (a crash): when chaos saw it gone

    @property
    def worker_id(self) -> str:
        return f"c{self.index}" if self.incarnation == 0 else f"c{self.index}-r{self.incarnation}"


@dataclass
class ChaosReport:
    """What a live chaos run did and found."""

    faults: dict[str, int]
    stats: dict[str, int]
    violations: list[Violation]
    overlap_ms: int
    quiesce_s: float | None
    seconds: float


class Chaos:
    """Drives one live chaos run."""

    def __init__(self, duration_s: float, workers: int, seed: int | None, say=print,
                 durability: str = "memory", appendfsync: str = "always") -> None:
        self.duration_s, self.n_workers = duration_s, workers
        self.durability = durability
        self.rng = random.Random(seed)
        self.say = say
        self.dir = tempfile.mkdtemp(prefix="lessor-chaos-")
        self.server = EmbeddedServer(appendfsync=appendfsync, workdir=os.path.join(self.dir, "server"))
        self.procs: list[Proc] = []
        self.all_procs: list[Proc] = []
        self.faults: dict[str, int] = {}
        self.submitted: list[str] = []
        self.stop_faults = anyio.Event()
        self.max_lag_ms = 0   # the worst scheduling lag this process saw (watch_lag)

    # --- processes ------------------------------------------------------------------------

    async def spawn(self, index: int, incarnation: int, proxy: ChaosProxy | None = None) -> Proc:
        proxy = proxy or await ChaosProxy(self.server.port).start()
        worker_id = f"c{index}" if incarnation == 0 else f"c{index}-r{incarnation}"
        truth_path = os.path.join(self.dir, f"truth-{worker_id}.jsonl")
        log = open(os.path.join(self.dir, f"{worker_id}.log"), "w")
        popen = spawn_child(
            worker_command(f"redis://127.0.0.1:{proxy.port}", APP, worker_id=worker_id, queue=QUEUE,
                           namespace=NAMESPACE, concurrency=6, ttl_ms=TTL_MS, grace_ms=GRACE_MS, margin_ms=MARGIN_MS,
                           drain_s=1, truth_log=truth_path, durability=self.durability),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = Proc(index, incarnation, popen, proxy, truth_path)
        self.all_procs.append(proc)
        return proc

    def count(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    # --- the actors -----------------------------------------------------------------------

    async def submitter(self, backend: Backend) -> None:
        i = 0
        while not self.stop_faults.is_set():
            run_id = f"k{i:05d}"
            if self.rng.random() < 0.15:  # a parent awaiting 1-3 children
                task, inputs = "chaos_parent", {"children": [round(self.rng.uniform(0.1, 2.0), 2)
                                                             for _ in range(self.rng.randint(1, 3))]}
            elif self.rng.random() < 0.3:  # a plain def task, in a killable process
                task, inputs = "chaos_sync", {"seconds": round(self.rng.uniform(0.1, 3.0), 2)}
            else:
                task, inputs = "chaos_task", {"seconds": round(self.rng.uniform(0.1, 3.0), 2)}
            done = await _tolerant(submit_runs(backend, [RunSpec(
                task, inputs=pack_value(inputs), namespace=NAMESPACE, queue=QUEUE, run_id=run_id,
                retries=Retries(system=5))]))
            if done is not None:  # acknowledged: it must finish
                self.submitted.append(run_id)
            if self.rng.random() < 0.05 and done is not None:  # an unacknowledged run may not exist
                await _tolerant(abort_run(backend, NAMESPACE, run_id, "aborted by chaos"))
            i += 1
            await anyio.sleep(self.rng.uniform(0.05, 0.4))

    async def reaper(self, backend: Backend) -> None:
        reaper = Reaper(backend, interval_ms=100)
        while True:
            await _tolerant(reaper.reap_once())  # the server may be restarting
            await anyio.sleep(0.1)

    async def injector(self) -> None:
        restart_at = time.monotonic() + self.duration_s / 2  # clock: chaos pacing
        while not self.stop_faults.is_set():
            await anyio.sleep(self.rng.uniform(1.0, 3.0))
            if self.stop_faults.is_set():
                return
            if time.monotonic() > restart_at:  # clock: chaos pacing
                restart_at = float("inf")
                self.say("fault: server restart (SIGKILL, start again from AOF)")
                await anyio.to_thread.run_sync(self.server.restart)
                self.count("server_restart")
                continue
            await self.worker_fault(self.rng.randrange(len(self.procs)))

    async def worker_fault(self, index: int) -> None:
        proc = self.procs[index]
        kind = self.rng.choice(["cut", "cut", "latency", "pause", "pause", "kill"])
        hold = self.rng.uniform(0.5, 4.0)
        self.count(kind)
        self.say(f"fault: {kind} {proc.worker_id} for {hold:.1f}s" if kind != "kill" else f"fault: SIGKILL {proc.worker_id}")
        if kind == "cut":
            proc.proxy.cut()
            await anyio.sleep(hold)
            proc.proxy.heal()
        elif kind == "latency":
            proc.proxy.latency_ms = self.rng.randint(50, 600)
            await anyio.sleep(hold)
            proc.proxy.heal()
        elif kind == "pause":
            proc.popen.send_signal(signal.SIGSTOP)
            proc.paused_since = wall_ms()
            await anyio.sleep(hold)
            self.resume(proc)
        else:
            proc.popen.kill()
            proc.killed_at = wall_ms()
            await anyio.sleep(hold)
            self.procs[index] = await self.spawn(index, proc.incarnation + 1, proc.proxy)

    def resume(self, proc: Proc) -> None:
        if proc.paused_since is not None:
            proc.popen.send_signal(signal.SIGCONT)
            proc.pauses.append((proc.paused_since, wall_ms()))
            proc.paused_since = None

    # --- the run ----------------------------------------------------------------------------

    async def watch_exits(self) -> None:
        """Notice a worker process that exits on its own (it must outlive every fault)."""
        while True:
            for proc in self.all_procs:
                if proc.exited_at is None and proc.killed_at is None and proc.popen.poll() is not None:
                    proc.exited_at = wall_ms()
                    self.say(f"worker {proc.worker_id} exited on its own (status {proc.popen.returncode})")
            await anyio.sleep(0.1)

    async def watch_lag(self) -> None:
        """Measure how late a 50 ms sleep wakes: the machine's scheduling lag, which the
        workers' watchdogs suffer too (judge() adds the worst of it to TOLERANCE_MS)."""
        while True:
            before = time.monotonic()  # clock: chaos pacing
            await anyio.sleep(0.05)
            lag = int((time.monotonic() - before - 0.05) * 1000)  # clock: chaos pacing
            self.max_lag_ms = max(self.max_lag_ms, lag)

    async def run(self) -> ChaosReport:
        started = time.monotonic()  # clock: chaos pacing
        self.server.start()
        try:
            async with open_backend(self.server.url, durability=self.durability) as backend:
                self.procs = [await self.spawn(i, 0) for i in range(self.n_workers)]
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.reaper, backend)
                    tg.start_soon(self.submitter, backend)
                    tg.start_soon(self.injector)
                    tg.start_soon(self.watch_exits)
                    tg.start_soon(self.watch_lag)
                    await anyio.sleep(self.duration_s)
                    self.stop_faults.set()
                    quiesce_s = await self.heal_and_wait(backend)
                    tg.cancel_scope.cancel()
                await self.stop_workers()
                return await self.judge(backend, quiesce_s, time.monotonic() - started)  # clock: chaos pacing
        finally:
            for proc in self.all_procs:
                if proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGCONT)
                    proc.popen.kill()
                    proc.popen.wait()
                await proc.proxy.stop()
            self.server.stop()

    async def heal_and_wait(self, backend: Backend) -> float | None:
        self.say("heal: every connection restored, every worker running; waiting for all runs to finish")
        await anyio.sleep(0.1)  # let a fault in progress finish its step
        for i, proc in enumerate(self.procs):
            proc.proxy.heal()
            self.resume(proc)
            if proc.popen.poll() is not None:
                self.procs[i] = await self.spawn(i, proc.incarnation + 1, proc.proxy)
        healed = time.monotonic()  # clock: chaos pacing
        with anyio.move_on_after((TTL_MS + GRACE_MS) / 1000 + QUIESCE_S):
            while not await _tolerant(self.all_finished(backend)):
                await anyio.sleep(0.2)
            return time.monotonic() - healed  # clock: chaos pacing
        return None

    async def all_finished(self, backend: Backend) -> bool:
        phases = await run_phases(backend, NAMESPACE, list(self.submitted))
        return all(phase not in (None, Phase.RUNNING) for phase in phases.values())

    async def stop_workers(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await anyio.to_thread.run_sync(lambda: proc.popen.wait(timeout=10))
            except subprocess.TimeoutExpired:
                proc.popen.kill()

    # --- the verdict --------------------------------------------------------------------------

    def truth(self) -> Truth:
        truth = Truth(submitted=list(self.submitted))
        for proc in self.all_procs:
            starts: dict[tuple[str, int], int] = {}
            if os.path.exists(proc.truth_path):
                for line in open(proc.truth_path):
                    r = json.loads(line)
                    key = (r["ref"], r["token"])
                    if r["event"] == "start":
                        starts[key] = r["at_ms"]
                    elif key in starts:
                        truth.executions += _minus_pauses(proc, key, starts.pop(key), r["at_ms"], r["ended"])
            for key, start in starts.items():  # killed mid-attempt: it stopped when it was killed
                end = proc.killed_at or proc.exited_at or wall_ms()
                truth.executions += _minus_pauses(proc, key, start, end, "killed" if proc.killed_at else "exited")
        return truth

    async def judge(self, backend: Backend, quiesce_s: float | None, seconds: float) -> ChaosReport:
        entries = await EventLog(backend).read_all()
        pairs = [(e.partition, e.event) for e in entries]
        truth = _counted(self.truth())
        overlaps = _overlaps(truth)
        violations = [Violation("workers_survive", proc.worker_id, f"exited on its own (status "
                                                                   f"{proc.popen.returncode}): {_last_error(proc)}")
                      for proc in self.all_procs if proc.exited_at is not None]
        violations += single_owner.check(pairs)
        tolerance = TOLERANCE_MS + self.max_lag_ms
        violations += [Violation("no_overlap", ref, f"two attempts executed at once for {ms} ms "
                                                    f"(tolerance {tolerance} ms)")
                       for ref, ms in overlaps.items() if ms > tolerance]
        violations += no_runaway.check_wall_clock(pairs, truth, tolerance)
        violations += liveness.check(pairs, self.submitted, 0 if quiesce_s is not None else None, 0)
        violations += [Violation("replay_verify", d.key, str(d)) for d in await verify(backend)]
        count = lambda cls: sum(1 for _, e in pairs if isinstance(e, cls))  # noqa: E731
        stats = {"runs": len(self.submitted), "events": len(pairs), "attempts": count(ev.ActionLeased),
                 "failovers": sum(1 for _, e in pairs if isinstance(e, ev.ActionRequeued) and e.reason == "lease_expired"),
                 "resumed_in_grace": count(ev.LeaseResumed), "max_sched_lag_ms": self.max_lag_ms,
                 "stale_reports_refused": count(ev.ReportRejected),
                 **{f"runs_{phase}": sum(1 for _, e in pairs if isinstance(e, ev.RunCompleted) and e.phase == phase)
                    for phase in ("succeeded", "failed", "aborted", "timed_out")}}
        return ChaosReport(self.faults, stats, violations, sum(overlaps.values()), quiesce_s, seconds)


def _last_error(proc: Proc) -> str:
    """The last line of a worker's log that names an exception (what it died of)."""
    path = os.path.join(os.path.dirname(proc.truth_path), f"{proc.worker_id}.log")
    try:
        lines = [line.strip(" |\n") for line in open(path, errors="replace") if "Error" in line or "Exception" in line]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no exception in its log"


def _minus_pauses(proc: Proc, key: tuple[str, int], start: int, end: int, ended: str) -> list[Execution]:
    """The stretches of [start, end] the process was not stopped by SIGSTOP."""
    out, cursor = [], start
    for p_start, p_end in sorted(proc.pauses):
        if p_end <= cursor or p_start >= end:
            continue
        if p_start > cursor:
            out.append(Execution(proc.worker_id, key[0], key[1], cursor, p_start, ended="paused"))
        cursor = max(cursor, p_end)
    if cursor < end:
        resumed = cursor != start and end - cursor <= RESUME_MS
        out.append(Execution(proc.worker_id, key[0], key[1], cursor, end, end_server_ms=end,
                             ended=f"resumed, then {ended}" if resumed else ended))
    return out


def _counted(truth: Truth) -> Truth:
    """The truth without the short stretches right after a SIGCONT (see RESUME_MS)."""
    return Truth(executions=[x for x in truth.executions if not x.ended.startswith("resumed, then")],
                 submitted=truth.submitted)


def _overlaps(truth: Truth) -> dict[str, int]:
    from lessor.simulations.checkers.no_overlap import overlap_ms

    return overlap_ms(truth)


def add_arguments(p) -> None:
    p.add_argument("--scenario", choices=["mix", "store-restart"], default="mix",
                   help="mix (default): worker faults, a server restart, for --duration seconds; store-restart: "
                        "--jobs jobs under a real reaper and workers while the server is killed, kept down "
                        "--outage-s seconds and restarted from its AOF; reports run twice / lost / left running")
    p.add_argument("--duration", type=float, default=60.0, help="mix: seconds of faults (default 60)")
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--seed", type=int, help="seed of the fault schedule")
    p.add_argument("--durability", default=os.environ.get("LESSOR_DURABILITY", "memory"), metavar="MODE",
                   help="durability of every process: memory (default), fsync, replicas:N, fsync+replicas:N")
    p.add_argument("--crash", choices=["process", "power"], default="process",
                   help="store-restart: process = kill -9 of the server only (the page cache keeps what it "
                        "wrote); power = kill -9 and drop the AOF bytes no fsync covered, as a machine crash "
                        "would (builds a small LD_PRELOAD shim with cc)")
    p.add_argument("--appendfsync", choices=["everysec", "always", "no"],
                   help="the server's fsync policy (default: everysec for store-restart, always for mix)")
    p.add_argument("--jobs", type=int, default=30, help="store-restart: runs submitted (default 30)")
    p.add_argument("--job-s", type=float, default=2.0, help="store-restart: seconds each job works (default 2)")
    p.add_argument("--outage-s", type=float, default=3.0,
                   help="store-restart: seconds the server stays down after the kill (default 3)")
    p.add_argument("--json", action="store_true")


def main(args) -> int:
    """`lessor chaos`."""
    import shutil

    from rich.console import Console

    from lessor.leasing.durability import Durability

    Durability.parse(args.durability)  # ConfigError before anything starts
    if getattr(args, "scenario", "mix") == "store-restart":
        from lessor.simulations.chaos import store

        args.appendfsync = args.appendfsync or "everysec"
        return store.main(args)
    if args.duration <= 0 or args.workers < 2:
        raise ValueError("--duration must be > 0 and --workers >= 2")
    console = Console(stderr=args.json)
    chaos = Chaos(args.duration, args.workers, args.seed, say=lambda text: console.print(text, markup=False),
                  durability=str(Durability.parse(args.durability)), appendfsync=args.appendfsync or "always")
    report = anyio.run(chaos.run)
    out = {"seconds": round(report.seconds, 1), "faults": report.faults, **report.stats,
           "overlap_ms": report.overlap_ms,
           "quiesce_after_heal_s": round(report.quiesce_s, 2) if report.quiesce_s is not None else None,
           "violations": [str(v) for v in report.violations]}
    if args.json:
        print(json.dumps(out))
    else:
        from rich.table import Table

        table = Table(title="live chaos summary")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in out.items():
            if key != "violations":
                table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, dict) else str(value))
        console.print(table)
        for v in report.violations:
            console.print(f"  {v}", style="red", markup=False)
        console.print("all checkers passed" if not report.violations else f"{len(report.violations)} violations "
                      f"(evidence kept in {chaos.dir})", style="green" if not report.violations else "bold red")
    if not report.violations:
        shutil.rmtree(chaos.dir, ignore_errors=True)
    return 0 if not report.violations else 1
