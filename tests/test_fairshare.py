"""Fair share across namespaces and running limits, in acquire.lua, on a real server.

Most tests use one partition, where the order is exact (fairness and limits are kept
per partition: leasing/fairshare.py says how that adds up over partitions).
"""

from __future__ import annotations

import collections
import json

import anyio
import pytest

from lessor.core import events as ev
from lessor.errors import ConfigError
from lessor.leasing import fairshare
from lessor.leasing.backend import Backend, make_redis
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.replay import verify
from lessor.leasing.scripts import ClockMode
from lessor.scheduler.control import abort_run
from lessor.scheduler.submit import Retries, RunSpec, submit_runs
from tests.conftest import VirtualClock

pytestmark = pytest.mark.anyio
A, B, C = "big/prod", "small/prod", "third/prod"
Q = "default"
CFG = LeaseConfig(ttl_ms=1000, grace_ms=500)


@pytest.fixture
async def one(flushed):
    """A one-partition backend on the virtual clock."""
    b = Backend(redis=make_redis(flushed), url=flushed, partitions=1, clock=ClockMode.VIRTUAL)
    b.vclock = VirtualClock(b)
    await b.vclock.set(1_000_000)
    yield b
    await b.redis.aclose()


async def submit(b, ns: str, n: int, **kw) -> None:
    for start in range(0, n, 2000):
        await submit_runs(b, [RunSpec("t", namespace=ns, queue=Q, **kw) for _ in range(min(2000, n - start))])


def namespace_of(lease) -> str:
    return "/".join(lease.ref.split("/")[:2])


async def running_counters(b) -> dict:
    out = {}
    for k in b.all_keys():
        out.update({f.decode(): int(v) for f, v in (await b.redis.hgetall(k.running(Q))).items()})
    return out


async def test_shares_follow_the_weights_and_priority_holds_within_a_namespace(one):
    await submit(one, A, 400)
    await submit(one, B, 300)
    await submit_runs(one, [RunSpec("urgent", namespace=B, queue=Q, priority=5)])
    await fairshare.set_fair_share(one, Q, A, weight=3)
    w = LeaseClient(one, "w1", CFG)
    leases = []
    for _ in range(25):
        leases += await w.acquire("*", Q, 8)
    counts = collections.Counter(namespace_of(lease) for lease in leases)
    assert counts[A] + counts[B] == 200
    assert abs(counts[A] - 150) <= 2, counts            # 3:1, exact to a stride
    first_b = next(lease for lease in leases if namespace_of(lease) == B)
    assert first_b.task == "urgent"                     # priority first inside its namespace
    assert await verify(one) == []


async def test_equal_weights_alternate(one):
    await submit(one, A, 50)
    await submit(one, B, 50)
    got = await LeaseClient(one, "w1", CFG).acquire("*", Q, 20)
    assert collections.Counter(namespace_of(lease) for lease in got) == {A: 10, B: 10}


async def test_a_small_namespace_behind_10k_queued_runs_starts_in_the_first_round(one):
    await submit(one, A, 10_000)
    w = LeaseClient(one, "w1", CFG)
    assert {namespace_of(lease) for lease in await w.acquire("*", Q, 4)} == {A}
    await submit(one, B, 10)
    first_round = await w.acquire("*", Q, 20)
    assert collections.Counter(namespace_of(lease) for lease in first_round)[B] == 10


