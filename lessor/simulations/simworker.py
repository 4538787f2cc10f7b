"""A simulated worker: the real LeaseClient and LeaseKeeper, driven step by step.

Its monotonic clock is a ManualClock moved by the simulator (at the worker's
drift rate). Every request goes through the simulator's network. Work is CPU
time: it progresses only while the worker is neither paused nor crashed, and
stops the moment the keeper fences the lease (that is what the ground truth
records).

What an attempt's ending is reported as, and what a report does after a try
with no answer, is the outcome policy the real Worker runs
(``lessor/scheduler/outcome.py``, passed in by the simulator so a test-only
switch can break it for both): a report that gets no answer is sent again with
the same token for ``report_timeout_ms`` (also past the lease's self-fence
deadline: a reaped lease refuses it, one extended by a new epoch commits it),
then dropped as unconfirmed. An attempt lets go of its lease through the same
``end_attempt`` as Worker, with its token check. Like a real Worker, each one
also runs reaper passes (the real Reaper, shared throttle) through the network.

A task may submit child actions (``ctx.submit``) as ``Worker.submit_child`` does:
one fenced ``submit_child`` call each, checked usable right before it is sent and
sent again while the lease is usable when it gets no answer; a task that awaits
its children (``ctx.call``) keeps its attempt running until they are terminal and
raises (ChildFailed) if one did not succeed.

The simulator is reached only through ``Simulation``, the narrow interface
below: this module does not import the simulator.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from lessor.core.clock import ManualClock
from lessor.core.phases import TERMINAL
from lessor.errors import StaleToken, StoreUnavailable, UnknownAction
from lessor.leasing.backend import Backend
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.keeper import HeldLease, LeaseKeeper
from lessor.leasing.outage import Backoff, Outage, is_transient
from lessor.leasing.reaper import Reaper
from lessor.scheduler import outcome
from lessor.scheduler.outcome import Call, Ending, Outcome, Policy, duplicate_lease, end_attempt, retry_gap_ms
from lessor.scheduler.schedules import Ticker, TickResult
from lessor.simulations.network import FaultSchedule
from lessor.simulations.plan import Plan
from lessor.simulations.truth import Execution, Report, ReportChain

_quiet = logging.getLogger("lessor.simulations.worker")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class Simulation(Protocol):
    """What a simulated worker needs from the simulator (``simulator.Simulator`` is one).

    True time and its event queue, the network, the fault schedule, the plan,
    the outcome policy to run, and the ground-truth records it writes.
    """

    plan: Plan
    faults: FaultSchedule
    backend: Backend
    reaper_backend: Backend   # the reapers' (and tickers') connections: store_errors faults fail them
    rng: random.Random
    policy: Policy
    namespace: str
    queue: str
    now_ms: int
    step_no: int

    def at(self, t_ms: int, fn: Callable[[], Any], worker: "SimWorker | None" = None) -> None:
        """Run ``fn`` at true time ``t_ms`` (with ``worker``: only while that incarnation lives)."""

    def server_ms(self) -> int:
        """The server's clock now."""

    async def send(self, w: "SimWorker", op: Callable[[], Awaitable[Any]], on_reply: Callable[[Any, Any], None],
                   on_server: Callable[[Any], None] | None = None, reports: list[Report] | None = None,
                   reads_only: bool = False) -> None:
        """Send ``op`` from ``w`` through the network; ``on_reply(result, error)`` when (if) it hears back."""

    def calls_so_far(self) -> int:
        """How many script calls have run (orders a moment against them)."""

    def new_reaper(self, **kwargs: Any) -> Reaper:
        """A reaper on the reapers' connections."""

    def truth_report(self, w: "SimWorker", lease: Lease, kind: str) -> Report:
        """Record one write sent."""

    def truth_chain(self, w: "SimWorker", lease: Lease, kind: str) -> ReportChain:
        """Record one report, over all its tries."""

    def truth_grant(self, w: "SimWorker", lease: Lease, ran_step: int, ran_ms: int) -> None:
        """Record a grant the worker heard."""

    def truth_execution(self, w: "SimWorker", lease: Lease) -> Execution:
        """Record a stretch of computing, starting now."""

    def work_ms_of(self, lease: Lease) -> int:
        """How long the attempt's task computes."""

    def children_of(self, lease: Lease) -> "ChildSpec | None":
        """The child actions the attempt's task submits (None: none)."""

    def run_task(self, w: "SimWorker", lease: Lease, children_failed: str | None = None) -> Outcome:
        """The attempt's task has done its work: what it produced (recorded as ground truth)."""


