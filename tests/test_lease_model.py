"""Model-based test of leasing: the real scripts on a real server against a pure model.

A hypothesis ``RuleBasedStateMachine`` drives submit / acquire / renew /
complete / fail / release / reap / virtual-clock moves against the real server
(the session's server, virtual clock, no fakes) and, step by step, against
``Model``: plain Python data saying what DESIGN.md and the script headers say
must happen. After every step the machine checks that

* every call answered what the model predicted (lease refs, attempts,
  deadlines, renewal codes, StaleToken or not, backoff ready times), and tokens
  strictly increase per partition;
* the live projection (the action and run hashes) equals the model's state;
* the log says what the model says: per action and per run the exact sequence
  of events (type, token, worker, times, budgets, rejections);
* guarantee 1 holds in the log alone (no model involved): at most one
  action_succeeded per action, each carrying the token of the latest
  action_leased before it and never a token already expired; every StaleToken
  the model predicted is recorded as a report_rejected;
* replay: ``verify(backend) == []`` (the fold of the log equals the live state).

The async calls run through one private event loop (an anyio blocking portal),
so the state machine itself is synchronous. Each example starts from an empty
database. ``test_the_model_checks_can_fail`` breaks the system on purpose and
shows the checks catching it; ``test_reaper_and_renew_agree_at_the_end_of_grace``
pins the one-millisecond boundary the machine found in reap.lua at 1fb2ce2.

Failures print the shrunk sequence of steps (``Draw n`` lines name the lease).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lessor.core import events as ev
from lessor.core.codec import encode
from lessor.core.ids import action_ref, run_ref
from lessor.core.phases import run_phase_of
from lessor.errors import StaleToken
from lessor.leasing.backend import CONFIG_KEY
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.replay import verify
from lessor.leasing.scripts import VIRTUAL_CLOCK_KEY, ClockMode
from lessor.scheduler.submit import Retries, submit_run
from tests.conftest import PARTITIONS, make_backend

NS = "proj/development"
QUEUE = "default"
CFG = LeaseConfig(ttl_ms=1000, grace_ms=500)
TTL, GRACE = CFG.ttl_ms, CFG.grace_ms
START_MS = 1_000_000
WORKERS = ("w0", "w1", "w2")
RUN_IDS = tuple(f"m{i}" for i in range(5))  # partitions 3, 1, 3, 1, 2: shared and separate ones
JITTERS = (0.0, 0.25, 0.5, 0.75)
CLOCK_STEPS = (1, 250, 499, 500, 501, 999, 1000, 1001, 1499, 1500, 1501, 3000)

SETTINGS = settings(max_examples=50, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow], report_multiple_bugs=False)


# --- the model ------------------------------------------------------------------------


def reaper_may_expire(deadline: int, now: int) -> bool:
    """A lease is valid up to and including deadline + grace; the reaper may expire it only after."""
    return now > deadline + GRACE


@dataclass
class MAction:
    """What the model knows of one action (all our runs have only their root a0)."""

    ref: str
    run: str
    partition: int
    sys_left: int
    user_left: int
    backoff_ms: int
    phase: str = "queued"
    attempt: int = 0
    token: int = 0
    worker: str = ""
    deadline: int = 0
    ready_at: int = 0
    expirations: int = 0
    rejected: int = 0
    reap_score: int | None = None  # score in the partition's lease index (reap.lua), None = absent
    delayed_until: int | None = None  # in the partition's backoff set, None = absent
    renew_rejected: set[int] = field(default_factory=set)  # renewals are recorded once per token
    ended: str = ""  # "token:kind" of the write that ended the last attempt: repeating it is a no-op


class Model:
    """The lease semantics of DESIGN.md, on plain Python data.

    Events are kept as tuples (see ``describe``) per subject (action or run ref)
    so the log can be compared with them exactly.
    """

    def __init__(self, now: int) -> None:
        self.now = now
        self.actions: dict[str, MAction] = {}
        self.run_phase: dict[str, str] = {}
        self.queues: list[list[str]] = [[] for _ in range(PARTITIONS)]  # FIFO (priority is 0)
        self.next_partition = defaultdict(int)  # per worker: where its next acquire starts
        self.last_token = [0] * PARTITIONS
        self.events: dict[str, list[tuple]] = defaultdict(list)

    # -- helpers
    def _emit(self, subject: str, *fields) -> None:
        self.events[subject].append((*fields, self.now))

    def _terminal(self, a: MAction, phase: str) -> None:
        a.phase = phase
        a.reap_score = None
        run = run_ref(NS, a.run)
        self.run_phase[run] = phase
        self._emit(run, "run_completed", phase)

    def _requeue(self, a: MAction, reason: str, ready_at: int = 0) -> None:
        self._emit(a.ref, "action_requeued", reason, a.sys_left, a.user_left, ready_at)
        a.phase, a.worker, a.ready_at, a.reap_score = "queued", "", ready_at, None
        if ready_at > self.now:
            a.delayed_until = ready_at
        else:
            self.queues[a.partition].append(a.ref)

    def _expire(self, a: MAction) -> None:
        """The lease of running ``a`` is dead: requeue while system retries last, else fail."""
        self._emit(a.ref, "lease_expired", a.attempt, a.token, a.worker, a.deadline)
        a.expirations += 1
        if a.sys_left > 0:
            a.sys_left -= 1
            self._requeue(a, "lease_expired")
        else:
            self._emit(a.ref, "action_failed", "lease_expired", 0, 0, "")
            self._terminal(a, "failed")

    def _reject(self, a: MAction, kind: str, token: int, worker: str) -> None:
        self._emit(a.ref, "report_rejected", kind, token, worker, a.token)
        a.rejected += 1

    def _fence(self, a: MAction, lease: Lease, worker: str, kind: str) -> bool:
        """Only the current token of a running, unexpired lease may write."""
        if a.phase == "running" and a.token == lease.token and self.now > a.deadline + GRACE:
            self._expire(a)
        if a.phase != "running" or a.token != lease.token:
            self._reject(a, kind, lease.token, worker)
            return False
        return True

    # -- operations
    def submit(self, run: str, partition: int, retries: Retries) -> None:
        ref = action_ref(NS, run, "a0")
        self.actions[ref] = MAction(ref, run, partition, retries.system, retries.user, retries.backoff_ms)
        self.run_phase[run_ref(NS, run)] = "running"
        self._emit(run_ref(NS, run), "run_created")
        self._emit(ref, "action_created", retries.system, retries.user, retries.backoff_ms)
        self.queues[partition].append(ref)

    def acquire(self, worker: str, n: int) -> list[str]:
        """The refs LeaseClient.acquire must return: partitions in turn, FIFO within one."""
        refs: list[str] = []
        for _ in range(PARTITIONS):
            p = self.next_partition[worker]
            self.next_partition[worker] = (p + 1) % PARTITIONS
            take = self.queues[p][: n - len(refs)]
            del self.queues[p][: len(take)]
            refs += take
            if len(refs) >= n:
                break
        return refs

    def granted(self, ref: str, worker: str, token: int) -> None:
        a = self.actions[ref]
        assert token > self.last_token[a.partition], (
            f"token {token} of {ref} is not above the partition's last token {self.last_token[a.partition]}")
        self.last_token[a.partition] = token
        a.phase, a.token, a.worker, a.ready_at = "running", token, worker, 0
        a.attempt += 1
        a.deadline = self.now + TTL
        a.reap_score = a.deadline + GRACE
        self._emit(ref, "action_leased", a.attempt, token, worker, a.deadline)

    def renew(self, worker: str, lease: Lease) -> Code:
        a = self.actions[lease.ref]
        if a.phase == "running" and a.token == lease.token:
            if self.now <= a.deadline:
                a.deadline = self.now + TTL
                return Code.OK
            if self.now <= a.deadline + GRACE:
                self._emit(a.ref, "lease_resumed", a.attempt, a.token, worker, self.now - a.deadline,
                           self.now + TTL)
                a.deadline = self.now + TTL
                return Code.RESUMED
            self._expire(a)
        if lease.token not in a.renew_rejected:
            a.renew_rejected.add(lease.token)
            self._reject(a, "renew", lease.token, worker)
        return Code.STALE

    def complete(self, worker: str, lease: Lease, result: bytes) -> bool:
        """True if accepted; False = StaleToken (refused, recorded)."""
        a = self.actions[lease.ref]
        if a.phase == "succeeded" and a.token == lease.token:
            return True  # the same token again: idempotent, nothing recorded
        if a.ended == f"{lease.token}:complete":
            return True
        if not self._fence(a, lease, worker, "complete"):
            return False
        a.ended = f"{lease.token}:complete"
        self._emit(a.ref, "action_succeeded", a.attempt, a.token, worker, result)
        self._terminal(a, "succeeded")
        return True

    def fail(self, worker: str, lease: Lease, retryable: bool, jitter: float) -> int | None:
        """ready_at (0 = failed for good); None = StaleToken."""
        a = self.actions[lease.ref]
        if a.ended == f"{lease.token}:fail":
            return 0  # the same failure repeated (a lost reply): already recorded
        if not self._fence(a, lease, worker, "fail"):
            return None
        a.ended = f"{lease.token}:fail"
        if retryable and a.user_left > 0:
            delay = min(a.backoff_ms * 2.0 ** (a.attempt - 1), 600_000) * (0.5 + jitter)
            ready_at = self.now + math.floor(delay)
            a.user_left -= 1
            self._requeue(a, "user_error", ready_at)
            return ready_at
        self._emit(a.ref, "action_failed", "user_error", a.attempt, a.token, worker)
        self._terminal(a, "failed")
        return 0

    def release(self, worker: str, lease: Lease) -> bool:
        a = self.actions[lease.ref]
        if a.ended == f"{lease.token}:release":
            return True  # the same release repeated: already done
        if not self._fence(a, lease, worker, "release"):
            return False
        a.ended = f"{lease.token}:release"
        self._requeue(a, "released")
        return True

    def reap(self) -> tuple[int, int]:
        """One reaper pass: (expired, promoted). Index order: (score, ref), as a Redis zset."""
        expired = promoted = 0
        for p in range(PARTITIONS):
            mine = [a for a in self.actions.values() if a.partition == p]
            due = sorted((a.reap_score, a.ref) for a in mine
                         if a.reap_score is not None and a.reap_score <= self.now)
            for _, ref in due:
                a = self.actions[ref]
                if not reaper_may_expire(a.deadline, self.now):
                    a.reap_score = a.deadline + GRACE  # renewed since: re-scored, left alone
                else:
                    a.reap_score = None
                    self._expire(a)
                    expired += 1
            ready = sorted((a.delayed_until, a.ref) for a in mine
                           if a.delayed_until is not None and a.delayed_until <= self.now)
            for _, ref in ready:
                a = self.actions[ref]
                a.delayed_until = None
                if a.phase == "queued":
                    self.queues[p].append(ref)
                    promoted += 1
        return expired, promoted


def describe(e: ev.Event) -> tuple:
    """The fields of a logged event the model predicts, in the model's tuple form."""
    t = e.TYPE
    match e:
        case ev.RunCreated():
            body = ()
        case ev.RunCompleted():
            body = (e.phase,)
        case ev.ActionCreated():
            body = (e.sys_retries, e.user_retries, e.backoff_ms)
        case ev.ActionLeased():
            body = (e.attempt, e.token, e.worker, e.deadline_ms)
        case ev.LeaseResumed():
            body = (e.attempt, e.token, e.worker, e.late_ms, e.deadline_ms)
        case ev.LeaseExpired():
            body = (e.attempt, e.token, e.worker, e.deadline_ms)
        case ev.ActionRequeued():
            body = (e.reason, e.sys_left, e.user_left, e.ready_at_ms)
        case ev.ActionSucceeded():
            body = (e.attempt, e.token, e.worker, e.result)
        case ev.ActionFailed():
            body = (e.reason, e.attempt, e.token, e.worker)
        case ev.ReportRejected():
            body = (e.kind, e.token, e.worker, e.current_token)
        case _:
            body = ("<not modelled>", repr(e))
    return (t, *body, e.ts)