async def test_limits_hold_under_concurrent_workers_proved_from_the_log(one):
    await submit(one, A, 300)
    await submit(one, B, 300)
    await fairshare.set_fair_share(one, Q, A, max_running=5)
    await fairshare.set_queue_limit(one, Q, 8)
    leased = collections.Counter()

    async def worker(i: int) -> None:
        w = LeaseClient(one, f"w{i}", CFG)
        held = []
        for round_ in range(40):
            got = await w.acquire("*", Q, 3)
            leased.update(namespace_of(lease) for lease in got)
            held += got
            if held and round_ % 2:
                await w.complete(held.pop(0), b"")
            await anyio.sleep(0)
        for lease in held:
            await w.complete(lease, b"")

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(worker, i)
    running: collections.Counter = collections.Counter()
    peak: collections.Counter = collections.Counter()
    live: set[str] = set()   # refs running now, in log order
    for entry in await EventLog(one).read_all():
        e = entry.event
        ref = f"{e.ns}/{getattr(e, 'run', '')}/{getattr(e, 'action', '')}"
        if isinstance(e, ev.ActionLeased):
            live.add(ref)
            running[e.ns] += 1
            running["*"] += 1
        elif isinstance(e, (ev.ActionSucceeded, ev.ActionFailed, ev.ActionRequeued, ev.ActionAborted,
                            ev.ActionTimedOut)) and ref in live:
            live.discard(ref)
            running[e.ns] -= 1
            running["*"] -= 1
        for k, v in running.items():
            peak[k] = max(peak[k], v)
    assert peak[A] == 5 and peak["*"] == 8, peak        # reached, never passed
    assert leased[A] > 0 and leased[B] > 0
    assert await running_counters(one) == {}


async def test_every_path_that_ends_a_lease_releases_its_count(one):
    """complete, fail (retry and final), release, abort (queued and running), reap, timeout."""
    await submit(one, A, 6, retries=Retries(user=1, system=1, backoff_ms=100))
    await submit(one, B, 3, timeout_ms=1000)
    w = LeaseClient(one, "w1", CFG)
    got = await w.acquire("*", Q, 9)
    assert len(got) == 9
    assert await running_counters(one) == {A: 6, B: 3, "*": 9}
    a = [lease for lease in got if namespace_of(lease) == A]
    b = [lease for lease in got if namespace_of(lease) == B]
    await w.complete(a[0], b"ok")
    await w.fail(a[1], "boom", retryable=True)          # backs off, then queued again
    await w.fail(a[2], "boom", retryable=False)
    await w.release(a[3], "bye")
    await abort_run(one, A, a[4].ref.split("/")[2])     # running: requested, ends on release
    assert (await w.renew([a[4]]))[a[4].ref].name == "ABORTED"
    await w.release(a[4], "aborted")
    await one.vclock.advance(1200)
    await w.renew([b[0]])                               # b[0] times out (1000 ms), the rest expire
    await one.vclock.advance(400)
    await Reaper(one, limit=100).reap_once()
    await one.vclock.advance(2000)
    await Reaper(one, limit=100).reap_once()
    assert await running_counters(one) == {}
    again = await w.acquire("*", Q, 20)                 # the retries and requeued ones
    assert again and await running_counters(one) != {}
    await abort_run(one, A, a[5].ref.split("/")[2])     # a queued one too (it was requeued)
    for lease in again:
        if (await w.renew([lease]))[lease.ref].name == "ABORTED":
            await w.release(lease, "aborted")
        else:
            await w.complete(lease, b"")
    assert await running_counters(one) == {}
    assert await verify(one) == []


async def test_a_namespace_at_its_limit_steps_aside_and_comes_back_when_a_lease_ends(one):
    await submit(one, A, 50)
    await submit(one, B, 50)
    await fairshare.set_fair_share(one, Q, A, max_running=2)
    w = LeaseClient(one, "w1", CFG)
    got = await w.acquire("*", Q, 10)
    assert collections.Counter(namespace_of(lease) for lease in got) == {A: 2, B: 8}
    assert await w.acquire(A, Q, 5) == []               # its own workers are held too
    await w.complete(next(lease for lease in got if namespace_of(lease) == A), b"")
    more = await w.acquire("*", Q, 4)
    assert collections.Counter(namespace_of(lease) for lease in more)[A] == 1


