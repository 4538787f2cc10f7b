"""The reaper's time budget: a storm of expired leases is reaped in short calls that say ``more``.

No timing asserts: a 1 µs budget is spent by the first item of any call (an
expiry costs tens of µs of server CPU), so "stopped early" is a fact, not a race.
Leases granted on the virtual clock (1,000,000 ms) are long past due on the
server's real clock, which lets a server-clock Reaper meet a storm without waiting.
"""

from __future__ import annotations

import pytest

from lessor.core import events as ev
from lessor.errors import ServerRefused
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import PassResult, Reaper
from lessor.leasing.replay import verify
from lessor.scheduler.submit import Retries, RunSpec, submit_runs

pytestmark = pytest.mark.anyio
NS = "proj/development"
CFG = LeaseConfig(ttl_ms=1000, grace_ms=500)


async def storm(vbackend, n: int, queue: str = "default") -> list:
    """``n`` leases of worker w1, all past deadline + grace on the virtual clock once it moves 1501 ms."""
    await submit_runs(vbackend, [RunSpec("t", namespace=NS, queue=queue, run_id=f"r{i:04d}") for i in range(n)])
    leases = await LeaseClient(vbackend, "w1", CFG).acquire(NS, queue, n)
    assert len(leases) == n
    return leases


async def reap_call(backend, partition: int, limit=500, interval_ms=0, budget_us=0) -> dict:
    reply = await backend.call("reap", [backend.keys(partition).prefix], [limit, interval_ms, budget_us])
    names = ("expired", "timed_out", "promoted", "lag_ms", "more", "failovers", "skipped", "call_us")
    return dict(zip(names, (int(x) for x in reply)))


def busiest(leases) -> tuple[int, int]:
    """The partition holding most of ``leases``, and how many it holds."""
    counts: dict[int, int] = {}
    for lease in leases:
        counts[lease.partition] = counts.get(lease.partition, 0) + 1
    p = max(counts, key=counts.get)
    return p, counts[p]


async def test_a_spent_budget_stops_the_call_and_says_more(vbackend):
    partition, due = busiest(await storm(vbackend, 40))
    await vbackend.vclock.advance(1501)
    first = await reap_call(vbackend, partition, budget_us=1)
    assert first["more"] == 1 and 1 <= first["expired"] < due
    assert first["call_us"] > 0                   # the script's own CPU time report
    total, calls = first["expired"], 1
    while (r := await reap_call(vbackend, partition, budget_us=1))["more"]:
        total, calls = total + r["expired"], calls + 1
    assert total + r["expired"] == due and calls > 1
    assert len(await EventLog(vbackend).read_all()) > 0 and await verify(vbackend) == []


async def test_without_a_budget_the_limit_bounds_a_call_as_before(vbackend):
    partition, due = busiest(await storm(vbackend, 40))
    await vbackend.vclock.advance(1501)
    assert due > 5
    r = await reap_call(vbackend, partition, limit=5)
    assert (r["expired"], r["more"]) == (5, 1)
    r = await reap_call(vbackend, partition, limit=due - 5)
    assert (r["expired"], r["more"]) == (due - 5, 1)   # the limit reached exactly: more, as before
    r = await reap_call(vbackend, partition, limit=due)
    assert (r["expired"], r["more"]) == (0, 0)


async def test_a_call_stopped_on_its_budget_does_not_set_the_pass_throttle(vbackend):
    partition, _ = busiest(await storm(vbackend, 40))
    await vbackend.vclock.advance(1501)
    due_key = vbackend.keys(partition).named("REAP_DUE")
    r = await reap_call(vbackend, partition, interval_ms=1000, budget_us=1)
    assert r["more"] == 1 and r["skipped"] == 0
    assert await vbackend.redis.get(due_key) is None       # not done: other reapers may help at once
    while (r := await reap_call(vbackend, partition, interval_ms=1000, budget_us=1))["more"]:
        assert r["skipped"] == 0
    assert await vbackend.redis.get(due_key) is not None   # done: the throttle is set
    assert (await reap_call(vbackend, partition, interval_ms=1000, budget_us=1))["skipped"] == 1


