"""The deterministic simulator: real Lua on a real server, a virtual clock, a simulated network.

A discrete-event loop in true virtual time. Each step moves the server's
virtual clock and every worker's drifting clock, then runs one event: a
worker's heartbeat or poll (real LeaseClient/LeaseKeeper code), a message
delivered or answered, a reaper pass, a submit or abort, a fault starting or
ending. Calls run one at a time, so the same plan and seed give the same event
log, byte for byte. A 30 s lease expires in microseconds of real time.

Two phases: safety (faults on, until ``plan.heal_ms``), then liveness (faults
healed; every run must finish within ``liveness_bound_ms``).

The workload is the whole API: runs whose tasks submit children (fenced by
their token) and may await them, runs that share a cache key, runs submitted
again with their idempotency key, aborts that reach a subtree. Each worker's
watchdog is a timer at its exact instant (``LeaseKeeper._watchdog``'s sleep, on
the worker's own clock), not a check made at other events.

Before every script call the simulator notes the step, the true time, the
server's clock and where each partition's stream ends (``truth.calls``, one
pipelined round trip with setting the clock): the checkers place every event
of the final log at the call that wrote it (``checkers/history.py``), and so
rebuild what was true at each instant without trusting the server's answers.

Store faults: the server may crash and come back from an AOF cut back to a
point after the last modelled fsync (``DiskModel``), or be replaced by a
lagging replica (its data rolled back ``lag_ms``, a new replication id); the
reapers' connections may fail (``InjectedErrors``). The truth records which
steps each data loss rolled back, so checkers can tell a write the system lost
on purpose (memory durability, a failover) from one it promised to keep.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import anyio

from lessor.core import events as ev
from lessor.core.phases import Phase
from lessor.errors import IdempotencyConflict, LessorError, ServerRefused
from lessor.leasing.backend import Backend
from lessor.leasing.client import Lease
from lessor.leasing.eventlog import EventLog, LogEntry
from lessor.leasing.fairshare import set_fair_share
from lessor.leasing.keeper import LeaseKeeper
from lessor.leasing.reaper import Reaper
from lessor.leasing.scripts import VIRTUAL_CLOCK_KEY
from lessor.scheduler.api import CacheKey, lookup_cache
from lessor.scheduler.control import UnknownRun, abort_run
from lessor.scheduler.query import run_phases
from lessor.scheduler.outcome import POLICY, Outcome, Policy
from lessor.scheduler.schedules import Ticker, create_schedule
from lessor.scheduler.submit import Retries, RunSpec, idempotent_run_id, submit_runs
from lessor.scheduler.values import pack_value
from lessor.simulations.checkers import fair_share
from lessor.simulations.network import FaultSchedule, InjectedErrors
from lessor.simulations.plan import DEFAULT_NAMESPACE, Fault, Plan, Submit
from lessor.simulations.simworker import ChildSpec, SimWorker
from lessor.simulations.truth import Call, DataLoss, Execution, Grant, Report, ReportChain, Resubmit, Truth

SERVER_EPOCH_MS = 1_000_000_000  # the virtual server clock at t = 0
SCHEDULE_QUEUE = "sim-schedules"   # where scheduled runs wait (no simulated worker takes from it)
CATCHUP_ORDER = ("all", "latest", "none")


def liveness_bound_ms(plan: Plan) -> int:
    """How long after heal every run must be finished (guarantee 3, plus the work itself)."""
    c = plan.config
    per_run = [(s.fail_attempts + 1) * (s.work_ms + 8 * c.poll_ms + c.rpc_timeout_ms)
               + s.fail_attempts * c.backoff_ms * 2 ** s.fail_attempts * 1.5
               + s.children * (s.child_work_ms + 8 * c.poll_ms + 2 * c.rpc_timeout_ms) for s in plan.submits] or [0]
    return int(c.ttl_ms + c.grace_ms + c.reaper_interval_ms + c.heartbeat_ms + max(per_run) + 2 * c.rpc_timeout_ms)


class Store(Protocol):
    """What the simulator may do to the server process (explore.SimServer)."""

    can_restart: bool
    unused_port: int            # nothing listens there: REPLICAOF to it never syncs

    async def restart(self) -> None: ...                  # SIGKILL, start again from the whole AOF
    async def crash_to(self, aof_size: int) -> None: ...  # SIGKILL, cut the incr AOF to this size, start
    def aof_size(self) -> int: ...                        # the incr AOF file's size now
    def refresh_aof(self) -> None: ...                    # after a rewrite: find the new incr file


class DiskModel:
    """What the server's AOF holds on disk, as modelled (appendfsync everysec, by virtual time).

    The real file is written in full (the sim server runs appendfsync always); the
    model decides how much of it a crash keeps. Its size is recorded after every
    simulator step; a sync point is the end of a step all of whose writes are on
    disk: every 1000 ms of virtual time (everysec), and the step in which the
    server answered a WAITAOF with numlocal >= 1 (observed on the reply itself,
    whatever lessor's code makes of it). A crash cuts the file at the end of a
    seeded random step between the last sync point and now: always at a command
    boundary, so the restarted server loads it whole.
    """

    SYNC_EVERY_MS = 1000

    def __init__(self, size_of: Callable[[], int]) -> None:
        self.size_of = size_of
        self.sync_step = 0
        self.sizes: list[tuple[int, int, int]] = []   # (step, incr AOF size after it, true ms), since the sync point

    def record(self, step: int, now_ms: int) -> None:
        self.sizes.append((step, self.size_of(), now_ms))

    def synced(self, step: int) -> None:
        """Everything up to the end of ``step`` is on disk."""
        if step > self.sync_step:
            self.sync_step = step
            self.sizes = [x for x in self.sizes if x[0] >= step]

    def cut(self, rng: random.Random) -> tuple[int, int, int]:
        """A crash: the (step, size, ms) the file is cut back to: the end of a step since the sync point."""
        return rng.choice([x for x in self.sizes if x[0] >= self.sync_step])

    def restarted(self, step: int) -> None:
        """The server came back from what is on disk: all of it is synced now."""
        self.sizes = []
        self.sync_step = step


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

    namespace = DEFAULT_NAMESPACE   # the schedules' namespace; each run's is plan.namespace_of(i)
    queue = "sim"

    def __init__(self, backend: Backend, plan: Plan, *, keeper_cls: type[LeaseKeeper] = LeaseKeeper,
                 restart_server: Callable[[], Awaitable[None]] | None = None, store: Store | None = None,
                 reaper_backend: Backend | None = None, injected: InjectedErrors | None = None,
                 reaper_cls: type[Reaper] = Reaper, policy: Policy = POLICY) -> None:
        """``backend`` carries the plan's durability; ``reaper_backend`` is what every reaper
        (the dedicated one, each worker's passes) talks through: the same server, over
        connections that fail while ``injected.on`` (store_errors faults). ``policy``: the
        outcome policy every simulated worker runs (the real Worker's, unless a test breaks it)."""
        self.backend, self.plan = backend, plan
        self.keeper_cls = keeper_cls
        self.store = store if store is not None and store.can_restart else None
        self.restart_server = restart_server or (self.store.restart if self.store else None)
        self.reaper_backend = reaper_backend or backend
        self.injected = injected or InjectedErrors()
        self._failed_before = self.injected.failed_calls
        self.reaper_cls = reaper_cls
        self.policy = policy
        self.rng = random.Random(plan.seed)
        self.faults = FaultSchedule(plan)
        self.truth = Truth(heal_ms=plan.heal_ms, durability=plan.config.durability, epoch_ms=SERVER_EPOCH_MS)
        self.now_ms = 0
        self.step_no = 0
        self.disk: DiskModel | None = None
        self._snapshots: dict[int, list[tuple[bytes, int, bytes]]] = {}
        self._snapshot_steps: dict[int, tuple[int, int]] = {}
        self.server_offset_ms = 0
        self._clock_set: int | None = None
        self._queue: list = []
        self._seq = 0
        self.workers: list[SimWorker] = []
        self._submit_of: dict[str, int] = {}
        self.run_ids = [run_id_of(plan.namespace_of(i), i, s) for i, s in enumerate(plan.submits)]
        self.namespace_of_run = {run_id: plan.namespace_of(i) for i, run_id in enumerate(self.run_ids)}
        self._streams = [backend.keys(p).stream for p in range(backend.partitions)]
        self._lost_replies: dict[int, int] = {}
        self.reaper: Reaper | None = self.new_reaper()
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
        """Set the server's virtual clock (a server that came back has none)."""
        if self._clock_set != self.server_ms():
            self._clock_set = self.server_ms()
            await self.backend.redis.set(VIRTUAL_CLOCK_KEY, self._clock_set)

    async def before_call(self) -> int:
        """Before each script call: set the server's virtual clock and note where every
        partition's stream ends, in one round trip. Returns the call's index in ``truth.calls``
        (what the call appends is at those positions and after: ``checkers/history.py``)."""
        pipe = self.backend.redis.pipeline(transaction=False)
        if self._clock_set != self.server_ms():
            self._clock_set = self.server_ms()
            pipe.set(VIRTUAL_CLOCK_KEY, self._clock_set)
        for stream in self._streams:
            pipe.xlen(stream)
        lens = await pipe.execute()
        self.truth.calls.append(Call(self.step_no, self.now_ms, self.server_ms(),
                                     tuple(int(n) for n in lens[-len(self._streams):])))
        return len(self.truth.calls) - 1

    def server_error(self, what: str, exc: LessorError) -> None:
        """A script refused a call lessor's own code built (or failed inside): always a bug."""
        self.truth.server_errors.append((what, self.now_ms, str(exc)))

    def new_reaper(self, **kwargs) -> Reaper:
        """A reaper process (the real Reaper class, or the switch's) on the reapers' connections."""
        return self.reaper_cls(self.reaper_backend, limit=200, **kwargs)

    def _advance(self, t_ms: int) -> None:
        delta = t_ms - self.now_ms
        self.injected.on = self.faults.store_errors(t_ms)
        if delta > 0:
            if self.disk is not None and t_ms // DiskModel.SYNC_EVERY_MS > self.now_ms // DiskModel.SYNC_EVERY_MS:
                self.disk.synced(self.step_no - 1)  # everysec: what was written before this step is on disk
            self.now_ms = t_ms
            for w in self.workers:
                if w.alive:
                    w.tick(delta)

    async def _step(self) -> bool:
        if not self._queue:
            return False
        t, _, fn, worker = heapq.heappop(self._queue)
        self.step_no += 1
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
        if self.disk is not None:
            self.disk.record(self.step_no, self.now_ms)
        return True

    def observe_waitaof(self, response: Any, **options: Any) -> Any:
        """Response callback for WAITAOF: the server said this step's writes are on its disk."""
        if self.disk is not None and isinstance(response, (list, tuple)) and response and int(response[0]) >= 1:
            self.disk.synced(self.step_no)
        return response

    # --- the network ------------------------------------------------------------------------

    async def send(self, w: SimWorker, op: Callable[[], Awaitable[Any]], on_reply: Callable[[Any, Any], None],
                   on_server: Callable[[Any], None] | None = None, reports: list[Report] | None = None,
                   reads_only: bool = False) -> None:
        """Send a request from worker ``w``: dropped, delayed, run, answered or answer lost.

        ``on_server(result)`` runs when the server executed it; ``on_reply(result, error)``
        when the worker hears back, or (None, "timeout") after ``rpc_timeout_ms``.
        ``reads_only``: it runs no script (nothing to note in ``truth.calls``).
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
            call = None if reads_only else await self.before_call()
            try:
                result, error = await op(), None
            except LessorError as exc:  # the store's own answer (StoreUnavailable, NotDurable, ...): sent back
                result, error = None, exc
                if isinstance(exc, ServerRefused):
                    self.server_error(f"a request of {w.id}", exc)
            for report in reports or ():
                report.server_ms, report.ran_ms, report.ran_step = self.server_ms(), self.now_ms, self.step_no
                report.ran_call = call
            if on_server is not None and error is None:
                on_server(result)
            if self._lost_replies.get(w.index, 0) > 0:
                self._lost_replies[w.index] -= 1
                return
            back = self.faults.reply_delay_ms(w.index, self.now_ms)
            if not self.faults.partitioned(w.index, self.now_ms + back):
                self.at(self.now_ms + back, lambda: reply(result, error), w)

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

    def truth_chain(self, w: SimWorker, lease: Lease, kind: str) -> ReportChain:
        chain = ReportChain(w.id, lease.ref, lease.token, kind, self.now_ms)
        self.truth.chains.append(chain)
        return chain

    def truth_grant(self, w: SimWorker, lease: Lease, ran_step: int, ran_ms: int) -> None:
        self.truth.grants.append(Grant(w.id, lease.ref, lease.token, lease.partition, self.now_ms, ran_step, ran_ms))

    def calls_so_far(self) -> int:
        return len(self.truth.calls)

    def truth_execution(self, w: SimWorker, lease: Lease) -> Execution:
        execution = Execution(w.id, lease.ref, lease.token, self.now_ms, start_server_ms=self.server_ms())
        self.truth.executions.append(execution)
        return execution

    def _submit_for(self, lease: Lease) -> Submit:
        return self.plan.submits[self._submit_of[lease.ref.split("/")[2]]]

    def work_ms_of(self, lease: Lease) -> int:
        submit = self._submit_for(lease)
        return submit.work_ms if lease.action == "a0" else submit.child_work_ms

    def children_of(self, lease: Lease) -> ChildSpec | None:
        """The children a root action's task submits (ctx.submit, or ctx.call if it awaits them)."""
        submit = self._submit_for(lease)
        if lease.action != "a0" or not submit.children:
            return None
        ids = tuple(f"{lease.action}.{n + 1}" for n in range(submit.children))  # as TaskContext.submit names them
        return ChildSpec(ids, "child", pack_value({"of": lease.ref}), submit.awaits_children)

    def run_task(self, w: SimWorker, lease: Lease, children_failed: str | None = None) -> Outcome:
        """The attempt's task did its work: the plan's first ``fail_attempts`` attempts of a root
        action raise (a user error), as does a task whose awaited child did not succeed
        (ChildFailed); later ones return a result naming the attempt. What it produced is
        recorded before any report is decided."""
        if lease.action == "a0" and lease.attempt <= self._submit_for(lease).fail_attempts:
            produced = Outcome(error=f"RuntimeError: attempt {lease.attempt} failed on purpose")
        elif children_failed is not None:
            produced = Outcome(error=f"ChildFailed: {children_failed}")
        else:
            produced = Outcome(result=pack_value(f"{lease.ref}#{lease.token}"))
        self.truth.produced[(lease.ref, lease.token)] = "result" if produced.error is None else "error"
        if produced.result is not None:
            self.truth.results[(lease.ref, lease.token)] = produced.result
        return produced

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

        async def reap() -> None:
            if self.now_ms < self.end_ms:
                await w.reap()
                self.at(self.now_ms + int(cfg.worker_reap_ms / max(w.clock.rate, 1e-3)), reap, w)

        async def tick_schedules() -> None:
            if self.now_ms < self.end_ms:
                await w.tick_schedules()
                self.at(self.now_ms + int(cfg.worker_reap_ms / max(w.clock.rate, 1e-3)), tick_schedules, w)

        def watchdog() -> None:
            # LeaseKeeper._watchdog: sleep (on the worker's own clock) until the earliest self-fence
            # deadline, at most a heartbeat, then check: a timer at its exact instant, to the ms.
            w.keeper.check_self_fence()
            self.at(self.now_ms + true_ms(w.keeper.until_next_fence_ms(), w.clock.rate), watchdog, w)

        self.at(self.now_ms + cfg.heartbeat_ms, heartbeat, w)
        self.at(self.now_ms, poll, w)
        self.at(self.now_ms + cfg.worker_reap_ms, reap, w)
        if cfg.schedules:
            self.at(self.now_ms + cfg.worker_reap_ms // 2, tick_schedules, w)
        self.at(self.now_ms + true_ms(w.keeper.until_next_fence_ms(), w.clock.rate), watchdog, w)

    def _new_worker(self, index: int, incarnation: int) -> SimWorker:
        w = SimWorker(self, index, incarnation, self.keeper_cls)
        if incarnation == 0:
            self.workers.append(w)
        else:
            self.workers[index] = w
        self._schedule_worker(w)
        return w

    async def _spec(self, i: int) -> RunSpec:
        """Submit ``i`` as the embedding API makes it (``Client.submit_run``): with an idempotency
        key if the plan submits it again, and with a cache key (and a cached result if the cache
        has one: then the run completes at once with cache_hit) if it is in a cache group."""
        s = self.plan.submits[i]
        namespace = self.plan.namespace_of(i)
        spec = RunSpec("task", namespace=namespace, queue=self.queue,
                       retries=Retries(user=s.user_retries, system=s.system_retries,
                                       backoff_ms=self.plan.config.backoff_ms))
        if s.resubmit_ms is not None:
            spec = dataclasses.replace(spec, idempotency_key=f"k{i}")
        else:
            spec = dataclasses.replace(spec, run_id=f"s{i}")
        if s.cache is not None:
            # The cache is per namespace; the namespace joins the key when there are several, so
            # that truth.cache, keyed by (partition, key), cannot mix two namespaces' entries.
            group = {"cache group": s.cache} | ({"namespace": namespace} if self.plan.several_namespaces() else {})
            inputs = pack_value(group)
            key = CacheKey("sim").key_for(inputs)
            spec = dataclasses.replace(spec, inputs=inputs, cache_key=key,
                                       cached_result=await lookup_cache(self.backend, namespace, key))
        return spec

    async def _submit(self, i: int) -> None:
        run_id = self.run_ids[i]
        self._submit_of[run_id] = i
        spec = await self._spec(i)
        await self.before_call()
        try:
            await submit_runs(self.backend, [spec])
        except ServerRefused as exc:
            self.server_error(f"the submit of {run_id}", exc)
            return
        self.truth.submitted.append(run_id)
        self.truth.submit_steps[run_id] = self.step_no

    async def _resubmit(self, i: int) -> None:
        """The same request again, with the same idempotency key: the same run comes back."""
        run_id = self.run_ids[i]
        if run_id not in self.truth.submit_steps:
            return
        spec = await self._spec(i)
        call = await self.before_call()
        try:
            (submitted,) = await submit_runs(self.backend, [spec])
        except (ServerRefused, IdempotencyConflict) as exc:  # the same request is never a conflict
            self.server_error(f"the resubmit of {run_id}", exc)
            return
        self.truth.resubmits.append(Resubmit(run_id, call, self.step_no, submitted.created))

    async def _abort(self, run: int) -> None:
        run_id = self.run_ids[run]
        if run_id in self._submit_of:
            call = await self.before_call()
            try:
                outcome = await abort_run(self.backend, self.plan.namespace_of(run), run_id,
                                          "aborted by the simulated control plane")
            except UnknownRun:  # its submit was rolled back (a crash or failover lost it)
                return
            except ServerRefused as exc:
                self.server_error(f"the abort of {run_id}", exc)
                return
            self.truth.aborted_at_ms.setdefault(run_id, self.now_ms)
            self.truth.abort_calls.append((run_id, self.now_ms, self.step_no,
                                           outcome.aborted + outcome.requested > 0, call))

    async def _reap(self) -> None:
        cfg = self.plan.config
        if self.reaper is not None and not self.faults.reaper_down(self.now_ms):
            await self.before_call()
            await self.reaper.reap_once()
        if self.now_ms < self.end_ms:
            self.at(self.now_ms + int(cfg.reaper_interval_ms * self.faults.reaper_factor(self.now_ms)), self._reap)

    def _schedule_faults(self) -> None:
        snapshots = []
        for i, f in enumerate(self.plan.faults):
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
            elif f.kind == "server_crash" and self.store is not None:
                self.at(f.at_ms, lambda i=i: self._server_crash(i))
            elif f.kind == "failover" and self.store is not None:
                self.at(f.at_ms, lambda i=i: self._failover(i))
                snapshots.append((i, self._snapshot_ms(f)))
            elif f.kind == "reaper_crash":
                self.at(f.at_ms, lambda f=f: self._reaper_crash(f))
        # After the faults: a snapshot due at the same time as a crash is taken after it.
        for i, at_ms in snapshots:
            if at_ms < self.plan.faults[i].at_ms:
                self.at(at_ms, lambda i=i: self._snapshot(i))
        self.at(self.plan.heal_ms, self._heal)

    def _snapshot_ms(self, f: Fault) -> int:
        """When the promoted replica's data is from: lag_ms before, but never before the server
        last restarted or lost data (a replica resyncs with the primary it follows)."""
        resets = [g.at_ms for g in self.plan.faults if g.kind in ("server_restart", "server_crash", "failover")
                  and g.at_ms < f.at_ms and g is not f and g.at_ms < self.plan.heal_ms]
        return max([f.at_ms - f.lag_ms, 0] + resets)

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
        self.truth.resets.append(len(self.truth.calls))
        await self.restart_server()
        if self.disk is not None:
            self.disk.restarted(self.step_no)
        self._clock_set = None
        await self.sync_clock()

    async def _server_crash(self, index: int) -> None:
        """SIGKILL; the AOF is cut back to a seeded point after the last sync; restart from it."""
        rng = random.Random(f"{self.plan.seed}:crash:{index}")
        step, size, step_ms = self.disk.cut(rng)
        self.truth.resets.append(len(self.truth.calls))
        await self.store.crash_to(size)
        self.disk.restarted(self.step_no)
        self._lost(DataLoss("server_crash", self.now_ms, self.step_no, step, step_ms))
        self._clock_set = None
        await self.sync_clock()

    async def _snapshot(self, index: int) -> None:
        """What a lagging replica holds: every key (DUMP, PTTL), taken now."""
        redis = self.backend.redis
        keys = sorted([k async for k in redis.scan_iter(count=1000)])
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
            pipe.dump(key)
        replies = await pipe.execute()
        self._snapshots[index] = [(k, replies[2 * j], replies[2 * j + 1]) for j, k in enumerate(keys)
                                  if replies[2 * j + 1] is not None]
        self._snapshot_steps[index] = (self.step_no, self.now_ms)

    async def _failover(self, index: int) -> None:
        """A replica lagging lag_ms is promoted: same process (same run_id), its data rolled back to
        the snapshot, a new master_replid (REPLICAOF a dead port, then NO ONE: what a demoted and
        re-promoted node goes through), an empty script cache (scripts are not replicated) and no
        function libraries (they are, but a replica that joined before they were loaded or a server
        restarted without persistence lacks them: lessor must load them again)."""
        redis = self.backend.redis
        snapshot = self._snapshots.pop(index, None)
        if snapshot is not None:
            await redis.flushall()
            pipe = redis.pipeline(transaction=False)
            for key, pttl, dumped in snapshot:
                pipe.restore(key, max(pttl, 0), dumped)
            await pipe.execute()
            step, at_ms = self._snapshot_steps.pop(index)
            self._lost(DataLoss("failover", self.now_ms, self.step_no, step, at_ms))
        await redis.script_flush()
        await redis.function_flush()
        await redis.execute_command("REPLICAOF", "127.0.0.1", str(self.store.unused_port))
        await redis.execute_command("REPLICAOF", "NO", "ONE")
        if self.disk is not None:
            self.disk.restarted(self.step_no)  # the new primary's disk holds what it has
        self._clock_set = None
        await self.sync_clock()

    def _lost(self, loss: DataLoss) -> None:
        self.truth.data_loss.append(loss)
        self._done.clear()  # a finished run may be running again

    def _reaper_crash(self, f: Fault) -> None:
        self.reaper = None
        self.at(min(f.at_ms + max(f.duration_ms, 1), self.plan.heal_ms), self._reaper_back)

    def _reaper_back(self) -> None:
        if self.reaper is None:
            self.reaper = self.new_reaper()

    def _heal(self) -> None:
        self._lost_replies.clear()
        self._reaper_back()
        for w in list(self.workers):
            if w.alive and w.paused:
                w.resume()
            elif not w.alive:
                self._restart_worker(w)

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> SimResult:
        """Run the plan: safety phase, heal, liveness phase; collect the log and the truth."""
        await self._setup()
        try:
            return await self._run()
        finally:
            for client in {id(b.redis): b.redis for b in (self.backend, self.reaper_backend)}.values():
                client.response_callbacks.pop("WAITAOF", None)

    async def _setup(self) -> None:
        """An empty database; with crashes or restarts in the plan, a fresh AOF too (small to reload)."""
        redis = self.backend.redis
        await redis.flushall()
        if self.plan.several_namespaces():   # before the AOF rewrite below, so no crash loses them
            for namespace, weight in self.plan.namespaces:
                await set_fair_share(self.backend, self.queue, namespace, weight=weight)
        kinds = {f.kind for f in self.plan.faults if f.at_ms < self.plan.heal_ms}
        if self.store is not None and kinds & {"server_crash", "server_restart"}:
            await redis.bgrewriteaof()
            while True:  # a fork of an empty database: a few ms
                info = await redis.info("persistence")
                if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                    break
                await anyio.sleep(0.005)
            self.store.refresh_aof()
            if "server_crash" in kinds:
                self.disk = DiskModel(self.store.aof_size)
        for client in {id(b.redis): b.redis for b in (self.backend, self.reaper_backend)}.values():
            client.set_response_callback("WAITAOF", self.observe_waitaof)
        await self.sync_clock()
        if self.disk is not None:
            self.disk.record(0, 0)

    async def _create_schedules(self) -> None:
        """The plan's schedules: every second, one per catch-up policy, from t = 0. Their runs go
        to a queue no simulated worker takes from: what is checked is the ticking."""
        for catchup in CATCHUP_ORDER[:self.plan.config.schedules]:
            await self.before_call()   # sets the clock; places the call's events (checkers/history.py)
            await create_schedule(self.backend, f"every-second-{catchup}", "scheduled", "* * * * * *",
                                  namespace=self.namespace, queue=SCHEDULE_QUEUE, catchup=catchup,
                                  misfire_grace_s=1, start_ms=self.server_ms())

    async def _final_ticks(self) -> None:
        """After the run, one fault-free schedule pass once every ticker lease has run out, so every
        tick due by then must be handled: a tick lost on the way (not only doubled) is caught too."""
        cfg = self.plan.config
        if not cfg.schedules:
            return
        self.server_offset_ms += cfg.ttl_ms + cfg.grace_ms + 1   # every ticker lease has run out
        ticker = Ticker(self.backend, "final-ticker", ttl_ms=cfg.ttl_ms, grace_ms=cfg.grace_ms)
        for _ in range(10):   # at most MAX_TICKS_PER_CALL per schedule and call
            await self.before_call()   # sets the clock; places the pass's events (checkers/history.py)
            if (await ticker.tick_once()).fired == 0:
                break
        self.truth.ticks_due_by_ms = self.server_ms()

    async def _run(self) -> SimResult:
        deadline = self.end_ms
        await self._create_schedules()
        for i, s in enumerate(self.plan.submits):
            self.at(s.at_ms, lambda i=i: self._submit(i))
            if s.resubmit_ms is not None:
                self.at(max(s.resubmit_ms, s.at_ms), lambda i=i: self._resubmit(i))
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
        await self._final_ticks()
        await self._read_cache()
        entries = await EventLog(self.backend).read_all()
        raw = []
        for p in range(self.backend.partitions):
            raw += [(p, fields[b"e"]) for _, fields in await self.backend.redis.xrange(self.backend.keys(p).stream)]
        stats = summarize(entries, self.truth) | {
            "store_errors": self.injected.failed_calls - self._failed_before,
            # Fair share's evidence: a zero in either is a plan (or a whole exploration) it cannot judge.
            "several_namespaces": int(self.plan.several_namespaces()),
            "fair_share_judged": fair_share.judged_leases(
                [(e.partition, e.event) for e in entries],
                {(self.queue, ns): w for ns, w in self.plan.namespaces}, {self.queue}),
        }
        return SimResult(self.plan, entries, raw, self.truth, quiesced, deadline, stats=stats)

    async def _read_cache(self) -> None:
        """What each partition's cache holds at the end (cache_faithful judges it)."""
        for p in range(self.backend.partitions):
            for namespace, _ in self.plan.namespaces:
                entries = await self.backend.redis.hgetall(self.backend.keys(p).cache(namespace))
                self.truth.cache.update({(p, k.decode()): v for k, v in entries.items()})

    async def _all_done(self) -> bool:
        """Every submitted run finished? Asked at most every 50 ms of virtual time, for the runs not yet done."""
        if len(self.truth.submitted) < len(self.plan.submits) or self.now_ms - self._last_done_check < 50:
            return False
        self._last_done_check = self.now_ms
        pending = [r for r in self.truth.submitted if r not in self._done]
        by_ns: dict[str, list[str]] = {}
        for run_id in pending:
            by_ns.setdefault(self.namespace_of_run[run_id], []).append(run_id)
        for ns, run_ids in by_ns.items():
            for run_id, phase in (await run_phases(self.backend, ns, run_ids)).items():
                # A run whose submit a crash or failover rolled back is gone: nothing to wait for.
                lost = phase is None and self.truth.lost(self.truth.submit_steps[run_id])
                if phase not in (Phase.RUNNING, None) or lost:
                    self._done.add(run_id)
        return len(self._done) == len(self.truth.submitted)


def run_id_of(namespace: str, i: int, submit: Submit) -> str:
    """The run id of the plan's submit ``i``: derived from its idempotency key if it is submitted
    again (as the client derives it), else ``s<i>``."""
    return idempotent_run_id(namespace, f"k{i}") if submit.resubmit_ms is not None else f"s{i}"


def true_ms(worker_ms: float, rate: float) -> int:
    """True (simulator) milliseconds until a worker's clock, running at ``rate``, has moved
    ``worker_ms``: rounded up, so a timer never fires before its instant."""
    return math.ceil(worker_ms / max(rate, 1e-3))


def summarize(entries: list[LogEntry], truth: Truth) -> dict[str, int]:
    """The counts a person wants after a run."""
    count = lambda cls: sum(1 for e in entries if isinstance(e.event, cls))  # noqa: E731
    cached = {(e.event.run, e.event.action) for e in entries
              if isinstance(e.event, ev.ActionCreated) and e.event.cache_key}
    child = lambda e: isinstance(e.event, ev.ActionEvent) and e.event.action not in ("", "a0")  # noqa: E731
    return {
        "runs": len(truth.submitted), "events": len(entries), "attempts": count(ev.ActionLeased),
        "failovers": sum(1 for e in entries if isinstance(e.event, ev.ActionRequeued)
                         and e.event.reason == "lease_expired"),
        "lease_expired": count(ev.LeaseExpired), "resumed_in_grace": count(ev.LeaseResumed),
        "stale_reports_refused": count(ev.ReportRejected),
        "succeeded": sum(1 for e in entries if isinstance(e.event, ev.RunCompleted) and e.event.phase == "succeeded"),
        "data_losses": len(truth.data_loss),
        "report_retries": sum(max(0, c.tries - 1) for c in truth.chains),
        "unconfirmed_reports": sum(1 for c in truth.chains if c.outcome == "unconfirmed"),
        "schedule_ticks": count(ev.ScheduleTicked),
        "schedule_ticks_skipped": sum(e.event.count for e in entries if isinstance(e.event, ev.ScheduleSkipped)),
        "stale_ticks_refused": count(ev.ScheduleTickRejected),
        # The whole API: each figure is a part of it the workload used (a zero is a blind spot).
        "children": sum(1 for e in entries if isinstance(e.event, ev.ActionCreated) and e.event.parent),
        "child_submits_refused": sum(1 for e in entries if isinstance(e.event, ev.ReportRejected)
                                     and e.event.kind == "submit"),
        "cached_results": sum(1 for e in entries if isinstance(e.event, ev.ActionSucceeded)
                              and (e.event.run, e.event.action) in cached),
        "cache_hits": count(ev.CacheHit),
        # a completion refused on an action with a cache key: what a cache written too early shows on
        "cached_completions_refused": sum(1 for e in entries if isinstance(e.event, ev.ReportRejected)
                                          and e.event.kind == "complete" and (e.event.run, e.event.action) in cached),
        "idempotent_resubmits": len(truth.resubmits),
        "aborts": len(truth.abort_calls),
        "subtree_aborts": sum(1 for e in entries if child(e) and isinstance(e.event, (ev.ActionAborted,
                                                                                       ev.AbortRequested))),
        "server_errors": len(truth.server_errors),
    }