async def test_a_queue_filled_before_fair_share_is_found_by_sync(one):
    await submit(one, A, 5)
    await submit(one, B, 5)
    w = LeaseClient(one, "w1", CFG)
    held = await w.acquire(A, Q, 2)
    # The layout before fair share: per-namespace queues, no rotation, no counters.
    await one.redis.delete(one.keys(0).fair(Q), one.keys(0).running(Q))
    assert await w.acquire("*", Q, 10) == []
    for lease in held:
        await w.complete(lease, b"")                     # counters never go below 0
    assert await running_counters(one) == {}
    (late,) = await w.acquire(A, Q, 1)                   # a worker of one namespace still drains it
    assert await fairshare.sync(one) == (1, 1)           # B joins; the one running lease is counted
    assert await running_counters(one) == {A: 1, "*": 1}
    rest = await w.acquire("*", Q, 10)
    assert collections.Counter(namespace_of(lease) for lease in rest) == {A: 2, B: 5}


async def test_shares_and_limits_over_partitions_add_up(backend):
    """Four partitions: the limit is split ceil(N/P) per partition, shown summed."""
    await submit(backend, A, 40)
    await fairshare.set_fair_share(backend, Q, A, weight=2, max_running=6)
    got = await LeaseClient(backend, "w1", CFG).acquire("*", Q, 40)
    assert len(got) <= 4 * 2 and len(got) >= 6          # 2 per partition (ceil(6/4))
    shown = await fairshare.show(backend, Q)
    (row,) = shown.namespaces
    assert (row.weight, row.max_running, row.running, row.queued) == (2.0, 6, len(got), 40 - len(got))


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight=0), "weight must be a number above 0"),
    (dict(weight=float("nan")), "weight must be a number above 0"),
    (dict(max_running=-1), "max_running must be an integer in 0"),
    (dict(max_running=2.5), "max_running must be an integer in 0"),
])
async def test_bad_weights_and_limits_are_refused_and_change_nothing(one, kwargs, message):
    await fairshare.set_fair_share(one, Q, A, weight=2)
    with pytest.raises(ConfigError, match=message):
        await fairshare.set_fair_share(one, Q, A, **kwargs)
    assert (await fairshare.stored(one))[Q]["namespaces"][A] == {"weight": 2.0}


async def test_a_worker_of_every_namespace_is_accepted_and_a_bad_one_is_named(one):
    with pytest.raises(ValueError, match="or be '\\*' for every namespace"):
        await LeaseClient(one, "w1", CFG).acquire("nope", Q, 1)


async def _mixed_workload(b, seed: int) -> list:
    """Three namespaces (weights 3, 1, 2) on one queue, three workers of '*', bursts of
    submits, and leases ending every way (complete, retry, fail, release, abort)."""
    import random

    rng = random.Random(seed)
    weights = {A: 3, B: 1, C: 2}
    for ns, w in weights.items():
        await fairshare.set_fair_share(b, Q, ns, weight=w)
    workers = [LeaseClient(b, f"w{i}", CFG) for i in range(3)]
    held: list = []
    for step in range(120):
        if step % 10 == 0:
            for ns in weights:
                if rng.random() < 0.8:
                    await submit(b, ns, rng.randint(5, 40), retries=Retries(user=1, backoff_ms=rng.choice([0, 50])))
        w = rng.choice(workers)
        for lease in await w.acquire("*", Q, rng.randint(1, 6)):
            held.append((w, lease))
        rng.shuffle(held)
        for _ in range(min(len(held), rng.randint(0, 6))):
            w, lease = held.pop()
            roll = rng.random()
            if roll < 0.6:
                await w.complete(lease, b"")
            elif roll < 0.75:
                await w.fail(lease, "boom", retryable=True)
            elif roll < 0.85:
                await w.release(lease, "bye")
            elif roll < 0.95:
                await w.fail(lease, "boom", retryable=False)
            else:
                await abort_run(b, namespace_of(lease), lease.ref.split("/")[2])
                await w.release(lease, "aborted")
        if step % 17 == 0:
            await b.vclock.advance(100)
            await Reaper(b, limit=100).reap_once()
    return [(e.partition, e.event) for e in await EventLog(b).read_all()]