@dataclass(frozen=True)
class ChildSpec:
    """The children a task submits: their action ids (in call order), their task and inputs,
    and whether the task waits for them (``ctx.call``) before it ends."""

    ids: tuple[str, ...]
    task: str
    inputs: bytes
    awaits: bool


@dataclass
class Attempt:
    """An attempt this worker is running."""

    lease: Lease
    held: HeldLease
    remaining_ms: int
    segment: Execution | None = None   # the open stretch of computing, if computing now
    version: int = 0                   # bumps to cancel a scheduled "done"
    reporting: bool = False
    children: ChildSpec | None = None  # what its task submits
    spawning: bool = False             # its task has begun submitting them
    spawned: bool = False              # ... and is done (each acknowledged, or one refused)
    created: set[str] = field(default_factory=set)  # children the server acknowledged
    task_error: str | None = None      # a child that did not succeed, or a submission that raised
    awaited: bool = False              # every awaited child is terminal


class SimWorker:
    """One incarnation of a simulated worker process."""

    def __init__(self, sim: Simulation, index: int, incarnation: int, keeper_cls: type[LeaseKeeper]) -> None:
        self.sim, self.index, self.incarnation = sim, index, incarnation
        self.id = f"w{index}" if incarnation == 0 else f"w{index}-r{incarnation}"
        cfg = sim.plan.config
        self.lease_config = LeaseConfig(ttl_ms=cfg.ttl_ms, grace_ms=cfg.grace_ms, heartbeat_ms=cfg.heartbeat_ms,
                                        margin_ms=cfg.margin_ms)
        self.clock = ManualClock(0.0, sim.faults.drift_rate(index, sim.now_ms))
        rng = random.Random(sim.rng.getrandbits(64))
        self.client = LeaseClient(sim.backend, self.id, self.lease_config, rng=rng)
        self.keeper = keeper_cls(self.client, self.clock, on_fence=self._on_fence)
        # As Worker: one Outage (its backoff paces report retries; seeded here) and a shared reaper.
        self.outage = Outage(f"worker {self.id}", clock=self.clock, log=_quiet,
                             backoff=Backoff(rng=random.Random(rng.getrandbits(64))))
        self.reaper = sim.new_reaper(interval_ms=cfg.worker_reap_ms, shared=True, name=f"worker {self.id} reaper",
                                     clock=self.clock)
        # As Worker: a schedule pass beside the reaper's (on the same connections).
        self.ticker = Ticker(sim.reaper_backend, self.id, ttl_ms=cfg.ttl_ms, grace_ms=cfg.grace_ms)
        self.ticking = False
        self.attempts: dict[str, Attempt] = {}
        self.chains: list[ReportChain] = []
        self.alive = True
        self.paused = False
        self.acquiring = False
        self.heartbeating = False
        self.reaping = False
        self.idle_polls = 0

    # --- time --------------------------------------------------------------------------

    def tick(self, delta_ms: int) -> None:
        """True time moved by delta_ms: the worker's clock moves by delta * its drift rate."""
        self.clock.rate = self.sim.faults.drift_rate(self.index, self.sim.now_ms)
        self.clock.advance(delta_ms)

    @property
    def running(self) -> bool:
        return self.alive and not self.paused

    # --- heartbeats, polls ---------------------------------------------------------------

    async def heartbeat(self) -> None:
        """The keeper's heartbeat: begin, send through the network, finish on the answer."""
        if self.heartbeating:
            return
        live, sent_ms = self.keeper.begin_heartbeat()
        if not live:
            self.keeper.check_self_fence()
            return
        self.heartbeating = True
        reports = [self.sim.truth_report(self, h.lease, "renew") for h in live]

        async def op():
            return await self.client.renew([h.lease for h in live])

        def on_reply(codes, error) -> None:
            self.heartbeating = False
            for report, h in zip(reports, live):
                report.heard = codes is not None
                report.heard_ms = self.sim.now_ms if codes is not None else None
            self.keeper.finish_heartbeat(live, codes, sent_ms)

        def on_server(codes) -> None:
            for report, h in zip(reports, live):
                report.answer = codes[h.lease.ref].name

        await self.sim.send(self, op, on_reply, on_server, reports)

    async def poll(self) -> None:
        """Acquire work if there is room (one acquire in flight at a time)."""
        free = self.sim.plan.config.concurrency - len(self.attempts)
        if self.acquiring or free <= 0:
            return
        self.acquiring = True
        sent_ms = self.clock.now_ms()
        ran = [0, 0]  # the step and true time the acquire ran on the server

        # Odd workers take the queue by fair share ('*'), even ones by namespace: both ways
        # of acquiring (and the rotation and running counters they keep) go through every fault.
        # With several namespaces every worker takes '*': an acquire of one namespace would take
        # it out of turn (fair_share could not judge the weights), and none can starve.
        several = self.sim.plan.several_namespaces()
        namespace = "*" if self.index % 2 or several else self.sim.namespace

        async def op():
            return await self.client.acquire(namespace, self.sim.queue, free)

        def on_server(leases) -> None:
            ran[:] = [self.sim.step_no, self.sim.now_ms]

        def on_reply(leases, error) -> None:
            self.acquiring = False
            # An idle worker polls less often (up to 8x the interval), as a real one backs off.
            self.idle_polls = 0 if leases else min(self.idle_polls + 1, 3)
            for lease in leases or ():
                self.sim.truth_grant(self, lease, ran[0], ran[1])
                self.start(lease, sent_ms)

        await self.sim.send(self, op, on_reply, on_server)

    async def reap(self) -> None:
        """One pass of this worker's reaper (Worker runs ``Reaper(shared=True).run()``), through the network."""
        if self.reaping:
            return
        self.reaping = True

        def on_reply(result, error) -> None:
            self.reaping = False

        await self.sim.send(self, self.reaper.reap_once, on_reply)

    async def tick_schedules(self) -> None:
        """One schedule pass (Worker runs a Ticker), as the real Ticker makes it: a read of what is
        due, then one tick.lua call per partition with this ticker's token, as separate messages,
        so a pause, a partition or a lost reply can fall between the read and the write."""
        if self.ticking:
            return
        self.ticking = True
        partitions = range(self.ticker.backend.partitions)

        async def read():
            try:
                now = self.sim.server_ms()
                return {p: await self.ticker.due(p, now) for p in partitions}
            except Exception as exc:  # a transient store error is the answer (store_errors); the rest raise
                if not is_transient(exc):
                    raise
                raise StoreUnavailable(f"simulated store error: {exc}") from None

        def on_read(due, error) -> None:
            sends = {p: args for p, args in (due or {}).items() if args or self.ticker.tokens.get(p, 0)}
            if not sends:
                self.ticking = False
                return
            left = [len(sends)]
            for p, args in sends.items():
                self.sim.at(self.sim.now_ms, lambda p=p, args=args: self._send_ticks(p, args, left), self)

        await self.sim.send(self, read, on_read)

    async def _send_ticks(self, partition: int, args: list, left: list[int]) -> None:
        async def op():
            try:
                return await self.ticker.send(partition, args)
            except Exception as exc:  # as in read(): transient errors are answers
                if not is_transient(exc):
                    raise
                raise StoreUnavailable(f"simulated store error: {exc}") from None

        def on_reply(answer, error) -> None:
            if answer is not None:   # a lost answer teaches nothing: the token stays what it was
                self.ticker.heard(partition, args, answer, TickResult())
            left[0] -= 1
            if left[0] == 0:
                self.ticking = False

        await self.sim.send(self, op, on_reply)

    # --- work ------------------------------------------------------------------------------

    def start(self, lease: Lease, sent_ms: float) -> None:
        """Begin an attempt of a lease just granted (or give it back, as Worker does)."""
        if lease.ref in self.attempts:
            # An earlier attempt of this action is still ending here (its report in flight): give
            # the new lease back at once rather than run it twice, as Worker does.
            self.sim.at(self.sim.now_ms, lambda: self.report(lease, duplicate_lease()), self)
            return
        held = self.keeper.hold(lease, None, sent_ms)
        attempt = Attempt(lease, held, self.sim.work_ms_of(lease), children=self.sim.children_of(lease))
        self.attempts[lease.ref] = attempt
        if held.fenced is not None:   # heard past its self-fence deadline: never started (as Worker)
            self._on_fence(held)
            return
        self.resume_attempt(attempt)

    def resume_attempt(self, attempt: Attempt) -> None:
        """Start (or restart after a pause) computing; schedule its end (its children first)."""
        if not self.keeper.usable(attempt.lease.ref) or attempt.reporting:
            return
        attempt.segment = self.sim.truth_execution(self, attempt.lease)
        attempt.version += 1
        version = attempt.version
        if attempt.children is not None and not attempt.spawning:
            attempt.spawning = True
            self.sim.at(self.sim.now_ms + self._child_gap_ms(attempt), lambda: self._submit_child(attempt, 0), self)
        self.sim.at(self.sim.now_ms + max(attempt.remaining_ms, 0), lambda: self.finish(attempt, version), self)

    def suspend_attempt(self, attempt: Attempt, why: str) -> None:
        """Stop computing now (pause, fence, crash): close the truth segment."""
        if attempt.segment is not None:
            attempt.remaining_ms -= self.sim.now_ms - attempt.segment.start_ms
            attempt.segment.end_ms, attempt.segment.ended = self.sim.now_ms, why
            attempt.segment.end_server_ms = self.sim.server_ms()
            attempt.segment.end_call = self.sim.calls_so_far()
            attempt.segment = None
        attempt.version += 1

    async def finish(self, attempt: Attempt, version: int) -> None:
        """The task's work is done: report how it ended, as the outcome policy decides. A task
        returns only once its child submissions have (ctx.submit is awaited), and one that
        awaits its children only once they are terminal: until then it keeps computing."""
        if version != attempt.version or not self.running:
            return
        if attempt.children is not None and not attempt.spawned:
            self.sim.at(self.sim.now_ms + self.sim.plan.config.poll_ms, lambda: self.finish(attempt, version), self)
            return
        if attempt.children is not None and attempt.children.awaits and not attempt.awaited \
                and attempt.task_error is None:
            await self._await_children(attempt, version)
            return
        self.suspend_attempt(attempt, "completed")
        attempt.reporting = True
        produced = self.sim.run_task(self, attempt.lease, attempt.task_error)
        decided = self.sim.policy.report(Ending(attempt.held.fenced, shutting_down=False, outcome=produced))
        if decided.call is Call.NONE:
            self._forget(attempt.lease)
        else:
            await self.report(attempt.lease, decided)

    async def report(self, lease: Lease, decided: outcome.Report) -> None:
        """Make the fenced write the policy decided (complete, fail, release), as ``Worker._report``
        does: the attempt ends when an answer comes back; with no answer it is sent again with
        the same token while the policy's ``retry`` says so."""
        chain = self.sim.truth_chain(self, lease, decided.call.value)
        chain.started_worker_ms = self.clock.now_ms()
        self.chains.append(chain)
        call = {Call.COMPLETE: self.client.complete, Call.FAIL: self.client.fail,
                Call.RELEASE: self.client.release}[decided.call]
        await self._try_report(chain, lease, lambda: call(lease, *decided.args))

    async def _try_report(self, chain: ReportChain, lease: Lease, call: Callable[[], Awaitable[Any]]) -> None:
        report = self.sim.truth_report(self, lease, chain.kind)
        chain.tries += 1

        async def op() -> tuple[Code, BaseException | None]:
            try:
                await call()
                return Code.OK, None
            except (StaleToken, UnknownAction) as exc:  # the server's answer: it travels back as a reply
                return (Code.STALE if isinstance(exc, StaleToken) else Code.UNKNOWN), exc

        def on_server(answer) -> None:
            report.answer = answer[0].name

        def on_reply(answer, error) -> None:
            if answer is not None:
                report.heard, report.heard_ms = True, self.sim.now_ms
                self.outage.ok()
                if answer[1] is None:
                    self._end_report(chain, "committed")
                    return
                error = answer[1]
            exc = error if isinstance(error, BaseException) else \
                TimeoutError(f"no answer in {self.sim.plan.config.rpc_timeout_ms} ms")
            backoff_ms = self.outage.failed(exc) if is_transient(exc) else 0.0
            left_ms = chain.started_worker_ms + self.sim.plan.config.report_timeout_ms - self.clock.now_ms()
            decision = self.sim.policy.retry(exc, left_ms)
            if decision != "retry":
                self._end_report(chain, decision)
                return
            wait_ms = math.ceil(retry_gap_ms(backoff_ms, left_ms) / max(self.clock.rate, 1e-3))
            self.sim.at(self.sim.now_ms + wait_ms, lambda: self._try_report(chain, lease, call), self)

        await self.sim.send(self, op, on_reply, on_server, [report])

    # --- children ----------------------------------------------------------------------------

    async def _submit_child(self, attempt: Attempt, n: int) -> None:
        """Submit child ``n`` of the attempt's task, then the next (``Worker.submit_child``)."""
        lease, spec = attempt.lease, attempt.children
        if self.attempts.get(lease.ref) is not attempt or attempt.spawned:
            return
        if n >= len(spec.ids) or not self.keeper.usable(lease.ref):  # checked last, right before the write
            attempt.spawned = True
            return
        report = self.sim.truth_report(self, lease, "submit")
        child = spec.ids[n]
        # Worker.submit_child's arguments: parent ref and token, worker, child id, task, inputs,
        # queue, retries (system, user, backoff), priority, timeout, cache key.
        args = [lease.ref, lease.token, self.id, child, spec.task, spec.inputs, self.sim.queue, 3, 0,
                self.sim.plan.config.backoff_ms, 0, 0, ""]

        async def op() -> tuple[Code, int]:
            code, created = await self.sim.backend.call(
                "submit_child", [self.sim.backend.keys(lease.partition).prefix], args)
            return Code(int(code)), int(created)

        def on_server(answer) -> None:
            report.answer = answer[0].name

        def on_reply(answer, error) -> None:
            if answer is not None:
                report.heard, report.heard_ms = True, self.sim.now_ms
                self.outage.ok()
                if answer[0] is Code.OK:
                    attempt.created.add(child)
                    self.sim.at(self.sim.now_ms + self._child_gap_ms(attempt), lambda: self._submit_child(attempt, n + 1),
                                self)
                else:  # refused: ctx.submit raises into the task; the keeper hears of it at its next renewal
                    attempt.spawned, attempt.task_error = True, f"{answer[0].name.lower()}: child {child}"
                return
            exc = error if isinstance(error, BaseException) else TimeoutError("no answer")
            if not is_transient(exc):
                attempt.spawned, attempt.task_error = True, f"{type(exc).__name__}: {exc}"
                return
            wait_ms = math.ceil(self.outage.failed(exc) / max(self.clock.rate, 1e-3))
            self.sim.at(self.sim.now_ms + wait_ms, lambda: self._submit_child(attempt, n), self)

        await self.sim.send(self, op, on_reply, on_server, [report])

    def _child_gap_ms(self, attempt: Attempt) -> int:
        """Children are submitted spread over the task's work, one every work / (children + 1)."""
        return self.sim.work_ms_of(attempt.lease) // (len(attempt.children.ids) + 1)

    async def _await_children(self, attempt: Attempt, version: int) -> None:
        """ctx.call: read the children's phases; once all are terminal, finish; else look again
        in a poll interval. A child the server acknowledged and no longer knows (a rollback lost
        it) did not succeed."""
        spec, ns_run = attempt.children, attempt.lease.ref.rsplit("/", 1)[0]
        keys = self.sim.backend.keys(attempt.lease.partition)

        async def op() -> list:
            pipe = self.sim.backend.redis.pipeline(transaction=False)
            for child in spec.ids:
                pipe.hget(keys.action(f"{ns_run}/{child}"), "phase")
            return await pipe.execute()

        def on_reply(phases, error) -> None:
            if version != attempt.version:
                return
            done = phases is not None and all(
                (p is not None and p.decode() in TERMINAL) or (p is None and c in attempt.created)
                for c, p in zip(spec.ids, phases))
            if done:
                failed = [f"{c} {p.decode() if p else 'lost'}" for c, p in zip(spec.ids, phases)
                          if p != b"succeeded"]
                attempt.awaited, attempt.task_error = True, ("; ".join(failed) or None)
                self.sim.at(self.sim.now_ms, lambda: self.finish(attempt, version), self)
            else:
                self.sim.at(self.sim.now_ms + self.sim.plan.config.poll_ms, lambda: self.finish(attempt, version),
                            self)

        await self.sim.send(self, op, on_reply, reads_only=True)

    def _end_report(self, chain: ReportChain, ended: str) -> None:
        held = self.keeper.held.get(chain.ref)
        chain.outcome, chain.ended_ms, chain.ended_worker_ms = ended, self.sim.now_ms, self.clock.now_ms()
        if held is not None and held.lease.token == chain.token:
            chain.fence_deadline_worker_ms = held.last_ok_send_ms + self.lease_config.self_fence_after_ms
        end_attempt(self.keeper, self.attempts, chain.ref, chain.token, _token_of)

    def _forget(self, lease: Lease) -> None:
        """The attempt ends with nothing sent (its result dropped): let go of its lease, as Worker does."""
        end_attempt(self.keeper, self.attempts, lease.ref, lease.token, _token_of)

    def _on_fence(self, held: HeldLease) -> None:
        attempt = self.attempts.get(held.lease.ref)
        if attempt is None or attempt.lease.token != held.lease.token:
            return
        self.suspend_attempt(attempt, held.fenced.value)
        if attempt.reporting:
            return  # its report is on its way: the token decides what becomes of it
        # The work stopped with nothing produced: the same decision Worker makes for it (an abort
        # is confirmed with a release, any other fence drops the attempt and sends nothing).
        attempt.reporting = True
        decided = self.sim.policy.report(Ending(held.fenced, shutting_down=False, outcome=None))
        if decided.call is Call.NONE:
            self._forget(attempt.lease)
        else:
            lease = attempt.lease
            self.sim.at(self.sim.now_ms, lambda: self.report(lease, decided), self)

    # --- faults ----------------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        for attempt in self.attempts.values():
            self.suspend_attempt(attempt, "paused")

    def resume(self) -> None:
        """Back from a pause: the watchdog runs first (its deadline passed first), then the work."""
        self.paused = False
        self.keeper.check_self_fence()
        for attempt in list(self.attempts.values()):
            self.resume_attempt(attempt)

    def crash(self) -> None:
        """Memory lost: every attempt stops, nothing more is sent by this incarnation."""
        for attempt in self.attempts.values():
            self.suspend_attempt(attempt, "crashed")
        for chain in self.chains:
            if chain.outcome == "pending":
                chain.outcome, chain.ended_ms = "crashed", self.sim.now_ms
        self.attempts.clear()
        self.keeper.held.clear()
        self.alive = False


def _token_of(attempt: Attempt) -> int:
    return attempt.lease.token