def subject_of(e: ev.Event) -> str:
    action = getattr(e, "action", "")
    return action_ref(e.ns, e.run, action) if action else run_ref(e.ns, e.run)


def check_single_owner(events: list[ev.Event]) -> None:
    """Guarantee 1 read from the log alone (events of each partition in log order)."""
    leased: dict[str, int] = {}
    expired: dict[str, set[int]] = defaultdict(set)
    succeeded: Counter[str] = Counter()
    for e in events:
        ref = subject_of(e)
        if isinstance(e, ev.ActionLeased):
            leased[ref] = e.token
        elif isinstance(e, ev.LeaseExpired):
            expired[ref].add(e.token)
        elif isinstance(e, ev.ActionSucceeded) or (isinstance(e, ev.ActionFailed) and e.reason == "user_error"):
            if isinstance(e, ev.ActionSucceeded):
                succeeded[ref] += 1
                assert succeeded[ref] == 1, f"more than one action_succeeded for {ref}: {e}"
            assert e.token == leased.get(ref), (
                f"{e.TYPE} of {ref} carries token {e.token}, but the latest lease has {leased.get(ref)}")
            assert e.token not in expired[ref], f"{e.TYPE} of {ref} accepted an expired token {e.token}"


# --- the real side --------------------------------------------------------------------


