"""`lessor chaos --scenario store-restart`: the store dies under real workers and comes back from its AOF.

Real processes only: one valkey-server (AOF, ``appendfsync everysec`` by
default), the real ``lessor reaper`` and N real ``lessor worker`` processes
(``--no-reap``: expiry depends on the reaper process, which is SIGKILLed and
respawned twice), all with the same ``--durability``. The controller submits
``jobs`` runs at a steady pace (plain ``chaos_task`` jobs of ``job_s`` seconds,
and every fifth a ``chaos_parent`` awaiting two such children), and when half
are acknowledged it kills the server with SIGKILL, keeps it down ``outage_s``
seconds, and starts it again on the same dir, socket and port, from its AOF.

``crash="process"`` is that kill -9 alone (the kernel's page cache keeps every
AOF byte the server wrote, so nothing it acknowledged can be lost);
``crash="power"`` also drops what the AOF had not fsynced, as a machine crash
would (see powercut.py).

Verdict, from the workers' truth logs (what really ran) and the event log:

- run twice: actions whose work *completed* in truth under two or more tokens;
- lost: acknowledged runs that never succeeded (missing after the restart, or
  ended otherwise);
- left running: runs (and actions) still running when the wait ended;
- the live chaos checkers (single owner, no overlap, no runaway, liveness,
  replay --verify) and process survival (no worker or reaper exited on its own).

Bounded in time; it ends only the processes it started.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import anyio

from lessor.core import events as ev
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.durability import Durability
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.query import run_phases
from lessor.scheduler.launch import lessor_command, worker_command
from lessor.scheduler.submit import Retries, RunSpec, submit_runs
from lessor.scheduler.values import pack_value
from lessor.server import EmbeddedServer, spawn_child
from lessor.simulations.chaos.app import APP
from lessor.simulations.chaos.tolerate import tolerant as _tolerant, transient
from lessor.simulations.checkers import Violation, liveness, no_runaway, single_owner
from lessor.simulations.truth import Execution, Truth

NAMESPACE, QUEUE = "chaos/development", "chaos"
TTL_MS, GRACE_MS, MARGIN_MS = 1500, 1000, 800   # as live chaos: real time on a shared 2-core machine
TOLERANCE_MS = 150
CRASHES = ("process", "power")
_BACK = re.compile(r"(\S.*?): the server is back after an outage of ([\d.]+) s")
_LOST = re.compile(r"(\S.*?): lost the server")


def wall_ms() -> int:
    return int(time.time() * 1000)  # clock: live chaos evidence, compared with the truth logs' wall clock


@dataclass
class Process:
    """One incarnation of a worker or reaper process."""

    name: str
    popen: subprocess.Popen
    log_path: str
    truth_path: str | None = None
    killed_by_us: bool = False
    ended_ms: int | None = None   # when it was seen gone (wall clock): the end of what it was running


@dataclass
class StoreReport:
    """What a store-restart run found."""

    durability: str
    crash: str
    appendfsync: str
    jobs: int
    submitted: int
    run_twice: list[str]
    lost: dict[str, str]
    runs_left_running: list[str]
    actions_left_running: list[str]
    violations: list[Violation]
    server_down_s: float
    aof_bytes_dropped: int | None
    outages_survived: dict[str, float]
    died: dict[str, str]
    unconfirmed_reports: int
    stats: dict[str, int]
    finished_after_restart_s: float | None
    seconds: float
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.run_twice or self.lost or self.runs_left_running or self.actions_left_running
                    or self.violations or self.died)

    def as_dict(self) -> dict:
        return {"scenario": "store-restart", "durability": self.durability, "crash": self.crash,
                "appendfsync": self.appendfsync, "jobs": self.jobs, "submitted": self.submitted,
                "run_twice": len(self.run_twice), "lost": len(self.lost),
                "left_running": len(self.runs_left_running), "actions_left_running": len(self.actions_left_running),
                "run_twice_actions": self.run_twice, "lost_runs": self.lost,
                "runs_left_running": self.runs_left_running,
                "server_down_s": round(self.server_down_s, 2), "aof_bytes_dropped": self.aof_bytes_dropped,
                "outages_survived_s": self.outages_survived, "processes_died": self.died,
                "unconfirmed_reports": self.unconfirmed_reports, **self.stats,
                "finished_after_restart_s": (round(self.finished_after_restart_s, 2)
                                             if self.finished_after_restart_s is not None else None),
                "seconds": round(self.seconds, 1), "faults": self.faults,
                "violations": [str(v) for v in self.violations], "ok": self.ok}


class StoreChaos:
    """Drives one store-restart run."""

    def __init__(self, durability: str = "memory", crash: str = "process", appendfsync: str = "everysec",
                 jobs: int = 30, job_s: float = 2.0, outage_s: float = 3.0, workers: int = 3,
                 concurrency: int = 4, seed: int | None = None, say=print, finish_timeout_s: float = 90.0) -> None:
        if crash not in CRASHES:
            raise ValueError(f"crash must be one of {', '.join(CRASHES)}, got {crash!r}")
        if jobs < 4 or job_s <= 0 or outage_s < 0 or workers < 1 or concurrency < 2:
            raise ValueError("store-restart needs jobs >= 4, job_s > 0, outage_s >= 0, workers >= 1, concurrency >= 2")
        self.durability = str(Durability.parse(durability))
        self.crash, self.appendfsync = crash, appendfsync
        self.jobs, self.job_s, self.outage_s = jobs, job_s, outage_s
        self.n_workers, self.concurrency = workers, concurrency
        self.rng = random.Random(seed)
        self.say = say
        self.finish_timeout_s = finish_timeout_s
        self.dir = tempfile.mkdtemp(prefix="lessor-chaos-store-")
        server_dir = os.path.join(self.dir, "server")
        if crash == "power":
            from lessor.simulations.chaos.powercut import PowerCutServer

            self.server = PowerCutServer(appendfsync=appendfsync, workdir=server_dir)
        else:
            self.server = EmbeddedServer(appendfsync=appendfsync, workdir=server_dir,
                                         extra_args=("--auto-aof-rewrite-percentage", "0"))
        self.workers: list[Process] = []
        self.reaper: Process | None = None
        self.all_procs: list[Process] = []
        self.incarnations: dict[str, int] = defaultdict(int)
        self.submitted: list[str] = []
        self.faults: list[str] = []
        self.died: dict[str, str] = {}
        self.server_down_s = 0.0
        self.aof_bytes_dropped: int | None = None
        self.restarted_at: float | None = None
        self.faults_done = anyio.Event()
        self._submitted_changed = anyio.Event()

    # --- processes ---------------------------------------------------------------------------

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("LESSOR_REDIS_URL", "LESSOR_DURABILITY")}
        env["COLUMNS"] = "400"  # one log line per record: the verdict reads them
        return env

    def _incarnation(self, base: str) -> str:
        """``base`` the first time, then ``base-r1``, ``base-r2``, ... (one name per process started)."""
        n = self.incarnations[base]
        self.incarnations[base] += 1
        return base if n == 0 else f"{base}-r{n}"

    def _spawn(self, name: str, argv: list[str], truth_path: str | None = None) -> Process:
        log_path = os.path.join(self.dir, f"{name}.log")
        popen = spawn_child(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=self._env())
        proc = Process(name, popen, log_path, truth_path)
        self.all_procs.append(proc)
        return proc

    def spawn_worker(self, index: int) -> Process:
        name = self._incarnation(f"c{index}")
        truth_path = os.path.join(self.dir, f"truth-{name}.jsonl")
        return self._spawn(name, worker_command(
            self.server.tcp_url, APP, worker_id=name, queue=QUEUE, namespace=NAMESPACE, concurrency=self.concurrency,
            ttl_ms=TTL_MS, grace_ms=GRACE_MS, margin_ms=MARGIN_MS, drain_s=1, reap=False,
            durability=self.durability, truth_log=truth_path), truth_path)

    def spawn_reaper(self) -> Process:
        return self._spawn(self._incarnation("reaper"), lessor_command(
            "reaper", "--redis-url", self.server.url, "--interval-ms", "100", "--durability", self.durability))

    async def ready(self, proc: Process, timeout_s: float = 30.0) -> None:
        """Wait until the process says it is connected (its first log line after open_backend).

        ``lessor worker`` and ``lessor reaper`` refuse to *start* against a server they cannot
        reach (exit 3); the outage they must outlive is one that begins once they run.
        """
        marker = "reaper on " if proc.name.startswith("reaper") else f"worker {proc.name} on "
        with anyio.move_on_after(timeout_s):
            while proc.popen.poll() is None:
                with open(proc.log_path, errors="replace") as f:
                    if marker in f.read():
                        return
                await anyio.sleep(0.05)

    def kill(self, proc: Process) -> None:
        proc.killed_by_us = True
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()
        proc.ended_ms = wall_ms()

    async def watch_processes(self) -> None:
        """A worker or reaper that exits on its own is a failure: record it, start another."""
        while True:
            await anyio.sleep(0.25)
            for i, proc in enumerate(list(self.workers)):
                if proc.popen.poll() is not None and not proc.killed_by_us:
                    proc.ended_ms = wall_ms()
                    self.died[proc.name] = f"exit code {proc.popen.returncode} (see {proc.log_path})"
                    self.say(f"! {proc.name} exited on its own ({self.died[proc.name]}); starting another")
                    self.workers[i] = self.spawn_worker(i)
            reaper = self.reaper
            if reaper is not None and reaper.popen.poll() is not None and not reaper.killed_by_us:
                reaper.ended_ms = wall_ms()
                self.died[reaper.name] = f"exit code {reaper.popen.returncode} (see {reaper.log_path})"
                self.say(f"! {reaper.name} exited on its own ({self.died[reaper.name]}); starting another")
                self.reaper = self.spawn_reaper()

    # --- the actors ----------------------------------------------------------------------------

    def spec(self, i: int) -> RunSpec:
        if i % 5 == 4:  # a parent that awaits two children of job_s each
            task, inputs = "chaos_parent", {"children": [self.job_s, self.job_s]}
        else:
            task, inputs = "chaos_task", {"seconds": self.job_s}
        return RunSpec(task, inputs=pack_value(inputs), namespace=NAMESPACE, queue=QUEUE, run_id=f"s{i:03d}",
                       retries=Retries(system=5))

    async def submit_all(self, backend: Backend, gap_s: float) -> None:
        """Submit every job, each retried (same run id: idempotent) until acknowledged."""
        for i in range(self.jobs):
            spec = self.spec(i)
            while True:
                try:
                    await submit_runs(backend, [spec])
                    break
                except Exception as exc:  # the server is down or restarting: same run id again
                    if not transient(exc):
                        raise
                    await anyio.sleep(0.2)
            self.submitted.append(spec.run_id)
            self._submitted_changed.set()
            await anyio.sleep(gap_s * self.rng.uniform(0.5, 1.5))

    async def _until_submitted(self, n: int) -> None:
        while len(self.submitted) < n:
            self._submitted_changed = anyio.Event()
            await self._submitted_changed.wait()

    def fault(self, text: str) -> None:
        self.faults.append(text)
        self.say(f"fault: {text}")

    async def kill_reaper(self, down_s: float, when: str) -> None:
        self.fault(f"SIGKILL {self.reaper.name} ({when}); respawned after {down_s:g} s")
        self.kill(self.reaper)
        await anyio.sleep(down_s)
        self.reaper = self.spawn_reaper()
        await self.ready(self.reaper)

    async def injector(self) -> None:
        await self._until_submitted(max(1, self.jobs // 4))
        await self.kill_reaper(1.0, "before the server crash")
        await self._until_submitted(self.jobs // 2)
        await anyio.sleep(self.rng.uniform(0.0, 0.5))  # not in step with the submissions
        what = "kill -9 and power cut (unsynced AOF tail dropped)" if self.crash == "power" else "kill -9"
        self.fault(f"server {what}; down {self.outage_s:g} s, then restart from its AOF on the same "
                   "socket and port")
        down_at = time.monotonic()  # clock: chaos pacing
        if self.crash == "power":
            cut = await anyio.to_thread.run_sync(self.server.cut)
            self.aof_bytes_dropped = cut.bytes_dropped
            self.say(f"       power cut dropped {cut.bytes_dropped} bytes of AOF that no fsync had covered")
        else:
            await anyio.to_thread.run_sync(self.server.crash)
        await anyio.sleep(self.outage_s)
        await anyio.to_thread.run_sync(self.server.start)
        self.restarted_at = time.monotonic()  # clock: chaos pacing
        self.server_down_s = self.restarted_at - down_at
        self.say(f"       server back after {self.server_down_s:.1f} s (AOF loaded)")
        await anyio.sleep(1.0)
        await self.kill_reaper(1.5, "after the restart")
        self.faults_done.set()

    # --- the run -------------------------------------------------------------------------------

    async def run(self) -> StoreReport:
        started = time.monotonic()  # clock: chaos pacing
        self.server.start()
        try:
            async with open_backend(self.server.url, durability=self.durability) as backend:
                self.reaper = self.spawn_reaper()
                self.workers = [self.spawn_worker(i) for i in range(self.n_workers)]
                for proc in (self.reaper, *self.workers):
                    await self.ready(proc)
                slots = self.n_workers * self.concurrency
                gap_s = max(0.05, self.job_s / slots)  # about as fast as the workers can take them
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.watch_processes)
                    tg.start_soon(self.injector)
                    await self.submit_all(backend, gap_s)
                    await self.faults_done.wait()
                    finished_s = await self.wait_finished(backend)
                    tg.cancel_scope.cancel()
                await self.stop_processes()
                return await self.judge(backend, finished_s, time.monotonic() - started)  # clock: chaos pacing
        finally:
            for proc in self.all_procs:
                if proc.popen.poll() is None:
                    proc.popen.kill()
                    proc.popen.wait()
            self.server.stop()

    async def wait_finished(self, backend: Backend) -> float | None:
        """Seconds after the restart until no acknowledged run is still running (None: timed out)."""
        self.say("faults over: waiting for every run to finish")
        with anyio.move_on_after(self.finish_timeout_s):
            while True:
                phases = await _tolerant(self.run_phases(backend))
                if phases is not None and b"running" not in phases.values():
                    return time.monotonic() - (self.restarted_at or 0)  # clock: chaos pacing
                await anyio.sleep(0.2)
        return None

    async def run_phases(self, backend: Backend) -> dict[str, bytes | None]:
        phases = await run_phases(backend, NAMESPACE, list(self.submitted))
        return {run_id: phase and phase.value.encode() for run_id, phase in phases.items()}

    async def stop_processes(self) -> None:
        procs = [p for p in (*self.workers, self.reaper) if p is not None and p.popen.poll() is None]
        for proc in procs:
            proc.killed_by_us = True
            proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await anyio.to_thread.run_sync(lambda: proc.popen.wait(timeout=10))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
            proc.ended_ms = wall_ms()

    # --- the verdict -----------------------------------------------------------------------------

    def truth_records(self) -> tuple[Truth, dict[str, set[int]]]:
        """Executions (for the checkers) and, per action, the tokens whose work completed."""
        truth = Truth(submitted=list(self.submitted))
        completed: dict[str, set[int]] = defaultdict(set)
        for proc in self.all_procs:
            if not proc.truth_path or not os.path.exists(proc.truth_path):
                continue
            starts: dict[tuple[str, int], int] = {}
            with open(proc.truth_path) as f:
                for line in f:
                    r = json.loads(line)
                    key = (r["ref"], r["token"])
                    if r["event"] == "start":
                        starts[key] = r["at_ms"]
                    elif key in starts:
                        truth.executions.append(Execution(proc.name, key[0], key[1], starts.pop(key), r["at_ms"],
                                                          end_server_ms=r["at_ms"], ended=r["ended"]))
                        if r["ended"] == "completed":
                            completed[key[0]].add(key[1])
            for key, start in starts.items():  # still running when the process ended (killed, died, stopped)
                truth.executions.append(Execution(proc.name, key[0], key[1], start, proc.ended_ms or wall_ms(),
                                                  ended="process ended"))
        return truth, completed

    def process_logs(self) -> tuple[dict[str, float], int]:
        """Per process (and component), the longest outage it logged recovering from; unconfirmed reports."""
        survived: dict[str, float] = {}
        unconfirmed = 0
        for proc in self.all_procs:
            if not os.path.exists(proc.log_path):
                continue
            with open(proc.log_path, errors="replace") as f:
                text = f.read()
            for line in text.splitlines():
                m = _BACK.search(line)
                if m:
                    component = re.sub(r"^.*?(worker|lease keeper|watcher|reaper)", r"\1", m.group(1)).strip()
                    key = f"{proc.name}: {component}"
                    survived[key] = max(survived.get(key, 0.0), float(m.group(2)))
                m = re.search(r"stopped: WorkerStatistics\(.*?unconfirmed=(\d+)", line)
                if m:
                    unconfirmed += int(m.group(1))
        return survived, unconfirmed

    async def judge(self, backend: Backend, finished_s: float | None, seconds: float) -> StoreReport:
        entries = await EventLog(backend).read_all()
        pairs = [(e.partition, e.event) for e in entries]
        truth, completed = self.truth_records()
        run_twice = sorted(ref for ref, tokens in completed.items() if len(tokens) > 1)
        phases = await self.run_phases(backend)
        lost = {run: ("missing after the restart (its submission was lost)" if phase is None
                      else f"ended {phase.decode()}")
                for run, phase in phases.items() if phase != b"succeeded" and phase != b"running"}
        left = sorted(run for run, phase in phases.items() if phase == b"running")
        actions_left = await self.actions_left_running(backend)

        from lessor.simulations.checkers.no_overlap import overlap_ms

        violations = single_owner.check(pairs)
        violations += [Violation("no_overlap", ref, f"two attempts executed at once for {ms} ms")
                       for ref, ms in overlap_ms(truth).items() if ms > TOLERANCE_MS]
        violations += no_runaway.check_wall_clock(pairs, truth, TOLERANCE_MS)
        violations += liveness.check(pairs, self.submitted, 0 if finished_s is not None else None, 0)
        violations += [Violation("replay_verify", d.key, str(d)) for d in await verify(backend)]
        survived, unconfirmed = self.process_logs()
        count = lambda cls: sum(1 for _, e in pairs if isinstance(e, cls))  # noqa: E731
        stats = {"events": len(pairs), "attempts": count(ev.ActionLeased),
                 "failovers": sum(1 for _, e in pairs if isinstance(e, ev.ActionRequeued) and e.reason == "lease_expired"),
                 "stale_reports_refused": count(ev.ReportRejected),
                 "runs_succeeded": sum(1 for p in phases.values() if p == b"succeeded")}
        return StoreReport(self.durability, self.crash, self.appendfsync, self.jobs, len(self.submitted), run_twice,
                           lost, left, actions_left, violations, self.server_down_s, self.aof_bytes_dropped, survived,
                           dict(self.died), unconfirmed, stats, finished_s, seconds, self.faults)

    async def actions_left_running(self, backend: Backend) -> list[str]:
        """Actions of the submitted runs still running (no worker is left: nobody owns them)."""
        from lessor.scheduler.query import run_actions

        out = []
        for run_id in self.submitted:
            try:
                infos = await run_actions(backend, NAMESPACE, run_id)
            except Exception:  # noqa: BLE001 - a lost run has no actions
                continue
            out += [f"{run_id}/{a.action_id}" for a in infos if a.phase.value == "running"]
        return out


def render(report: StoreReport, console, workdir: str) -> None:
    """The readable summary."""
    from rich.table import Table

    d = report.as_dict()
    table = Table(title=f"store-restart: durability {report.durability}, crash {report.crash}, "
                        f"appendfsync {report.appendfsync}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("jobs submitted (acknowledged)", f"{report.submitted} of {report.jobs}"),
            ("run twice (work completed under 2+ tokens)", len(report.run_twice)),
            ("lost (acknowledged, never succeeded)", len(report.lost)),
            ("left running (runs / actions)", f"{len(report.runs_left_running)} / {len(report.actions_left_running)}"),
            ("server down (kill to answering again)", f"{report.server_down_s:.1f} s"),
            ("AOF bytes dropped by the power cut", "-" if report.aof_bytes_dropped is None else report.aof_bytes_dropped),
            ("processes that exited on their own", len(report.died)),
            ("reports dropped unconfirmed by workers", report.unconfirmed_reports),
            ("attempts / failovers / stale refused", f"{d['attempts']} / {d['failovers']} / {d['stale_reports_refused']}"),
            ("all finished after the restart", "no" if report.finished_after_restart_s is None
             else f"{report.finished_after_restart_s:.1f} s"),
            ("wall time", f"{report.seconds:.1f} s")]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    if report.outages_survived:
        console.print("outages survived (longest each component logged recovering from): " + ", ".join(
            f"{k} {v:.1f} s" for k, v in sorted(report.outages_survived.items())), markup=False)
    for ref in report.run_twice:
        console.print(f"  run twice: {ref}", style="red", markup=False)
    for run, why in report.lost.items():
        console.print(f"  lost: {run}: {why}", style="red", markup=False)
    for run in report.runs_left_running:
        console.print(f"  left running: {run}", style="red", markup=False)
    for name, why in report.died.items():
        console.print(f"  died: {name}: {why}", style="red", markup=False)
    for v in report.violations:
        console.print(f"  {v}", style="red", markup=False)
    if report.ok:
        console.print("0 run twice, 0 lost, 0 left running; all checkers passed", style="green")
    else:
        console.print(f"NOT OK (evidence kept in {workdir})", style="bold red", markup=False)


def main(args) -> int:
    """`lessor chaos --scenario store-restart`."""
    import shutil

    from rich.console import Console

    console = Console(stderr=args.json)
    chaos = StoreChaos(durability=args.durability, crash=args.crash, appendfsync=args.appendfsync, jobs=args.jobs,
                       job_s=args.job_s, outage_s=args.outage_s, workers=args.workers, seed=args.seed,
                       say=lambda text: console.print(text, markup=False))
    report = anyio.run(chaos.run)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        render(report, console, chaos.dir)
    if report.ok:
        shutil.rmtree(chaos.dir, ignore_errors=True)
    return 0 if report.ok else 1