@pytest.mark.parametrize("seed", [1])
async def test_the_fair_share_checker_passes_acquire_and_catches_one_that_ignores_weights(one, seed):
    from lessor.simulations.breakage import Switch, broken_backend
    from lessor.simulations.checkers import fair_share

    weights = {(Q, A): 3.0, (Q, B): 1.0, (Q, C): 2.0}
    entries = await _mixed_workload(one, seed)
    leases = sum(isinstance(e, ev.ActionLeased) for _, e in entries)
    assert leases > 300
    assert fair_share.check(entries, weights) == []
    # The same check with the wrong weights is the control that it reads the log at all.
    assert fair_share.check(entries, {}) != []

    await one.redis.flushall()
    await one.vclock.set(1_000_000)
    broken = broken_backend(one, Switch.ACQUIRE_IGNORES_WEIGHTS)
    broken.vclock = one.vclock
    caught = fair_share.check(await _mixed_workload(broken, seed), weights)
    assert caught and all(v.checker == "fair_share" for v in caught)
    print(f"\nseed {seed}: {leases} leases judged clean; the broken acquire: {len(caught)} violations, "
          f"first: {caught[0]}")


async def test_a_worker_of_every_namespace_wakes_on_any_namespace_and_a_limit_frees_it(backend):
    """A real Worker with namespace '*': woken by a submit in any namespace; a worker held
    back by a running limit is woken when a lease ends (not by its 20 s safety poll)."""
    from lessor.scheduler.registry import Registry
    from lessor.scheduler.worker import Worker, WorkerConfig
    from tests.waiting import until_logged

    started: list = []
    gate = anyio.Event()
    r = Registry()

    @r.task
    async def note(ctx) -> str:
        started.append(ctx.run_id)
        if ctx.run_id.startswith("slow"):
            await gate.wait()
        return ctx.run_id

    await fairshare.set_queue_limit(backend, Q, 4)      # 1 per partition
    worker = Worker(backend, r, WorkerConfig(queue=Q, namespace="*", worker_id="w-any", concurrency=8,
                                             reap=False, idle_poll_ms=20_000))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await submit_runs(backend, [RunSpec("note", namespace=ns, queue=Q, run_id=f"slow-{ns[0]}-{i}")
                                    for ns in (A, B) for i in range(3)])

        async def some_started() -> bool:
            return len(started) >= 1

        await until_logged(backend, some_started, "a run to start", 15)
        assert await running_counters(backend) != {}
        gate.set()                                       # leases end: the held-back runs start

        async def all_started() -> bool:
            return len(started) == 6

        await until_logged(backend, all_started, "every run to start", 15)
        worker.stop()
    assert {s.split("-")[1] for s in started} == {"b", "s"}


def test_the_fairshare_commands_set_and_show(flushed):
    """Two processes (each costs a start-up); the values' checks are the API's (tested above)."""
    from tests.test_cli import lessor

    out = lessor("fairshare", "set", "default", A, "--weight", "3", "--max-running", "10", url=flushed, check=True)
    assert "weight 3, at most 10 running" in out.stdout
    shown = json.loads(lessor("fairshare", "show", "default", "--json", url=flushed, check=True).stdout)
    assert shown["namespaces"][0]["weight"] == 3.0 and shown["namespaces"][0]["max_running"] == 10


def test_running_counts_are_released_through_every_simulated_fault_and_a_forgotten_path_is_caught():
    """The busy plan (partitions, pauses, lost replies, a crash, a server restart, clock jumps,
    reaps, aborts, retries) with half the workers acquiring by fair share: every count goes back
    to 0; with counts released on success only, the running_released checker says so."""
    from lessor.simulations.breakage import Breakage, Switch
    from lessor.simulations.explore import simulation_portal
    from tests.test_simulations import BUSY_PLAN

    with simulation_portal() as (sim, _):
        real = sim(BUSY_PLAN)
        assert real.verdict.ok, [str(v) for v in real.verdict.violations]
        assert real.result.stats["failovers"] > 0
        broken = sim(BUSY_PLAN, Breakage(Switch.RELEASE_ONLY_ON_COMPLETE))
    caught = [v for v in broken.verdict.violations if v.checker == "running_released"]
    assert caught, [str(v) for v in broken.verdict.violations]
    print(f"\nrelease_only_on_complete: {caught[0]}")