class FixedJitter:
    """The rng a LeaseClient draws its backoff jitter from, set by the test before each fail."""

    value = 0.0

    def random(self) -> float:
        return self.value


class Harness:
    """One private event loop (blocking portal) and a virtual-clock Backend on it."""

    def __init__(self, url: str) -> None:
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal("asyncio"))
        self.backend = self.portal.call(functools.partial(make_backend, url, clock=ClockMode.VIRTUAL))

    def call(self, fn, *args, **kwargs):
        return self.portal.call(functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        try:
            self.portal.call(self.backend.redis.aclose)
        finally:
            self._stack.close()


@contextlib.contextmanager
def harness(url: str):
    h = Harness(url)
    try:
        yield h
    finally:
        h.close()


class LeaseMachine(RuleBasedStateMachine):
    """Real server and Model side by side; the ``do_*`` methods are usable without hypothesis."""

    def __init__(self, h: Harness) -> None:
        super().__init__()
        self.h = h
        self.b = h.backend
        self.h.call(self._reset)
        self.model = Model(START_MS)
        self.jitter = {w: FixedJitter() for w in WORKERS}
        self.clients = {w: LeaseClient(self.b, w, CFG, rng=self.jitter[w]) for w in WORKERS}
        self.reaper = Reaper(self.b)
        self.held: list[tuple[str, Lease]] = []  # every lease ever granted, with its worker
        self.refused: list[tuple[str, str, int, str]] = []  # StaleTokens seen: (ref, kind, token, worker)
        self.runs = 0

    async def _reset(self) -> None:
        await self.b.redis.flushall()
        await self.b.redis.hset(CONFIG_KEY, "partitions", PARTITIONS)
        await self.b.redis.set(VIRTUAL_CLOCK_KEY, START_MS)

    # -- operations on both sides, each checking the real answer against the model's
    def do_submit(self, retries: Retries) -> str:
        run = RUN_IDS[self.runs]
        self.runs += 1
        self.h.call(submit_run, self.b, "t", namespace=NS, queue=QUEUE, retries=retries, run_id=run)
        self.model.submit(run, self.b.keys_for_run(NS, run).partition, retries)
        return run

    def do_set_clock(self, ms: int) -> None:
        assert ms >= self.model.now
        self.h.call(self.b.redis.set, VIRTUAL_CLOCK_KEY, ms)
        self.model.now = ms

    def do_acquire(self, worker: str, n: int) -> list[Lease]:
        leases = self.h.call(self.clients[worker].acquire, NS, QUEUE, n)
        expected = self.model.acquire(worker, n)
        assert [lease.ref for lease in leases] == expected, f"acquire({worker}, {n}) granted the wrong actions"
        for lease in leases:
            self.model.granted(lease.ref, worker, lease.token)
            a = self.model.actions[lease.ref]
            assert (lease.attempt, lease.deadline_ms, lease.partition) == (a.attempt, a.deadline, a.partition)
            self.held.append((worker, lease))
        return leases

    def do_renew(self, worker: str, leases: list[Lease]) -> dict[str, Code]:
        codes = self.h.call(self.clients[worker].renew, leases)
        expected = {lease.ref: self.model.renew(worker, lease) for lease in leases}
        assert codes == expected, f"renew by {worker} of {[(x.ref, x.token) for x in leases]}"
        return codes

    def _refused(self, kind: str, worker: str, lease: Lease) -> None:
        self.refused.append((lease.ref, kind, lease.token, worker))

    def do_complete(self, worker: str, lease: Lease) -> bool:
        result = f"{worker}:{lease.token}".encode()
        accepted = self.model.complete(worker, lease, result)
        try:
            self.h.call(self.clients[worker].complete, lease, result)
        except StaleToken:
            assert not accepted, f"complete of {lease.ref} with current token {lease.token} was refused"
            self._refused("complete", worker, lease)
            return False
        assert accepted, f"complete of {lease.ref} with token {lease.token} was accepted; the model refuses it"
        return True

    def do_fail(self, worker: str, lease: Lease, retryable: bool, jitter: float) -> int | None:
        self.jitter[worker].value = jitter
        expected = self.model.fail(worker, lease, retryable, jitter)
        try:
            ready_at = self.h.call(self.clients[worker].fail, lease, "ValueError: boom", retryable)
        except StaleToken:
            assert expected is None, f"fail of {lease.ref} with current token {lease.token} was refused"
            self._refused("fail", worker, lease)
            return None
        assert expected is not None, f"fail of {lease.ref} with token {lease.token} was accepted; the model refuses it"
        assert ready_at == expected, f"fail of {lease.ref}: ready at {ready_at}, model says {expected}"
        return ready_at

    def do_release(self, worker: str, lease: Lease) -> bool:
        accepted = self.model.release(worker, lease)
        try:
            self.h.call(self.clients[worker].release, lease, "test")
        except StaleToken:
            assert not accepted, f"release of {lease.ref} with current token {lease.token} was refused"
            self._refused("release", worker, lease)
            return False
        assert accepted, f"release of {lease.ref} with token {lease.token} was accepted; the model refuses it"
        return True

    def do_reap(self) -> tuple[int, int]:
        result = self.h.call(self.reaper.reap_once)
        expected = self.model.reap()
        assert (result.expired, result.promoted) == expected, f"reap did {result}, model says {expected}"
        return expected

    # -- checks
    def check_projection(self) -> None:
        """Each action's and run's hash equals the model's state."""
        names = ("phase", "token", "attempt", "worker", "sys_left", "user_left", "ready_at_ms",
                 "expirations", "rejected", "deadline_ms")
        refs = sorted(self.model.actions)

        async def read():
            pipe = self.b.redis.pipeline(transaction=False)
            for ref in refs:
                pipe.hmget(self.b.keys_for_ref(ref).action(ref), names)
            for ref in refs:
                run = run_ref(NS, self.model.actions[ref].run)
                pipe.hget(self.b.keys_for_ref(ref).run_root(run), "phase")   # the run lives on its root's hash
            return await pipe.execute()

        replies = self.h.call(read)
        for ref, values, run_phase in zip(refs, replies, replies[len(refs):]):
            a = self.model.actions[ref]
            # A missing field reads as its default ('' for text, '0' for numbers); phase must exist.
            live = {name: v.decode() if v is not None else None if name == "phase" else
                    "" if name == "worker" else "0" for name, v in zip(names, values)}
            want = dict(phase=a.phase, token=str(a.token), attempt=str(a.attempt), worker=a.worker,
                        sys_left=str(a.sys_left), user_left=str(a.user_left), ready_at_ms=str(a.ready_at),
                        expirations=str(a.expirations), rejected=str(a.rejected), deadline_ms=str(a.deadline))
            if a.phase != "running":
                del live["deadline_ms"], want["deadline_ms"]  # stale once the lease ended
            assert live == want, f"{ref}: live {live} != model {want}"
            assert run_phase_of(run_phase) == self.model.run_phase[run_ref(NS, a.run)], f"run of {ref}"

    def check_log(self) -> None:
        """Guarantee 1 in the log, the log equals the model's events, and replay equals live."""

        async def read():
            return [entry.event for entry in await EventLog(self.b).read_all()]

        events = self.h.call(read)
        check_single_owner(events)
        logged = Counter(("report_rejected", kind, token, worker, ref)
                         for e in events if isinstance(e, ev.ReportRejected)
                         for ref, kind, token, worker in [(subject_of(e), e.kind, e.token, e.worker)])
        for (ref, kind, token, worker), n in Counter(self.refused).items():
            assert logged[("report_rejected", kind, token, worker, ref)] >= n, (
                f"StaleToken for {kind} of {ref} token {token} by {worker} is not recorded as report_rejected")
        observed: dict[str, list[tuple]] = defaultdict(list)
        for e in events:
            observed[subject_of(e)].append(describe(e))
        for subject in sorted(set(observed) | set(self.model.events)):
            assert observed.get(subject, []) == self.model.events.get(subject, []), (
                f"log of {subject} differs from the model")
        diffs = self.h.call(verify, self.b)
        assert diffs == [], "fold of the log != live projection:\n" + "\n".join(map(str, diffs))

    # -- hypothesis rules (draw, then delegate to do_*)
    def _pick(self, data, fresh: bool) -> tuple[str, Lease]:
        current = [(w, lease) for w, lease in self.held
                   if (a := self.model.actions[lease.ref]).phase == "running" and a.token == lease.token]
        return data.draw(st.sampled_from(current if fresh and current else self.held))

    @initialize(retries=st.lists(st.builds(Retries, user=st.integers(0, 2), system=st.integers(0, 2),
                                           backoff_ms=st.sampled_from([0, 200, 1000])),
                                 min_size=2, max_size=2))
    def start(self, retries):
        for r in retries:
            self.do_submit(r)

    @precondition(lambda self: self.runs < len(RUN_IDS))
    @rule(user=st.integers(0, 2), system=st.integers(0, 2), backoff_ms=st.sampled_from([0, 200, 1000]))
    def submit(self, user, system, backoff_ms):
        self.do_submit(Retries(user=user, system=system, backoff_ms=backoff_ms))

    @rule(worker=st.sampled_from(WORKERS), n=st.integers(1, 3))
    def acquire(self, worker, n):
        event(f"acquire: {len(self.do_acquire(worker, n))} granted")

    @precondition(lambda self: self.held)
    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def renew(self, worker, data):
        mine = [lease for w, lease in self.held if w == worker] or [lease for _, lease in self.held]
        chosen = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=3))
        by_ref = {lease.ref: lease for lease in chosen}  # renew() answers per ref: one lease per ref
        for code in self.do_renew(worker, list(by_ref.values())).values():
            event(f"renew: {code.name}")

    @precondition(lambda self: self.held)
    @rule(fresh=st.booleans(), data=st.data())
    def complete(self, fresh, data):
        event(f"complete: {'accepted' if self.do_complete(*self._pick(data, fresh)) else 'StaleToken'}")

    @precondition(lambda self: self.held)
    @rule(fresh=st.booleans(), retryable=st.booleans(), jitter=st.sampled_from(JITTERS), data=st.data())
    def fail(self, fresh, retryable, jitter, data):
        ready_at = self.do_fail(*self._pick(data, fresh), retryable, jitter)
        event("fail: " + ("StaleToken" if ready_at is None else "failed" if ready_at == 0
                          else "retry now" if ready_at == self.model.now else "backoff"))

    @precondition(lambda self: self.held)
    @rule(fresh=st.booleans(), data=st.data())
    def release(self, fresh, data):
        event(f"release: {'accepted' if self.do_release(*self._pick(data, fresh)) else 'StaleToken'}")

    @precondition(lambda self: any(a.phase == "running" or a.delayed_until is not None
                                   for a in self.model.actions.values()))
    @rule()
    def reap(self):
        expired, promoted = self.do_reap()
        event(f"reap: expired {min(expired, 2)}{'+' if expired > 2 else ''}, promoted {promoted}")

    @precondition(lambda self: any(a.phase == "running" or a.delayed_until is not None
                                   for a in self.model.actions.values()))
    @rule(delta=st.sampled_from(CLOCK_STEPS))
    def advance(self, delta):
        event("advance")
        self.do_set_clock(self.model.now + delta)

    @precondition(lambda self: any(a.phase == "running" for a in self.model.actions.values()))
    @rule(data=st.data(), edge=st.sampled_from([0, 1, GRACE, GRACE + 1]))
    def advance_to_a_lease_edge(self, data, edge):
        """Land exactly on a lease's deadline / end of grace (or 1 ms past), if not in the past."""
        running = sorted(ref for ref, a in self.model.actions.items() if a.phase == "running")
        a = self.model.actions[data.draw(st.sampled_from(running))]
        event(f"advance to deadline + {edge}" if a.deadline + edge >= self.model.now else "advance: edge passed")
        self.do_set_clock(max(self.model.now, a.deadline + edge))

    @invariant()
    def projection_matches_the_model(self):
        self.check_projection()

    @invariant()
    def log_matches_the_model_and_guarantee_1_holds(self):
        self.check_log()


