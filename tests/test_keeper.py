"""The worker-side lease keeper: batched heartbeats and self-fencing (guarantee 2).

The worker's monotonic clock is a ManualClock and the server's clock is the
virtual one, moved together in lockstep: no sleeps, no timing asserts.
"""

from __future__ import annotations

import anyio
import pytest

from lessor.core.clock import ManualClock
from lessor.leasing.backend import Backend, make_redis
from lessor.leasing.client import LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.keeper import FenceReason, LeaseKeeper
from lessor.leasing.reaper import Reaper
from lessor.scheduler.control import abort_run
from lessor.scheduler.submit import submit_run

pytestmark = pytest.mark.anyio
NS = "proj/development"
CFG = LeaseConfig(ttl_ms=1000, grace_ms=500, heartbeat_ms=250, margin_ms=150)


class Lockstep:
    """Moves the worker's clock and the server's virtual clock together."""

    def __init__(self, backend, worker_clock: ManualClock) -> None:
        self.backend, self.worker_clock = backend, worker_clock

    async def advance(self, ms: int) -> None:
        self.worker_clock.advance(ms)
        await self.backend.vclock.advance(ms)


async def leased_work(backend, n: int, worker: str = "w1"):
    for _ in range(n):
        await submit_run(backend, "t", namespace=NS)
    client = LeaseClient(backend, worker, CFG)
    return client, await client.acquire(NS, "default", n)


async def test_one_batched_call_renews_every_held_lease(vbackend):
    client, leases = await leased_work(vbackend, 5)
    clock = ManualClock()
    keeper = LeaseKeeper(client, clock)
    for lease in leases:
        keeper.hold(lease, None, clock.now_ms())
    step = Lockstep(vbackend, clock)
    for _ in range(8):  # 2 s of heartbeats: far past ttl + grace
        await step.advance(250)
        await keeper.heartbeat()
    stats = keeper.statistics()
    assert stats.renew_calls == 8 and stats.renewed == 40 and stats.fenced == {}
    assert all(keeper.usable(lease.ref) for lease in leases)
    assert (await Reaper(vbackend).reap_once()).expired == 0


async def test_self_fences_when_renewals_stop_before_the_reap_could_happen(vbackend):
    client, (lease,) = await leased_work(vbackend, 1)
    clock = ManualClock()
    cancelled = anyio.Event()
    keeper = LeaseKeeper(client, clock)
    step = Lockstep(vbackend, clock)

    async def work(scope_ready: anyio.Event, box: list):
        with anyio.CancelScope() as scope:
            box.append(scope)
            scope_ready.set()
            await anyio.sleep_forever()
        cancelled.set()

    async with anyio.create_task_group() as tg:
        ready, box = anyio.Event(), []
        tg.start_soon(work, ready, box)
        await ready.wait()
        keeper.hold(lease, box[0], clock.now_ms())
        await step.advance(250)
        await keeper.heartbeat()  # succeeds: sent at worker time 250
        # The server becomes unreachable for this worker (connection refused).
        dead = Backend(redis=make_redis("redis://127.0.0.1:1"), url="dead", partitions=vbackend.partitions)
        keeper.client = LeaseClient(dead, "w1", CFG)
        fenced_at = None
        while fenced_at is None:
            await step.advance(50)
            await keeper.heartbeat()
            if not keeper.usable(lease.ref):
                fenced_at = clock.now_ms()
                # At this instant the server still holds the lease: a reap expires nothing.
                assert (await Reaper(vbackend).reap_once()).expired == 0
        await cancelled.wait()
        await dead.redis.aclose()
    assert keeper.held[lease.ref].fenced is FenceReason.SELF_FENCED
    # ttl 1000 + grace 500 - margin 150 after the last good send (at 250), written out: a test
    # that computed it with the code's own formula (self_fence_after_ms) could not catch a wrong one.
    assert fenced_at == 250 + 1350
    assert keeper.statistics().renew_failures > 0
    # Only later does the server's own clock reach deadline + grace and the reaper fail it over.
    await step.advance(CFG.margin_ms + 1)
    assert (await Reaper(vbackend).reap_once()).expired == 1


