"""Store faults at the script level: epochs, lease extension, idempotent repeats, durability modes.

A new server epoch is made the way production makes one, by changing what the
scripts compare: the epoch stored in the partition (as a restart or promotion
would leave it: written by an older server). Real-process restarts and
promotions are in test_store_faults.py.
"""

from __future__ import annotations

import logging
import random

import anyio
import pytest

from lessor.core import events as ev
from lessor.errors import ConfigError, NotDurable, StoreUnavailable
from lessor.leasing.client import LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.durability import Durability
from lessor.leasing.outage import Backoff, Outage, is_transient
from lessor.leasing.reaper import Reaper
from lessor.scheduler.submit import Retries, submit_run
from lessor.core.clock import ManualClock
from tests.test_leasing import CFG, NS, events_of, one_lease

pytestmark = pytest.mark.anyio


async def forget_epoch(backend, partition: int) -> None:
    """Make the partition's stored epoch an older server's, as a restart or a promotion does."""
    keys = backend.keys(partition)
    await backend.redis.set(keys.prefix + "epoch", "0ld:0ld")
    await backend.redis.hset(keys.prefix + "token", "epoch", "0ld:0ld")


async def test_a_new_epoch_extends_live_leases_before_any_reap(vbackend):
    client, lease = await one_lease(vbackend)
    await vbackend.vclock.advance(CFG.ttl_ms + CFG.grace_ms + 1)   # the worker's renewals were lost
    await forget_epoch(vbackend, lease.partition)
    assert (await Reaper(vbackend).reap_once()).expired == 0       # extended, not expired
    deadline = int(await vbackend.redis.hget(vbackend.keys(lease.partition).action(lease.ref), "deadline_ms"))
    assert deadline == vbackend.vclock.now_ms + CFG.ttl_ms
    (extended,) = await events_of(vbackend, ev.LeaseExtended)                # and the log says why
    assert (extended.token, extended.deadline_ms) == (lease.token, deadline)
    assert await client.renew([lease]) == {lease.ref: Code.OK}       # the worker goes on, nothing lost
    await vbackend.vclock.advance(CFG.ttl_ms + CFG.grace_ms + 1)
    assert (await Reaper(vbackend).reap_once()).expired == 1       # same epoch now: expiry as usual


async def test_without_a_new_epoch_the_same_lease_expires(vbackend):
    """The control for the test above: the extension is the epoch's doing."""
    _, lease = await one_lease(vbackend)
    await vbackend.vclock.advance(CFG.ttl_ms + CFG.grace_ms + 1)
    assert (await Reaper(vbackend).reap_once()).expired == 1
    assert not await events_of(vbackend, ev.LeaseExtended)


async def test_a_late_report_on_a_new_epoch_is_accepted_not_expired(vbackend):
    client, lease = await one_lease(vbackend)
    await vbackend.vclock.advance(CFG.ttl_ms + CFG.grace_ms + 1)
    await forget_epoch(vbackend, lease.partition)
    await client.complete(lease, b"\xc0")
    assert [e.token for e in await events_of(vbackend, ev.ActionSucceeded)] == [lease.token]
    assert not await events_of(vbackend, ev.LeaseExpired)


async def test_tokens_jump_on_a_new_epoch_even_when_the_counter_was_rolled_back(vbackend):
    """A failover to a server whose counter is behind (the clock has not moved) issues no token twice."""
    await submit_run(vbackend, "t", namespace=NS, run_id="r1")
    await submit_run(vbackend, "t", namespace=NS, run_id="r2")
    client = LeaseClient(vbackend, "w1", CFG)
    first = await client.acquire(NS, "default", 2)
    keys = [vbackend.keys(p).prefix + "token" for p in range(vbackend.partitions)]
    counters = {k: await vbackend.redis.hget(k, "last") for k in keys}
    for lease in first:   # roll the state back: the grants are gone, the counter is behind
        await client.release(lease)
    for k, last in counters.items():
        if last is not None:
            await vbackend.redis.hset(k, mapping={"last": int(last) - 2, "epoch": "0ld:0ld"})
    again = await client.acquire(NS, "default", 2)
    assert min(lease.token for lease in again) > max(lease.token for lease in first)


async def test_fail_and_release_repeated_with_the_same_token_are_answered_done(vbackend):
    client, lease = await one_lease(vbackend, retries=Retries(user=2, system=3))
    await client.fail(lease, "boom")
    assert await client.fail(lease, "boom") == 0                   # a retried call: no refusal recorded
    assert not await events_of(vbackend, ev.ReportRejected)
    await vbackend.vclock.advance(10_000)
    await Reaper(vbackend).reap_once()                             # promote the backoff
    (lease2,) = await client.acquire(NS, "default", 1)
    await client.release(lease2)
    await client.release(lease2)
    assert not await events_of(vbackend, ev.ReportRejected)
    assert len(await events_of(vbackend, ev.ActionRequeued)) == 2
    with pytest.raises(Exception, match="not the current token"):  # another kind is still refused
        await client.complete(lease2, b"")


