"""A simulated worker: the real LeaseClient and LeaseKeeper, driven step by step.

Its monotonic clock is a ManualClock moved by the simulator (at the worker's
drift rate). Every request goes through the simulator's network. Work is CPU
time: it progresses only while the worker is neither paused nor crashed, and
stops the moment the keeper fences the lease (that is what the ground truth
records).

Reports follow ``Worker._report``: one that gets no answer is sent again with
the same token for ``report_timeout_ms`` (also past the lease's self-fence
deadline: a reaped lease refuses it, one extended by a new epoch commits it),
then dropped as unconfirmed. Like a real Worker, each one also runs reaper
passes (the real Reaper, shared throttle) through the network.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lessor.core.clock import ManualClock
from lessor.errors import StaleToken, UnknownAction
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.keeper import FenceReason, HeldLease, LeaseKeeper
from lessor.leasing.outage import Backoff, Outage, is_transient
from lessor.simulations.truth import Execution, ReportChain

if TYPE_CHECKING:
    from lessor.simulations.simulator import Simulator

# What a report does after a try that got no answer: (error, ms left before it gives up)
# -> "retry" (same token), or the outcome it ends with.
ReportPolicy = Callable[[BaseException, float], str]

_quiet = logging.getLogger("lessor.simulations.worker")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def report_decision(error: BaseException, left_ms: float) -> str:
    """The decision of ``Worker._report`` (lessor/scheduler/worker.py) after a try with no answer.

    A copy of its loop's three branches (the worker has no pure helper to share):
    an error no retry can change ends the report (``error``); a transient one is
    retried with the same token while its report timeout lasts, and past it the
    report is dropped (``unconfirmed``).
    """
    if not is_transient(error):
        return "error"
    if left_ms <= 0:
        return "unconfirmed"
    return "retry"


@dataclass
class Attempt:
    """An attempt this worker is running."""

    lease: Lease
    remaining_ms: int
    segment: Execution | None = None   # the open stretch of computing, if computing now
    version: int = 0                   # bumps to cancel a scheduled "done"
    reporting: bool = False


class SimWorker:
    """One incarnation of a simulated worker process."""

    def __init__(self, sim: "Simulator", index: int, incarnation: int, keeper_cls: type[LeaseKeeper]) -> None:
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

        async def op():
            return await self.client.acquire(self.sim.namespace, self.sim.queue, free)

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

    # --- work ------------------------------------------------------------------------------

    def start(self, lease: Lease, sent_ms: float) -> None:
        if lease.ref in self.attempts:
            # An earlier attempt of this action is still ending here (its report in flight): give
            # the new lease back at once rather than run it twice, as Worker does.
            self.sim.at(self.sim.now_ms, lambda: self.report(
                lease, "release", lambda: self.client.release(lease, "an earlier attempt is still stopping")), self)
            return
        self.keeper.hold(lease, None, sent_ms)
        attempt = Attempt(lease, self.sim.work_ms_of(lease))
        self.attempts[lease.ref] = attempt
        self.resume_attempt(attempt)

    def resume_attempt(self, attempt: Attempt) -> None:
        """Start (or restart after a pause) computing; schedule its end."""
        if not self.keeper.usable(attempt.lease.ref) or attempt.reporting:
            return
        attempt.segment = self.sim.truth_execution(self, attempt.lease)
        attempt.version += 1
        version = attempt.version
        self.sim.at(self.sim.now_ms + attempt.remaining_ms, lambda: self.finish(attempt, version), self)

    def suspend_attempt(self, attempt: Attempt, why: str) -> None:
        """Stop computing now (pause, fence, crash): close the truth segment."""
        if attempt.segment is not None:
            attempt.remaining_ms -= self.sim.now_ms - attempt.segment.start_ms
            attempt.segment.end_ms, attempt.segment.ended = self.sim.now_ms, why
            attempt.segment.end_server_ms = self.sim.server_ms()
            attempt.segment = None
        attempt.version += 1

    async def finish(self, attempt: Attempt, version: int) -> None:
        """The task's work is done: report it with the token, if the lease is still ours."""
        if version != attempt.version or not self.running:
            return
        self.suspend_attempt(attempt, "completed")
        attempt.reporting = True
        lease = attempt.lease
        if not self.keeper.usable(lease.ref):
            return
        if lease.attempt <= self.sim.fail_attempts_of(lease):
            error = f"RuntimeError: attempt {lease.attempt} failed on purpose"
            await self.report(lease, "fail", lambda: self.client.fail(lease, error))
        else:
            await self.report(lease, "complete", lambda: self.client.complete(lease, b"\xa2ok"))

    async def report(self, lease: Lease, kind: str, call) -> None:
        """Send a fenced write (complete, fail, release) as ``Worker._report`` does: the attempt ends
        when an answer comes back; with no answer it is sent again with the same token (see
        ``report_decision``) for ``report_timeout_ms``, at most 500 ms apart."""
        chain = self.sim.truth_chain(self, lease, kind)
        chain.started_worker_ms = self.clock.now_ms()
        self.chains.append(chain)
        await self._try_report(chain, lease, call)

    async def _try_report(self, chain: ReportChain, lease: Lease, call) -> None:
        report = self.sim.truth_report(self, lease, chain.kind)
        chain.tries += 1

        async def op():
            try:
                await call()
                return Code.OK
            except StaleToken:
                return Code.STALE
            except UnknownAction:
                return Code.UNKNOWN

        def on_server(code) -> None:
            report.answer = code.name

        def on_reply(code, error) -> None:
            if code is not None:
                report.heard = True
                self.outage.ok()
                self._end_report(chain, "committed" if code is Code.OK else "refused")
                return
            exc = error if isinstance(error, BaseException) else \
                TimeoutError(f"no answer in {self.sim.plan.config.rpc_timeout_ms} ms")
            delay_ms = self.outage.failed(exc) if is_transient(exc) else 0.0
            left_ms = chain.started_worker_ms + self.sim.plan.config.report_timeout_ms - self.clock.now_ms()
            decision = self.sim.report_policy(exc, left_ms)
            if decision != "retry":
                self._end_report(chain, decision)
                return
            wait_ms = math.ceil(min(delay_ms, left_ms, 500) / max(self.clock.rate, 1e-3))
            self.sim.at(self.sim.now_ms + wait_ms, lambda: self._try_report(chain, lease, call), self)

        await self.sim.send(self, op, on_reply, on_server, [report])

    def _end_report(self, chain: ReportChain, outcome: str) -> None:
        held = self.keeper.held.get(chain.ref)
        chain.outcome, chain.ended_ms, chain.ended_worker_ms = outcome, self.sim.now_ms, self.clock.now_ms()
        if held is not None and held.lease.token == chain.token:
            chain.fence_deadline_worker_ms = held.last_ok_send_ms + self.lease_config.self_fence_after_ms
        self.keeper.drop(chain.ref, chain.token)
        attempt = self.attempts.get(chain.ref)
        if attempt is not None and attempt.lease.token == chain.token:
            del self.attempts[chain.ref]

    def _on_fence(self, held: HeldLease) -> None:
        attempt = self.attempts.get(held.lease.ref)
        if attempt is None:
            return
        self.suspend_attempt(attempt, held.fenced.value)
        if held.fenced is FenceReason.ABORTED and not attempt.reporting:
            attempt.reporting = True  # confirm the abort with a release, as the real worker does
            lease = attempt.lease
            self.sim.at(self.sim.now_ms, lambda: self.report(
                lease, "release", lambda: self.client.release(lease, "aborted: work cancelled")), self)
        elif not attempt.reporting:
            self.keeper.drop(held.lease.ref)
            self.attempts.pop(held.lease.ref, None)

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