async def test_each_kind_moves_on_in_every_call_during_a_lease_storm(vbackend):
    """A spent budget still handles one item of each index, so backoffs are promoted during a storm."""
    await submit_runs(vbackend, [RunSpec("t", namespace=NS, queue="retry", retries=Retries(user=1, backoff_ms=1),
                                         run_id=f"b{i}") for i in range(12)])
    client = LeaseClient(vbackend, "w2", CFG)
    for lease in await client.acquire(NS, "retry", 12):
        await client.fail(lease, "ValueError: again")
    leases = await storm(vbackend, 40)
    await vbackend.vclock.advance(1501)
    partition, _ = busiest(leases)
    backoffs = await vbackend.redis.zcard(vbackend.keys(partition).delayed)
    r = await reap_call(vbackend, partition, budget_us=1)
    assert r["more"] == 1 and r["expired"] >= 1
    assert r["promoted"] == (1 if backoffs else 0)


@pytest.mark.parametrize("args", [[500, 0, -1], [500, 0, "1.5"], [500, 0, "inf"], [500, 0, "nan"],
                                  [500, 0, "2e3"], ["1e3", 0, 0], [500, "", 0], [0, 0, 0], [500, 0, "9" * 13]])
async def test_bad_reap_arguments_are_refused_before_anything_is_written(vbackend, args):
    await storm(vbackend, 4)
    await vbackend.vclock.advance(1501)
    before = len(await EventLog(vbackend).read_all())
    with pytest.raises(ServerRefused, match="LESSOR_BAD_ARG reap"):
        await vbackend.call("reap", [vbackend.keys(0).prefix], args)
    assert len(await EventLog(vbackend).read_all()) == before


async def test_the_reaper_on_the_server_clock_reaps_a_storm_in_budgeted_calls(vbackend, backend):
    leases = await storm(vbackend, 60)   # granted at virtual 1,000,000 ms: long past due on the real clock
    reaper = Reaper(backend, budget_ms=0.001, max_batches=1)
    first = await reaper.reap_once()
    assert first.more and 1 <= first.expired < len(leases)
    assert len(first.call_ms) == backend.partitions
    expired, passes = first.expired, 1
    while (r := await reaper.reap_once()).more:
        expired, passes = expired + r.expired, passes + 1
    assert expired + r.expired == len(leases) and passes > 1
    stats = reaper.statistics()
    assert stats.expired == len(leases) and stats.calls > backend.partitions
    assert stats.max_call_ms >= stats.call_ms_p99 > 0
    assert len(await events_of(vbackend, ev.LeaseExpired)) == len(leases)


async def test_the_reaper_on_a_virtual_clock_is_bounded_by_its_limit_alone(vbackend):
    """Simulations replay alike: the budget (real CPU time) is not sent on the virtual clock."""
    leases = await storm(vbackend, 60)
    await vbackend.vclock.advance(1501)
    r = await Reaper(vbackend, budget_ms=0.001).reap_once()
    assert r.expired == len(leases) and not r.more
    assert len(r.call_ms) == vbackend.partitions              # one call per partition did it all


async def test_each_call_is_recorded_in_the_reap_call_histogram(vbackend, monkeypatch):
    from lessor import telemetry

    recorded: list[float] = []

    class Histogram:
        def record(self, value, attributes=None):
            recorded.append(value)

    monkeypatch.setattr(telemetry.instruments(), "reap_call_ms", Histogram())
    await storm(vbackend, 8)
    await vbackend.vclock.advance(1501)
    r = await Reaper(vbackend).reap_once()
    assert recorded and sorted(recorded) == sorted(r.call_ms) and len(recorded) == vbackend.partitions


def test_pass_results_add_up_their_calls():
    a, b = PassResult(expired=1, call_ms=(1.0, 3.0)), PassResult(expired=2, more=True, call_ms=(2.0,))
    total = a + b
    assert (total.expired, total.more, total.call_ms) == (3, True, (1.0, 3.0, 2.0))
    assert total.max_call_ms == 3.0 and total.call_ms_p99 == 3.0
    assert PassResult().max_call_ms == 0.0 and PassResult().call_ms_p99 == 0.0


async def test_reaper_refuses_a_bad_budget_or_in_flight(vbackend):
    for kwargs in (dict(budget_ms=0), dict(budget_ms=-1), dict(max_in_flight=0)):
        with pytest.raises(ValueError, match="budget_ms"):
            Reaper(vbackend, **kwargs)


async def events_of(backend, etype: type[ev.Event]) -> list:
    return [e.event for e in await EventLog(backend).read_all() if isinstance(e.event, etype)]
