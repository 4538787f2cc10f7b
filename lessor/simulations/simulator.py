"""The deterministic simulator: real Lua on a real server, a virtual clock, a simulated network.

A discrete-event loop in true virtual time. Each step moves the server's
virtual clock and every worker's drifting clock, then runs one event: a
worker's heartbeat or poll (real LeaseClient/LeaseKeeper code), a message
delivered or answered, a reaper pass, a submit or abort, a fault starting or
ending. Calls run one at a time, so the same plan and seed give the same event
log, byte for byte. A 30 s lease expires in microseconds of real time.

Two phases: safety (faults on, until ``plan.heal_ms``), then liveness (faults
healed; every run must finish within ``liveness_bound_ms``).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from lessor.core import events as ev
from lessor.leasing.backend import Backend
from lessor.leasing.client import Lease
from lessor.leasing.eventlog import EventLog, LogEntry
from lessor.leasing.keeper import LeaseKeeper
from lessor.leasing.reaper import Reaper
from lessor.leasing.scripts import VIRTUAL_CLOCK_KEY
from lessor.scheduler.control import abort_run
from lessor.scheduler.submit import Retries, RunSpec, submit_runs
from lessor.simulations.network import FaultSchedule
from lessor.simulations.plan import Plan
from lessor.simulations.simworker import SimWorker
from lessor.simulations.truth import Execution, Report, Truth

SERVER_EPOCH_MS = 1_000_000_000  # the virtual server clock at t = 0


def liveness_bound_ms(plan: Plan) -> int:
    """How long after heal every run must be finished (guarantee 3, plus the work itself)."""
    c = plan.config
    per_run = [(s.fail_attempts + 1) * (s.work_ms + 8 * c.poll_ms + c.rpc_timeout_ms)
               + s.fail_attempts * c.backoff_ms * 2 ** s.fail_attempts * 1.5 for s in plan.submits] or [0]
    return int(c.ttl_ms + c.grace_ms + c.reaper_interval_ms + c.heartbeat_ms + max(per_run) + 2 * c.rpc_timeout_ms)


@dataclass
class SimResult:
    """What a simulation produced: the log, the ground truth, and when things ended."""

    plan: Plan
    entries: list[LogEntry]
    raw: list[tuple[int, bytes]]        # (partition, event bytes) in log order: what determinism compares
    truth: Truth
    quiesced_ms: int | None            # true time when the last run finished (None: not all did)
    liveness_deadline_ms: int
    stats: dict[str, Any] = field(default_factory=dict)


class Simulator:
    """Runs one plan against a backend in ClockMode.VIRTUAL."""

    namespace = "sim/development"
    queue = "sim"

    def __init__(self, backend: Backend, plan: Plan, *, keeper_cls: type[LeaseKeeper] = LeaseKeeper,
                 restart_server: Callable[[], Awaitable[None]] | None = None) -> None:
        self.backend, self.plan = backend, plan
        self.keeper_cls = keeper_cls
        self.restart_server = restart_server
        self.rng = random.Random(plan.seed)
        self.faults = FaultSchedule(plan)
        self.truth = Truth(heal_ms=plan.heal_ms)
        self.now_ms = 0
        self.server_offset_ms = 0
        self._clock_set: int | None = None
        self._queue: list = []
        self._seq = 0
        self.workers: list[SimWorker] = []
        self.granted_worker: dict[int, str] = {}
        self._submit_of: dict[str, int] = {}
        self._lost_replies: dict[int, int] = {}
        self.reaper = Reaper(backend, limit=200)
        self.end_ms = plan.heal_ms + liveness_bound_ms(plan)   # the liveness deadline
        self._done: set[str] = set()
        self._last_done_check = -10**9

    # --- the event queue -----------------------------------------------------------------

    def at(self, t_ms: int, fn: Callable[[], Any], worker: SimWorker | None = None) -> None:
        """Run ``fn`` at true time t (if ``worker`` is given: only while that incarnation lives)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(t_ms, self.now_ms), self._seq, fn, worker))

    def server_ms(self) -> int:
        return SERVER_EPOCH_MS + self.now_ms + self.server_offset_ms

    async def sync_clock(self) -> None:
        """Set the server's virtual clock before a script reads it."""
        if self._clock_set != self.server_ms():
            self._clock_set = self.server_ms()
            await self.backend.redis.set(VIRTUAL_CLOCK_KEY, self._clock_set)

    def _advance(self, t_ms: int) -> None:
        delta = t_ms - self.now_ms
        if delta > 0:
            self.now_ms = t_ms
            for w in self.workers:
                if w.alive:
                    w.tick(delta)
            for w in self.workers:
                if w.running:
                    w.keeper.check_self_fence()  # the watchdog: it wakes at its own deadline

    async def _step(self) -> bool:
        if not self._queue:
            return False
        t, _, fn, worker = heapq.heappop(self._queue)
        self._advance(t)
        if worker is not None:
            if not worker.alive:
                return True
            if worker.paused:  # a stopped process runs nothing; its timers fire on resume
                self.at(self._pause_end(worker), fn, worker)
                return True
        result = fn()
        if hasattr(result, "__await__"):
            await result
        return True

    # --- the network ------------------------------------------------------------------------

    async def send(self, w: SimWorker, op: Callable[[], Awaitable[Any]], on_reply: Callable[[Any, Any], None],
                   on_server: Callable[[Any], None] | None = None, reports: list[Report] | None = None) -> None:
        """Send a request from worker ``w``: dropped, delayed, run, answered or answer lost.

        ``on_server(result)`` runs when the server executed it; ``on_reply(result, error)``
        when the worker hears back, or (None, "timeout") after ``rpc_timeout_ms``.
        """
        answered = [False]
        sent = self.now_ms
        incarnation = (w.index, w.incarnation)

        def reply(result: Any, error: Any) -> None:
            if not answered[0] and w.alive and (w.index, w.incarnation) == incarnation:
                answered[0] = True
                on_reply(result, error)

        self.at(sent + self.plan.config.rpc_timeout_ms, lambda: reply(None, "timeout"), w)
        if self.faults.partitioned(w.index, sent):
            return

        async def deliver() -> None:
            if self.faults.partitioned(w.index, self.now_ms):
                return
            await self.sync_clock()
            result = await op()
            for report in reports or ():
                report.server_ms, report.ran_ms = self.server_ms(), self.now_ms
            if on_server is not None:
                on_server(result)
            if self._lost_replies.get(w.index, 0) > 0:
                self._lost_replies[w.index] -= 1
                return
            back = self.faults.delay_ms(w.index, self.now_ms)
            if not self.faults.partitioned(w.index, self.now_ms + back):
                self.at(self.now_ms + back, lambda: reply(result, None), w)

        delay = self.faults.delay_ms(w.index, sent)
        if delay:
            self.at(sent + delay, deliver)  # the server side runs even if the worker dies meanwhile
        else:
            await deliver()

    # --- truth records ---------------------------------------------------------------------

    def truth_report(self, w: SimWorker, lease: Lease, kind: str) -> Report:
        report = Report(w.id, lease.ref, lease.token, kind, self.now_ms)
        self.truth.reports.append(report)
        return report

    def truth_execution(self, w: SimWorker, lease: Lease) -> Execution:
        execution = Execution(w.id, lease.ref, lease.token, self.now_ms, start_server_ms=self.server_ms())
        self.truth.executions.append(execution)
        return execution

    def work_ms_of(self, lease: Lease) -> int:
        return self.plan.submits[self._submit_of[lease.ref.split("/")[2]]].work_ms

    def fail_attempts_of(self, lease: Lease) -> int:
        return self.plan.submits[self._submit_of[lease.ref.split("/")[2]]].fail_attempts

    # --- scheduled happenings ----------------------------------------------------------------

    def _pause_end(self, w: SimWorker) -> int:
        ends = [f.at_ms + f.duration_ms for f in self.plan.faults
                if f.kind == "pause" and f.worker == w.index and f.at_ms <= self.now_ms]
        return min(max(ends, default=self.now_ms), self.plan.heal_ms)

    def _schedule_worker(self, w: SimWorker) -> None:
        cfg = self.plan.config

        async def heartbeat() -> None:
            await w.heartbeat()
            self.at(self.now_ms + int(cfg.heartbeat_ms / max(w.clock.rate, 1e-3)), heartbeat, w)

        async def poll() -> None:
            if self.now_ms < self.end_ms:
                await w.poll()
                self.at(self.now_ms + cfg.poll_ms * 2 ** w.idle_polls, poll, w)

        self.at(self.now_ms + cfg.heartbeat_ms, heartbeat, w)
        self.at(self.now_ms, poll, w)

    def _new_worker(self, index: int, incarnation: int) -> SimWorker:
        w = SimWorker(self, index, incarnation, self.keeper_cls)
        if incarnation == 0:
            self.workers.append(w)
        else:
            self.workers[index] = w
        self._schedule_worker(w)
        return w

    async def _submit(self, i: int) -> None:
        s = self.plan.submits[i]
        run_id = f"s{i}"
        self._submit_of[run_id] = i
        await self.sync_clock()
        await submit_runs(self.backend, [RunSpec(
            "task", namespace=self.namespace, queue=self.queue, run_id=run_id,
            retries=Retries(user=s.user_retries, system=s.system_retries, backoff_ms=self.plan.config.backoff_ms))])
        self.truth.submitted.append(run_id)

    async def _abort(self, run: int) -> None:
        run_id = f"s{run}"
        if run_id in self._submit_of:
            await self.sync_clock()
            self.truth.aborted_at_ms.setdefault(run_id, self.now_ms)
            await abort_run(self.backend, self.namespace, run_id, "aborted by the simulated control plane")

    async def _reap(self) -> None:
        cfg = self.plan.config
        if not self.faults.reaper_down(self.now_ms):
            await self.sync_clock()
            await self.reaper.reap_once()
        if self.now_ms < self.end_ms:
            self.at(self.now_ms + int(cfg.reaper_interval_ms * self.faults.reaper_factor(self.now_ms)), self._reap)

    def _schedule_faults(self) -> None:
        for f in self.plan.faults:
            if f.at_ms >= self.plan.heal_ms:
                continue
            if f.kind == "pause":
                self.at(f.at_ms, lambda f=f: self._pause(f))
            elif f.kind == "crash":
                self.at(f.at_ms, lambda f=f: self._crash(f))
            elif f.kind == "lost_reply":
                self.at(f.at_ms, lambda f=f: self._arm_lost(f))
            elif f.kind == "clock_jump":
                self.at(f.at_ms, lambda f=f: self._jump(f))
            elif f.kind == "server_restart" and self.restart_server is not None:
                self.at(f.at_ms, self._restart)
        self.at(self.plan.heal_ms, self._heal)

    def _pause(self, f) -> None:
        w = self.workers[f.worker]
        if w.running:
            w.pause()
            self.at(min(f.at_ms + f.duration_ms, self.plan.heal_ms), lambda: self._resume(w))

    def _resume(self, w: SimWorker) -> None:
        if w.alive and w.paused:
            w.resume()

    def _crash(self, f) -> None:
        w = self.workers[f.worker]
        if w.alive:
            w.crash()
            back = min(f.at_ms + max(f.duration_ms, 1), self.plan.heal_ms)
            self.at(back, lambda: self._restart_worker(w))

    def _restart_worker(self, w: SimWorker) -> None:
        if not w.alive and self.workers[w.index] is w:
            self._new_worker(w.index, w.incarnation + 1)

    def _arm_lost(self, f) -> None:
        self._lost_replies[f.worker] = self._lost_replies.get(f.worker, 0) + f.count

    def _jump(self, f) -> None:
        self.server_offset_ms += f.delta_ms
        self.truth.clock_offsets.append((self.now_ms, self.server_offset_ms))

    async def _restart(self) -> None:
        await self.restart_server()
        self._clock_set = None
        await self.sync_clock()

    def _heal(self) -> None:
        self._lost_replies.clear()
        for w in list(self.workers):
            if w.alive and w.paused:
                w.resume()
            elif not w.alive:
                self._restart_worker(w)

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> SimResult:
        """Run the plan: safety phase, heal, liveness phase; collect the log and the truth."""
        await self.backend.redis.flushall()
        await self.sync_clock()
        deadline = self.end_ms
        for i, s in enumerate(self.plan.submits):
            self.at(s.at_ms, lambda i=i: self._submit(i))
        for a in self.plan.aborts:
            self.at(a.at_ms, lambda a=a: self._abort(a.run))
        for i in range(self.plan.workers):
            self._new_worker(i, 0)
        self.at(0, self._reap)
        self._schedule_faults()
        quiesced = None
        while await self._step():
            if self.now_ms >= self.plan.heal_ms and quiesced is None and await self._all_done():
                quiesced = self.now_ms
                break
            if self.now_ms > deadline:
                break
        for w in self.workers:
            for attempt in w.attempts.values():
                if attempt.segment is not None:
                    w.suspend_attempt(attempt, "end of simulation")
        self.truth.end_ms = self.now_ms
        entries = await EventLog(self.backend).read_all()
        raw = []
        for p in range(self.backend.partitions):
            raw += [(p, fields[b"e"]) for _, fields in await self.backend.redis.xrange(self.backend.keys(p).stream)]
        return SimResult(self.plan, entries, raw, self.truth, quiesced, deadline,
                         stats=summarize(entries, self.truth))

    async def _all_done(self) -> bool:
        """Every submitted run finished? Asked at most every 50 ms of virtual time, for the runs not yet done."""
        if len(self.truth.submitted) < len(self.plan.submits) or self.now_ms - self._last_done_check < 50:
            return False
        self._last_done_check = self.now_ms
        pending = [r for r in self.truth.submitted if r not in self._done]
        pipe = self.backend.redis.pipeline(transaction=False)
        for run_id in pending:
            pipe.hget(self.backend.keys_for_run(self.namespace, run_id).run(f"{self.namespace}/{run_id}"), "phase")
        for run_id, phase in zip(pending, await pipe.execute()):
            if phase not in (b"running", None):
                self._done.add(run_id)
        return len(self._done) == len(self.truth.submitted)


def summarize(entries: list[LogEntry], truth: Truth) -> dict[str, int]:
    """The counts a person wants after a run."""
    count = lambda cls: sum(1 for e in entries if isinstance(e.event, cls))  # noqa: E731
    return {
        "runs": len(truth.submitted), "events": len(entries), "attempts": count(ev.ActionLeased),
        "failovers": sum(1 for e in entries if isinstance(e.event, ev.ActionRequeued)
                         and e.event.reason == "lease_expired"),
        "lease_expired": count(ev.LeaseExpired), "resumed_in_grace": count(ev.LeaseResumed),
        "stale_reports_refused": count(ev.ReportRejected),
        "succeeded": sum(1 for e in entries if isinstance(e.event, ev.RunCompleted) and e.event.phase == "succeeded"),
    }