@pytest.mark.parametrize("answer", ["aborted", "stale"])
async def test_aborted_or_stale_answer_cancels_at_once(vbackend, answer):
    client, (lease,) = await leased_work(vbackend, 1)
    clock = ManualClock()
    fences = []
    keeper = LeaseKeeper(client, clock, on_fence=fences.append)
    scope = anyio.CancelScope()
    keeper.hold(lease, scope, clock.now_ms())
    if answer == "aborted":
        await abort_run(vbackend, NS, lease.ref.split("/")[2])
    else:  # the lease was reaped and re-granted to another worker meanwhile
        await vbackend.vclock.advance(1501)
        await Reaper(vbackend).reap_once()
        await LeaseClient(vbackend, "w2", CFG).acquire(NS, "default", 1)
    await keeper.heartbeat()
    assert scope.cancel_called
    assert [h.fenced for h in fences] == [FenceReason(answer)]
    assert not keeper.usable(lease.ref)
    await keeper.heartbeat()  # a fenced lease is never sent again
    assert keeper.statistics().renew_calls == 1


async def test_keeper_answers_are_applied_per_lease(vbackend):
    client, leases = await leased_work(vbackend, 3)
    clock = ManualClock()
    keeper = LeaseKeeper(client, clock)
    for lease in leases:
        keeper.hold(lease, anyio.CancelScope(), clock.now_ms())
    await abort_run(vbackend, NS, leases[1].ref.split("/")[2])
    codes = await client.renew(leases)
    assert [codes[lease.ref] for lease in leases] == [Code.OK, Code.ABORTED, Code.OK]
    await keeper.heartbeat()
    assert [keeper.usable(lease.ref) for lease in leases] == [True, False, True]


async def test_the_watchdog_fences_at_its_exact_instant_and_not_before(vbackend):
    """The self-fence deadline is ttl + grace - margin after the send of the last good renewal
    (here the acquire's send, at 100): usable 1 ms before, fenced at it; the watchdog's sleep
    lands on it exactly, however far off it is and whatever else the keeper holds."""
    client, (first, second) = await leased_work(vbackend, 2)
    clock = ManualClock()
    keeper = LeaseKeeper(client, clock)
    clock.advance(100)
    keeper.hold(first, None, clock.now_ms())      # due at 100 + 1350 = 1450
    clock.advance(200)
    keeper.hold(second, None, clock.now_ms())     # due at 300 + 1350 = 1650
    slept = []
    while keeper.usable(first.ref):
        wait = keeper.until_next_fence_ms()
        assert wait <= CFG.heartbeat_ms
        slept.append(clock.now_ms() + wait)
        clock.advance(wait)
        if clock.now_ms() < 1450:
            assert keeper.check_self_fence() == [] and keeper.usable(first.ref)
        else:
            keeper.check_self_fence()
    assert clock.now_ms() == 1450 and slept[-1] == 1450
    assert keeper.usable(second.ref)  # its own deadline is 200 ms later
    clock.advance(199)
    assert keeper.check_self_fence() == [] and keeper.until_next_fence_ms() == 1
    clock.advance(1)
    assert [h.lease.ref for h in keeper.check_self_fence()] == [second.ref]


async def test_a_grant_heard_after_its_self_fence_deadline_is_fenced_on_arrival(vbackend):
    """The acquire was sent at t=0 and its reply heard only at ttl + grace - margin (a slow reply,
    or a pause): the server may have reaped it already, so the lease must not start. One heard
    1 ms earlier is kept."""
    client, (late, early) = await leased_work(vbackend, 2)
    clock = ManualClock()
    keeper = LeaseKeeper(client, clock)
    sent = clock.now_ms()
    clock.advance(CFG.ttl_ms + CFG.grace_ms - CFG.margin_ms - 1)   # 1349 ms: inside the deadline
    assert keeper.hold(early, None, sent).fenced is None and keeper.usable(early.ref)
    clock.advance(1)                                                # 1350 ms = ttl + grace - margin
    held = keeper.hold(late, None, sent)
    assert held.fenced is FenceReason.SELF_FENCED and not keeper.usable(late.ref)
