"""The worker runtime: lease actions, run their tasks, report with the token.

One worker = one LeaseClient + one LeaseKeeper (batched heartbeats,
self-fencing) + a reporter that batches completions per partition. Each
attempt is a plain asyncio task whose work runs in one anyio cancel scope; the
keeper cancels that scope when the lease is lost. A result is reported only while the keeper still considers the lease
usable; a fenced attempt's result is dropped (an abort is confirmed with a
release). What each ending is reported as, and when a report is sent again,
is the outcome policy (``scheduler/outcome.py``), shared with the simulated
worker so that what the simulations prove is what runs here. Unknown tasks,
undecodable inputs and handler exceptions fail the attempt with a recorded
error; they never crash the worker.

An idle worker does not poll: it blocks (BLPOP) on its queue's wake-up lists,
where every enqueue leaves a token, and polls every partition only every
``idle_poll_ms`` (10 s) in case a wake-up was lost.

Shutdown (``stop()``): stop acquiring, let running attempts finish within
``drain_s``, then cancel the rest and release their leases so they fail over
at once instead of after ttl + grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import re
import socket
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import anyio

from lessor import telemetry
from lessor.core.clock import MonotonicClock, SystemMonotonicClock
from lessor.core.ids import check_id, check_worker_namespace
from lessor.core.limits import seconds_to_ms
from lessor.errors import ActionAborted, StaleToken, StoreUnavailable
from lessor.leasing.backend import Backend
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import raise_for
from lessor.leasing.config import LeaseConfig
from lessor.leasing.keeper import FenceReason, HeldLease, LeaseKeeper
from lessor.leasing.outage import Outage, is_transient, keep_running
from lessor.leasing.housekeeping import Housekeeper
from lessor.leasing.reaper import Reaper
from lessor.scheduler.api import CacheKey, lookup_cache
from lessor.scheduler.outcome import (POLICY, Call, Ending, Outcome, Policy, Report, duplicate_lease, end_attempt,
                                      retry_gap_ms)
from lessor.scheduler import presence, tasklog
from lessor.scheduler.query import ActionInfo
from lessor.scheduler.registry import Registry, TaskContext, UnknownTask, invoke, publish_fence
from lessor.scheduler.schedules import Ticker
from lessor.scheduler.submit import Retries, RunSpec
from lessor.scheduler.values import ValueEncodingError, pack_value, unpack_value
from lessor.scheduler.watcher import CompletionWatcher

log = logging.getLogger("lessor.worker")

# The cap on an idle worker's reaper sleep (reap_max_sleep_ms=None): the default lease's
# ttl + grace (40 s) is under it. Each pass costs about 8 commands per partition.
REAP_MAX_SLEEP_MS = 60_000


def _wall_ms() -> int:
    return int(time.time() * 1000)  # clock: evidence timestamps for live chaos, compared with server TIME


def _produced(outcome: Outcome | None) -> str | None:
    """What the task produced, as evidence: ``result``, ``error``, or None (nothing: it was stopped)."""
    if outcome is None:
        return None
    return "result" if outcome.error is None else "error"


def default_worker_id() -> str:
    """``w-<host>-<pid>``, sanitised to a valid id."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"w-{host}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    """Where a worker takes work from and how much it runs at once."""

    queue: str = "default"
    namespace: str = "proj/development"
    concurrency: int = 8
    worker_id: str = field(default_factory=default_worker_id)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    # An idle worker blocks on its queue's wake-up lists (every enqueue leaves a token) and
    # polls every partition only every idle_poll_ms, in case a wake-up was lost (a woken
    # worker that died before it acquired). wake=False polls every idle_poll_ms instead, as
    # workers did before the wake-up lists (benchmarks measure the two side by side). The
    # blocking reads end every 10 s at most (LeaseClient.wake_read_s) and are sent again, so a
    # longer poll is possible, but a wake-up is lost whenever the server hands it to a worker
    # that is paused or dead while blocked (SIGSTOP, kill -9): only the poll then finds a
    # failover's requeued work. Tried at 30 s (0.4 commands/s instead of 1.2 on 4 partitions):
    # the demo's SIGSTOPped worker swallowed the failover's wake-up and the demo timed out.
    idle_poll_ms: int = 10_000
    wake: bool = True
    drain_s: float = 10.0
    # Every worker reaps (through the partitions' pass throttle, so the fleet costs one
    # pass per partition per interval): leases expire as long as any worker is alive.
    reap: bool = True
    reap_interval_ms: int = 500
    # How often a reaping worker runs the schedule pass (with no schedule anywhere it only looks
    # every 10 s: see Ticker.run).
    tick_interval_ms: int = 1000
    # An idle reaper sleeps until the next item falls due, at most this long (None: the
    # lease's ttl + grace, capped at REAP_MAX_SLEEP_MS). A lease granted while it sleeps falls
    # due no sooner than its next pass as long as this is <= that lease's ttl + grace; the
    # worker pokes its reaper for what it makes due sooner (timeouts, backoffs). See Reaper.
    reap_max_sleep_ms: int | None = None
    # How long a report (complete, fail, release) that gets no answer is sent again with the
    # same token. Not only until the self-fence deadline: the token makes a late report
    # harmless (refused if the lease was reaped meanwhile), and a server that comes back from
    # a restart or failover gives every live lease a full ttl first (ensure_epoch), so finished
    # work whose report outlived the outage commits instead of running a second time.
    report_timeout_s: float = 60.0
    # Freeze the start-up heap and collect less often while the worker runs (see tuned_gc).
    tune_gc: bool = True

    def __post_init__(self) -> None:
        check_worker_namespace(self.namespace)   # '*': every namespace of the queue, by fair share
        check_id("queue", self.queue)
        check_id("worker", self.worker_id)
        # A blocking read must end well inside the client's 30 s socket timeout.
        if (self.concurrency < 1 or not 0 < self.idle_poll_ms <= 20_000 or self.drain_s < 0
                or self.reap_interval_ms <= 0 or not 0 < self.tick_interval_ms <= 10_000
                or self.report_timeout_s < 0
                or (self.reap_max_sleep_ms is not None and self.reap_max_sleep_ms < self.reap_interval_ms)):
            raise ValueError("concurrency must be >= 1, 0 < idle_poll_ms <= 20000, drain_s >= 0, "
                             "reap_interval_ms > 0, 0 < tick_interval_ms <= 10000, reap_max_sleep_ms >= "
                             "reap_interval_ms (or None) and report_timeout_s >= 0")

    def reap_max_sleep(self) -> int:
        """The longest an idle reaper of this worker sleeps (see ``reap_max_sleep_ms``)."""
        if self.reap_max_sleep_ms is not None:
            return self.reap_max_sleep_ms
        return max(self.reap_interval_ms, min(REAP_MAX_SLEEP_MS, self.lease.ttl_ms + self.lease.grace_ms))