@pytest.mark.parametrize("text, expect", [
    ("memory", "memory"), ("fsync", "fsync"), ("replicas:2", "replicas:2"), ("fsync+replicas:1", "fsync+replicas:1"),
])
def test_durability_modes_parse_and_print(text, expect):
    assert str(Durability.parse(text)) == expect


@pytest.mark.parametrize("text", ["disk", "replicas:0", "replicas:x", "fsync+", ""])
def test_bad_durability_modes_are_refused_naming_the_choices(text):
    if text == "":
        assert str(Durability.parse(text)) == "memory"
        return
    with pytest.raises(ConfigError, match="durability must be memory, fsync, replicas:N|N must be >= 1"):
        Durability.parse(text)


async def test_fsync_durability_on_the_embedded_server_confirms_each_write(flushed):
    from tests.conftest import make_backend

    backend = await make_backend(flushed)
    backend.durability = Durability.parse("fsync")
    try:
        client, lease = await one_lease(backend)
        await client.complete(lease, b"")
        await submit_run(backend, "t", namespace=NS, run_id="r9")
        backend.durability = Durability.parse("replicas:1", timeout_ms=50)   # no replica here
        with pytest.raises(NotDurable, match="0 of 1 replicas") as caught:
            await submit_run(backend, "t", namespace=NS, run_id="r10")
        assert "r10 is unconfirmed" in str(caught.value) and "safe" in str(caught.value)
        with pytest.raises(NotDurable):                        # not durable: not started, the caller backs off
            await client.acquire(NS, "default", 1)
        # The grant was applied, then given back (released) rather than started:
        assert (await events_of(backend, ev.ActionRequeued))[-1].reason == "released"
    finally:
        await backend.redis.aclose()


def test_transient_errors_are_told_from_permanent_ones():
    from redis.exceptions import ConnectionError, ReadOnlyError, ResponseError

    assert is_transient(ConnectionError("refused")) and is_transient(StoreUnavailable("down"))
    assert is_transient(ReadOnlyError("READONLY You can't write against a read only replica."))
    assert is_transient(ResponseError("LOADING Valkey is loading the dataset in memory"))
    assert not is_transient(ResponseError("LESSOR_BAD_ARG acquire needs n >= 1"))
    assert not is_transient(ResponseError("NOPERM this user has no permissions to run the 'info' command"))


def test_backoff_is_capped_and_jittered():
    b = Backoff(base_ms=10, cap_ms=100, rng=random.Random(1))
    delays = [b.next_ms() for _ in range(50)]
    assert max(delays) <= 100 and len(set(delays)) > 40
    b.reset()
    assert b.next_ms() <= 10


def test_an_outage_is_logged_once_and_its_recovery_with_its_length(caplog):
    clock = ManualClock()
    outage = Outage("reaper", "unix:///x.sock", clock=clock, log=logging.getLogger("lessor.test"))
    with caplog.at_level(logging.WARNING, logger="lessor.test"):
        for _ in range(5):
            outage.failed(ConnectionError("Connection refused"))
            clock.advance(1000)
        outage.ok()
        outage.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "lost the server at unix:///x.sock" in lines[0] and "Connection refused" in lines[0]
    assert "back after an outage of 5.0 s" in lines[1]
    assert outage.outages == 1 and outage.longest_ms == 5000


def test_an_answer_to_a_call_sent_before_the_outage_does_not_end_it(caplog):
    """A completion answered just before a crash, heard after another loop's call failed,
    logged "back after 0.0 s" between two "lost" lines (a real worker, 1 fresh-clone run)."""
    clock = ManualClock()
    outage = Outage("worker w1", clock=clock, log=logging.getLogger("lessor.test"))
    with caplog.at_level(logging.WARNING, logger="lessor.test"):
        before = outage.mark()                              # sent while the server was up
        outage.failed(ConnectionError("Connection refused"))
        outage.ok(before)                                   # its answer arrives late: not a recovery
        assert outage.down
        clock.advance(5000)
        during = outage.mark()                              # sent during the outage
        outage.ok(during)                                   # answered: the server is back
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "back after an outage of 5.0 s" in lines[1]
    assert not outage.down and outage.outages == 1


async def test_workers_reap_through_a_shared_throttle(vbackend):
    """Many reapers, one pass per partition per interval: the second finds the partition done."""
    one, two = Reaper(vbackend, shared=True, interval_ms=1000), Reaper(vbackend, shared=True, interval_ms=1000)
    _, lease = await one_lease(vbackend)
    await vbackend.vclock.advance(CFG.ttl_ms + CFG.grace_ms + 1)
    assert (await one.reap_once()).expired == 1
    reply = await vbackend.call("reap", [vbackend.keys(lease.partition).prefix], [100, 1000])
    assert reply[6] == 1  # skipped: reaped less than an interval ago
    await vbackend.vclock.advance(1001)
    reply = await vbackend.call("reap", [vbackend.keys(lease.partition).prefix], [100, 1000])
    assert reply[6] == 0
    assert (await two.reap_once()).failed == 0