def test_leases_follow_the_model(flushed):
    with harness(flushed) as h:
        run_state_machine_as_test(lambda: LeaseMachine(h), settings=SETTINGS)


# --- the checks can fail ----------------------------------------------------------------


def _one_leased_action(h: Harness) -> tuple[LeaseMachine, Lease]:
    m = LeaseMachine(h)
    m.do_submit(Retries(user=1, system=1))
    (lease,) = m.do_acquire("w0", 1)
    m.check_projection()
    m.check_log()
    return m, lease


def test_the_model_checks_can_fail(flushed):
    with harness(flushed) as h:
        # 1. The projection is changed behind the scripts' back: the token no longer matches.
        m, lease = _one_leased_action(h)
        key = m.b.keys_for_ref(lease.ref).action(lease.ref)
        h.call(m.b.redis.hset, key, "token", lease.token + 1)
        with pytest.raises(AssertionError, match="live .* != model"):
            m.check_projection()

        # 2. A second result for one action appears in the log (written around the scripts).
        m, lease = _one_leased_action(h)
        assert m.do_complete("w0", lease)
        m.check_log()
        second = ev.ActionSucceeded(ns=NS, run=lease.ref.split("/")[2], action="a0", attempt=1,
                                    token=lease.token, worker="w9", result=b"second")
        h.call(m.b.redis.xadd, m.b.keys(lease.partition).stream, {"e": encode(second)})
        with pytest.raises(AssertionError, match="more than one action_succeeded"):
            m.check_log()

        # 3. A broken fence: after a failover the server is made to take the old token again.
        m, old = _one_leased_action(h)
        m.do_set_clock(START_MS + TTL + GRACE + 1)
        m.do_reap()
        (new,) = m.do_acquire("w1", 1)
        assert new.token > old.token
        h.call(m.b.redis.hset, m.b.keys_for_ref(old.ref).action(old.ref), "token", old.token)
        with pytest.raises(AssertionError, match="was accepted; the model refuses it"):
            m.do_complete("w0", old)


def test_reaper_and_renew_agree_at_the_end_of_grace(flushed):
    """At now == deadline + grace the lease is still valid (renew resumes it), so the reaper leaves it;
    1 ms later it is dead for both. (reap.lua at 1fb2ce2 expired it at the boundary already.)"""
    with harness(flushed) as h:
        m = LeaseMachine(h)
        m.do_submit(Retries(system=1))
        (lease,) = m.do_acquire("w0", 1)
        m.do_set_clock(lease.deadline_ms + GRACE)
        assert m.do_reap() == (0, 0), "the reaper expired a lease that a renewal at this instant resumes"
        assert m.do_renew("w0", [lease]) == {lease.ref: Code.RESUMED}
        m.do_set_clock(m.model.now + TTL + GRACE)
        assert m.do_reap() == (0, 0)
        m.do_set_clock(m.model.now + 1)
        assert m.do_reap() == (1, 0)
        m.check_projection()
        m.check_log()