@dataclass(frozen=True)
class WorkerStatistics:
    """What a worker has done since it started (the keeper's own figures included)."""

    running: int
    succeeded: int
    failed: int
    released: int
    aborted: int
    dropped: int
    refused: int
    unconfirmed: int
    errors: int
    keeper: object
    reaper: object = None

    @property
    def committed(self) -> int:
        """Reports the server confirmed: succeeded + failed + released + aborted."""
        return self.succeeded + self.failed + self.released + self.aborted


# Cyclic garbage collection took a third of a busy worker's CPU (profiled: every full
# collection walks everything imported at start-up, and a no-op action allocates enough
# to trigger one every ~1,400 actions). While a worker runs, the start-up heap is frozen
# (never walked again) and the young generation is collected every 50,000 allocations
# instead of 700. Reference counting still frees nearly everything at once; only cycles
# wait longer. Process-wide, so counted: the last worker to stop restores the settings.
GC_THRESHOLDS = (50_000, 20, 100)
_gc_users = 0
_gc_saved = gc.get_threshold()


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """Freeze the heap built so far and raise the collection thresholds, for the block's life."""
    global _gc_users, _gc_saved
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


class Reporter:
    """Batches completions: everything pending for a partition goes in one script call.

    Plain asyncio (a list, one Event, a future per completion): the worker runs on
    asyncio, and anyio's memory stream and Event cost more per completion than the
    rest of the report (profiled). A completion made while the reporter is not
    running (before start, or once stopped) is sent on its own.
    """

    def __init__(self, client: LeaseClient) -> None:
        self.client = client
        self._pending: list[tuple[Lease, bytes, asyncio.Future]] = []
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def complete(self, lease: Lease, result: bytes) -> None:
        """Commit one result (batched with concurrent ones).

        Raises StaleToken if refused, and the call's own error (StoreUnavailable,
        NotDurable, ...) if the batch got no answer: never a made-up code.
        """
        if self._loop is None:
            return await self.client.complete(lease, result)
        future = self._loop.create_future()
        self._pending.append((lease, result, future))
        self._ready.set()
        code, current = await future
        if code:
            raise_for(code, lease.ref, lease.token, current)

    async def run(self) -> None:
        """Send what is pending, batch after batch, until cancelled."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await self._flush(batch)
        finally:  # stopped: every completion still waiting hears so, none hangs
            self._loop = None
            batch, self._pending = self._pending, []
            for _, _, future in batch:
                _stopped(future)

    async def _flush(self, batch: list[tuple]) -> None:
        by_partition: dict[int, list[tuple]] = {}
        for item in batch:
            by_partition.setdefault(item[0].partition, []).append(item)
        if len(by_partition) == 1:
            await self._flush_partition(*by_partition.popitem())
        else:
            await asyncio.gather(*(self._flush_partition(p, items) for p, items in by_partition.items()))

    async def _flush_partition(self, partition: int, items: list[tuple]) -> None:
        try:
            answers = await self.client.complete_many(partition, [(lease, result) for lease, result, _ in items])
        except Exception as exc:  # every waiter hears the batch's own error, whatever it is
            for _, _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled mid-call: the waiters must not hang on it
            for _, _, future in items:
                _stopped(future)
            raise
        for (_, _, future), answer in zip(items, answers):
            if not future.done():
                future.set_result(answer)


def _stopped(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(StoreUnavailable("the worker's reporter stopped before this completion was sent"))


class Worker:
    """Runs tasks from one queue with fenced leases."""

    def __init__(self, backend: Backend, registry: Registry, config: WorkerConfig | None = None,
                 clock: MonotonicClock | None = None, on_attempt: Callable[[dict], None] | None = None,
                 policy: Policy = POLICY) -> None:
        self.backend = backend
        self.registry = registry
        self.config = config or WorkerConfig()
        self.clock = clock or SystemMonotonicClock()
        self.client = LeaseClient(backend, self.config.worker_id, self.config.lease)
        self.keeper = LeaseKeeper(self.client, self.clock, on_fence=self._on_fence)
        self.reporter = Reporter(self.client)
        self.outage = Outage(f"worker {self.config.worker_id}", backend.url, clock=self.clock, log=log)
        self.reaper = (Reaper(backend, interval_ms=self.config.reap_interval_ms, shared=True,
                              name=f"worker {self.config.worker_id} reaper", clock=self.clock,
                              max_sleep_ms=self.config.reap_max_sleep())
                       if self.config.reap else None)
        # One view of the server per worker process: the keeper, the reaper, acquiring and
        # reporting share it, so an outage is one line when lost and one when back, whichever
        # of them notices (an idle keeper renews nothing and would never see the recovery).
        self.keeper.outage = self.outage
        if self.reaper is not None:
            self.reaper.outage = self.outage
        # Reaping workers also keep the store bounded: retention by each namespace's policy
        # (one pass for the whole fleet per interval). Compaction needs an archive: lessor reaper.
        self.housekeeper = Housekeeper(backend, outage=self.outage) if self.config.reap else None
        # And they run the schedule pass (a Ticker: at most one per partition ticks at a time, under
        # the ticker lease), so schedules fire while any reaping worker or reaper is alive.
        self.ticker = Ticker(backend, self.config.worker_id) if self.config.reap else None
        self.watcher: CompletionWatcher | None = None
        # ref -> (token, cancel scope) of every attempt still running here, fenced or not:
        # a fenced attempt that ignores cancellation still occupies a slot.
        self._running: dict[str, tuple[int, anyio.CancelScope]] = {}
        # Each attempt is a plain asyncio task (an anyio task costs several times more to
        # start, profiled); run() waits for all of them before it returns.
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()         # a slot was freed, or stop() was called
        self._stopping = asyncio.Event()
        self._idle_scope: anyio.CancelScope | None = None   # the idle wait stop() cuts short
        self._idle_timed_out = False   # the last idle wait ended with no token: a safety poll is due
        self._torn_down = False              # run() itself was cancelled: reports get 2 s
        self._crashed: BaseException | None = None
        self._tracer = None   # set by run(): None while telemetry is off (no span objects at all)
        self._shutting_down: set[str] = set()
        self.counts: dict[str, int] = defaultdict(int)
        # Sync tasks run in killable child processes, at most one per slot.
        self._processes = anyio.CapacityLimiter(self.config.concurrency)
        self._fence_dir: str | None = None
        # Evidence for live chaos checkers: when each attempt really ran (wall clock, ms), and what
        # its task produced (so a checker can hold the log's verdict against it).
        self.on_attempt = on_attempt
        # Only tests pass another policy (simulations/breakage.py): the one the simulator drives.
        self.policy = policy

    # --- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: no new leases; running attempts get ``drain_s`` to finish."""
        self._stopping.set()
        self._wake.set()
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()``; then drain, release what is left, and return.

        Raises the error of an attempt that failed in the worker itself (not in its
        task: those are reported), after stopping the others the same way.
        """
        self._loop = asyncio.get_running_loop()
        self._tracer = telemetry.active_tracer()
        with tuned_gc() if self.config.tune_gc else contextlib.nullcontext():
            async with anyio.create_task_group() as service:
                self.watcher = CompletionWatcher(self.backend, service)
                service.start_soon(self.keeper.run)
                service.start_soon(self.reporter.run)
                if self.reaper is not None:
                    service.start_soon(self.reaper.run)
                if self.housekeeper is not None:
                    service.start_soon(self.housekeeper.run)
                service.start_soon(self._announce)
                if self.ticker is not None:
                    service.start_soon(functools.partial(self.ticker.run, self.config.tick_interval_ms,
                                                         outage=self.outage))
                try:
                    task_status.started()
                    await self._acquire_loop()
                    await self._drain()
                except BaseException:  # marks the teardown, then re-raised: nothing is swallowed
                    self._torn_down = True
                    raise
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._end_attempts()
                        await self.client.stop_waiting()
                        with anyio.move_on_after(2), contextlib.suppress(Exception):
                            # suppress: a server that is gone keeps the entry, which then ages out (STALE_MS)
                            await presence.withdraw(self.backend, self.config.worker_id)
                service.cancel_scope.cancel()
        if self._crashed is not None:
            raise self._crashed

    async def _announce(self) -> None:
        """Keep this worker's presence entry (host, pid, version, last seen) fresh: `lessor workers`."""
        me = presence.this_process(self.config.worker_id, self.config.namespace, self.config.queue,
                                   self.config.concurrency, started_ms=0)
        first = [True]

        async def step() -> bool:
            nonlocal me
            me = await presence.announce(self.backend, me)
            if first[0]:
                first[0] = False
                await presence.forget_stale(self.backend, me.seen_ms)
            return False

        try:
            await keep_running(step, presence.ANNOUNCE_MS, self.outage)
        except Exception as exc:  # safe: presence is for people reading `lessor workers`; nothing decides by it
            log.warning("worker %s stops announcing itself (`lessor workers` lists it only while it holds "
                        "leases): %s", self.config.worker_id, exc)

    async def _acquire_loop(self) -> None:
        woken: int | None = None   # the partition whose wake-up token this worker just took
        while not self._stopping.is_set():
            free = self.config.concurrency - len(self._running)
            if free <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            sent_ms, mark = self.clock.now_ms(), self.outage.mark()
            try:
                if woken is None:
                    leases = await self.client.acquire(self.config.namespace, self.config.queue, free)
                else:
                    leases = await self.client.acquire_from(woken, self.config.namespace, self.config.queue, free)
                self.outage.ok(mark)
            except Exception as exc:  # a store fault waits and retries; anything else stops the worker
                if not is_transient(exc):
                    raise
                await self._pause_ms(self.outage.failed(exc))
                woken = None
                continue
            if leases:
                telemetry.instruments().queue_depth.add(-len(leases))
                self._start(leases, sent_ms)
            # Fewer than asked: each partition visited is empty now, and whatever is enqueued
            # from here on leaves a wake-up token, so block until one comes (or poll, without).
            if len(leases) < free and (self.config.wake or not leases):
                woken = await self._idle()
                # A safety poll that finds every queue empty goes back to waiting at once:
                # one EXISTS instead of an acquire per partition (a script and a ZCARD each).
                while woken is None and self._idle_timed_out and not await self._maybe_queued():
                    woken = await self._idle()
            else:
                woken = None

    async def _idle(self) -> int | None:
        """Wait for work: the partition of a wake-up token, or None (safety poll, stop, store fault).

        Sets ``_idle_timed_out`` when the wait ended with no token, nothing else (the safety poll is due).
        """
        self._idle_timed_out = False
        if not self.config.wake:
            await self._pause_ms(self.config.idle_poll_ms)
            return None
        woken, backoff_ms, mark = None, 0.0, self.outage.mark()
        with self._stoppable():
            try:
                woken = await self.client.wait_for_work(self.config.namespace, self.config.queue,
                                                        self.config.idle_poll_ms / 1000)
                self._idle_timed_out = woken is None and not self._stopping.is_set()
                self.outage.ok(mark)
            except Exception as exc:  # a store fault: back off, then poll every partition
                if not is_transient(exc):
                    raise
                backoff_ms = self.outage.failed(exc)
        if backoff_ms:
            await self._pause_ms(backoff_ms)
        return woken

    async def _maybe_queued(self) -> bool:
        """The safety poll's cheap look: False only if the server says every queue is empty.

        True on a store fault, so that the acquire which follows meets the fault and backs off as usual.
        """
        try:
            return await self.client.any_queued(self.config.namespace, self.config.queue)
        except Exception as exc:  # safe: any error means "look properly", and the acquire after it re-raises
            log.debug("worker %s: safety poll's look failed (%r); acquiring instead", self.config.worker_id, exc)
            return True

    async def _pause_ms(self, ms: float) -> None:
        """Sleep ``ms``, or less if stop() is called."""
        with self._stoppable():
            await anyio.sleep(ms / 1000)

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A block that stop() cuts short (its wait is cancelled; the block then just ends)."""
        with anyio.CancelScope() as self._idle_scope:
            if self._stopping.is_set():
                self._idle_scope.cancel()
            try:
                yield
            finally:
                self._idle_scope = None

    def _start(self, leases: list[Lease], sent_ms: float) -> None:
        if self.reaper is not None:
            self.reaper.poke()   # the grants may carry timeouts due before the reaper's wake-up
        for lease in leases:
            if lease.ref in self._running:
                # An earlier attempt of this action is still running here (fenced, not yet
                # stopped): give the new lease back at once rather than run it twice.
                self._spawn(self._send(lease, duplicate_lease()))
                continue
            scope = anyio.CancelScope()
            self._running[lease.ref] = (lease.token, scope)
            held = self.keeper.hold(lease, scope, sent_ms)
            if held.fenced is not None:   # heard past its self-fence deadline: start nothing, send nothing
                self.keeper.drop(lease.ref, lease.token)
                del self._running[lease.ref]
                continue
            self._spawn(self._execute(lease, scope, held))

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._crashed is None:
            self._crashed = task.exception()   # a bug, not a task's error: stop, then raise it
            log.error("worker %s stops: an attempt failed in the worker itself: %r",
                      self.config.worker_id, self._crashed)
            self.stop()

    async def _drain(self) -> None:
        with anyio.move_on_after(self.config.drain_s):
            while self._running:
                self._wake.clear()
                await self._wake.wait()

    async def _end_attempts(self) -> None:
        """Stop every attempt still running (released as shutting down), and wait for the
        attempts' reports, up to the report timeout; then cancel what is left."""
        for ref, (_, scope) in list(self._running.items()):
            self._shutting_down.add(ref)
            scope.cancel()
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=self.config.report_timeout_s + 5)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=5)

    # --- one attempt ---------------------------------------------------------------------

    async def _execute(self, lease: Lease, scope: anyio.CancelScope, held: HeldLease) -> None:
        if self._tracer is None:  # telemetry off: no span objects at all
            return await self._attempt(lease, scope, held)
        with self._tracer.start_as_current_span("lessor.attempt") as span:
            span.set_attribute("lessor.action", lease.ref)
            span.set_attribute("lessor.attempt", lease.attempt)
            span.set_attribute("lessor.token", lease.token)
            return await self._attempt(lease, scope, held)

    async def _attempt(self, lease: Lease, scope: anyio.CancelScope, held: HeldLease) -> None:
        """Run the task in ``scope`` (which the keeper cancels when the lease is lost), then report."""
        outcome: Outcome | None = None
        worker_id = self.config.worker_id
        try:
            if self.on_attempt is not None:
                self._evidence(lease, "start")
            tasklog.started(lease, worker_id)
            began_ms = self.clock.now_ms()
            try:
                with scope:
                    outcome = await self._run_task(lease, held)
            except asyncio.CancelledError:
                # Cancelled from outside (the worker is being torn down and its grace is over):
                # give the lease back so it fails over now, not after ttl + grace.
                ended = "unsent"
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    ended = await self._send(lease, self.policy.report(Ending(held.fenced, shutting_down=True)))
                tasklog.ended(lease, worker_id, self.clock.now_ms() - began_ms,
                              "released" if ended == "committed" else ended)
                raise
            ran_ms = self.clock.now_ms() - began_ms
            self.keeper.work_ended(held)
            if self.on_attempt is not None:
                self._evidence(lease, "end", held, outcome)
            how = "unsent"  # stays so only if the worker's last 2 s ran out before the report did
            if self._torn_down:  # the worker is going: a report gets 2 s, not the report timeout
                with anyio.move_on_after(2):
                    how = await self._finish(lease, held, outcome)
            else:
                how = await self._finish(lease, held, outcome)
            tasklog.ended(lease, worker_id, ran_ms, how, outcome.error if outcome is not None else None)
        finally:
            if end_attempt(self.keeper, self._running, lease.ref, lease.token, lambda entry: entry[0]):
                self._shutting_down.discard(lease.ref)
            if self.reaper is not None:
                self.reaper.poke()   # a failure may have left a backoff due before the reaper's wake-up
            self._wake.set()

    def _evidence(self, lease: Lease, event: str, held: HeldLease | None = None,
                  outcome: Outcome | None = None) -> None:
        record = {"worker": self.config.worker_id, "ref": lease.ref, "token": lease.token, "event": event,
                  "at_ms": _wall_ms()}
        if held is not None:
            record |= {"ended": held.fenced.value if held.fenced else "completed", "outcome": _produced(outcome)}
        self.on_attempt(record)

    async def _run_task(self, lease: Lease, held: HeldLease) -> Outcome | None:
        ctx = TaskContext(*lease.ref.rsplit("/", 2), attempt=lease.attempt, token=lease.token,
                          worker_id=self.config.worker_id, _children=self, _lease=lease)
        try:
            fn = self.registry.get(lease.task)
            inputs = unpack_value(lease.inputs)
        except (UnknownTask, ValueEncodingError) as exc:
            return Outcome(error=str(exc) if isinstance(exc, UnknownTask) else f"undecodable inputs: {exc}",
                           retryable=False)
        try:
            executor = self.registry.executor(lease.task)
            if executor == "process":
                result = await self._invoke_fenced_process(fn, ctx, inputs, held)
            else:
                result = await invoke(fn, ctx, inputs, executor, self._processes)
        except (StaleToken, ActionAborted) as exc:
            # A child submission was refused: this attempt no longer owns the action (or
            # it is being aborted). Stop as the keeper would have: fence, drop the result.
            self.keeper.fence(held, FenceReason.ABORTED if isinstance(exc, ActionAborted) else FenceReason.STALE)
            return None
        except Exception as exc:  # the task's own error: recorded as a failed attempt, never a success
            self.keeper.check_self_fence()
            if held.fenced is not None:  # the process ended itself at the self-fence deadline
                return None
            return Outcome(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        try:
            return Outcome(result=pack_value(result))
        except ValueEncodingError as exc:
            return Outcome(error=f"task {lease.task} returned an output lessor cannot carry: {exc}", retryable=False)

    async def _invoke_fenced_process(self, fn, ctx: TaskContext, inputs: Any, held: HeldLease) -> Any:
        """A sync task in a pool process, with its self-fence deadline published for the process's watchdog.

        The worker re-publishes the deadline every half heartbeat while it runs; a paused worker
        publishes nothing, so the process stops itself when the lease could be reaped.
        """
        if not isinstance(self.clock, SystemMonotonicClock):  # a simulated clock: no shared time to publish
            return await invoke(fn, ctx, inputs, "process", self._processes)
        if self._fence_dir is None:
            self._fence_dir = tempfile.mkdtemp(prefix="lessor-fence-")
        path = os.path.join(self._fence_dir, f"{held.lease.token}")
        after_ms = self.config.lease.self_fence_after_ms

        async def publish() -> None:
            while True:
                publish_fence(path, held.last_ok_send_ms + after_ms if held.fenced is None else 0)
                await anyio.sleep(self.config.lease.heartbeat_ms / 2000)

        try:
            async with anyio.create_task_group() as tg:
                publish_fence(path, held.last_ok_send_ms + after_ms)
                tg.start_soon(publish)
                try:
                    return await invoke(fn, ctx, inputs, "process", self._processes, fence_file=path)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _finish(self, lease: Lease, held: HeldLease, outcome: Outcome | None) -> str:
        """Report how the attempt ended, as the outcome policy decides: commit, fail, release or drop.

        Returns the outcome the task log shows: the report's kind (succeeded, failed, released,
        aborted, dropped) once the server confirmed it, else how it ended (refused, unconfirmed, error).
        """
        report = self.policy.report(Ending(held.fenced, lease.ref in self._shutting_down, outcome))
        ended = await self._send(lease, report)
        return report.kind.value if ended == "committed" else ended

    async def _send(self, lease: Lease, report: Report) -> str:
        """Make the fenced write ``report`` names; returns how it ended (see ``_report``, or ``dropped``).

        A count (succeeded, failed, released, aborted) moves only when the server
        confirmed the report; refused and unconfirmed reports are counted apart.
        A dropped result sends nothing: its token is never used again.
        """
        if report.call is Call.NONE:
            held = self.keeper.held.get(lease.ref)
            why = held.fenced.value if held is not None and held.fenced is not None else "not held"
            log.warning("dropped result of %s (token %s): lease %s", lease.ref, lease.token, why)
            self.counts[report.kind.value] += 1
            return report.kind.value
        if report.call is Call.COMPLETE:
            call = self.reporter.complete
        else:
            call = self.client.fail if report.call is Call.FAIL else self.client.release
        ended = await self._report(call, lease, *report.args)
        if ended == "committed":
            self.counts[report.kind.value] += 1
        return ended

    async def _report(self, call, lease: Lease, *args: Any) -> str:
        """Send one fenced report; returns ``committed``, or how the policy's ``retry`` ended it
        (``refused``, ``unconfirmed``, ``error``).

        A try that got no answer (server down or failing over, or not confirmed
        durable) is sent again with the same token, which every lessor write
        accepts as a repeat, for up to ``report_timeout_s`` (see
        ``outcome.decide_retry`` for why also past the self-fence deadline).
        """
        give_up_ms = self.clock.now_ms() + self.config.report_timeout_s * 1000
        while True:
            mark = self.outage.mark()
            try:
                await call(lease, *args)
                self.outage.ok(mark)
                return "committed"
            except Exception as exc:  # the policy sorts it: an answer, retried, or given up
                error = exc
            backoff_ms = self.outage.failed(error) if is_transient(error) else 0.0
            left_ms = give_up_ms - self.clock.now_ms()
            decision = self.policy.retry(error, left_ms)
            if decision != "retry":
                self._gave_up(lease, decision, error)
                return decision
            await anyio.sleep(retry_gap_ms(backoff_ms, left_ms) / 1000)

    def _gave_up(self, lease: Lease, decision: str, error: BaseException) -> None:
        meters = telemetry.instruments()
        if decision == "refused":
            meters.refused_reports.add(1)
            log.warning("report refused: %s", error)
        elif decision == "unconfirmed":
            meters.unconfirmed_reports.add(1)
            log.error("report for %s (token %s) got no answer within %g s; dropped as unconfirmed "
                      "(the server may or may not have it): %s",
                      lease.ref, lease.token, self.config.report_timeout_s, self.outage.last_error)
        else:
            log.error("report for %s (token %s) ended %s: %s", lease.ref, lease.token, decision, error)
        self.counts["errors" if decision == "error" else decision] += 1

    def statistics(self) -> WorkerStatistics:
        """Counts since start; ``keeper`` holds the heartbeat figures (renewals, fences)."""
        c = self.counts
        return WorkerStatistics(running=len(self._running), succeeded=c["succeeded"], failed=c["failed"],
                                released=c["released"], aborted=c["aborted"], dropped=c["dropped"],
                                refused=c["refused"], unconfirmed=c["unconfirmed"], errors=c["errors"],
                                keeper=self.keeper.statistics(),
                                reaper=self.reaper.statistics() if self.reaper else None)

    def _on_fence(self, held: HeldLease) -> None:
        log.warning("lease of %s (token %s) fenced: %s", held.lease.ref, held.lease.token, held.fenced.value)

    # --- children (this worker is the ``registry.Children`` of its task contexts) -----------------

    async def wait_child(self, namespace: str, run_id: str, action_id: str,
                         timeout_s: float | None = None) -> ActionInfo:
        """Wait until a child action is terminal (through this worker's completion watcher); its info."""
        return await self.watcher.wait(namespace, run_id, action_id, timeout_s)

    async def submit_child(self, lease: Lease, child_id: str, task: str, inputs: Any = None, *,
                           queue: str | None = None, retries: Retries = Retries(), timeout_s: float | None = None,
                           cache: CacheKey | None = None, priority: int = 0) -> bool:
        """Create a child action of ``lease``'s action, fenced by its token. True if created now."""
        namespace = "/".join(lease.ref.split("/", 2)[:2])
        spec = RunSpec(task, inputs=pack_value(inputs), namespace=namespace, queue=queue or self.config.queue,
                       retries=retries, timeout_ms=seconds_to_ms("timeout_s", timeout_s), priority=priority)
        spec.checked_run_id()  # validates task, queue, numbers
        check_id("action", child_id)
        cache_key = cache.key_for(spec.inputs) if cache else ""
        hit = await lookup_cache(self.backend, namespace, cache_key) if cache_key else None
        if not self.keeper.usable(lease.ref):  # checked last, right before the write
            raise StaleToken(f"{lease.ref} is fenced: no child submissions with token {lease.token}")
        r = spec.retries
        args = [lease.ref, lease.token, self.config.worker_id, child_id, task, spec.inputs, spec.queue,
                r.system, r.user, r.backoff_ms, spec.priority, spec.timeout_ms, cache_key]
        if hit is not None:
            args.append(hit)
        while True:  # a submission that got no answer is sent again: the child id makes it idempotent
            mark = self.outage.mark()
            try:
                code, created = await self.backend.call("submit_child", [self.backend.keys(lease.partition).prefix],
                                                        args)
                self.outage.ok(mark)
                break
            except Exception as exc:  # transient ones are retried while the lease is ours; the rest raise
                if not is_transient(exc) or not self.keeper.usable(lease.ref):
                    raise
                await anyio.sleep(self.outage.failed(exc) / 1000)
        raise_for(int(code), lease.ref, lease.token, int(created) if int(code) else 0)
        return bool(created)
