"""Leasing against the real server with a virtual server clock: grace, reap, fencing, tokens."""

from __future__ import annotations

import os
import shutil

import anyio
import pytest
from redis.exceptions import ResponseError

from lessor.core import events as ev
from lessor.errors import ConfigError, StaleToken, UnknownAction
from lessor.leasing.client import LeaseClient, renew_args
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.replay import verify
from lessor.leasing.scripts import ClockMode, VIRTUAL_CLOCK_KEY
from lessor.scheduler.submit import Retries, submit_run
from lessor.server import EmbeddedServer
from tests.conftest import make_backend

pytestmark = pytest.mark.anyio
NS = "proj/development"
CFG = LeaseConfig(ttl_ms=1000, grace_ms=500)


async def events_of(backend, etype: type[ev.Event]) -> list:
    return [e.event for e in await EventLog(backend).read_all() if isinstance(e.event, etype)]


async def log_length(backend) -> int:
    return sum([await backend.redis.xlen(k.stream) for k in backend.all_keys()])


async def one_lease(backend, worker="w1", retries=Retries(system=3)):
    await submit_run(backend, "t", namespace=NS, retries=retries)
    client = LeaseClient(backend, worker, CFG)
    (lease,) = await client.acquire(NS, "default", 1)
    return client, lease


@pytest.mark.parametrize("kwargs, message", [
    (dict(ttl_ms=0), "ttl_ms must be a positive"),
    (dict(ttl_ms=-5), "ttl_ms must be a positive"),
    (dict(grace_ms=-1), "grace_ms must be an integer >= 0"),
    (dict(ttl_ms=100, heartbeat_ms=100), "heartbeat_ms must be > 0 and < ttl_ms"),
    (dict(ttl_ms=100, grace_ms=0, margin_ms=100), "margin_ms must be >= 0 and < ttl_ms"),
])
def test_bad_lease_config_is_refused_with_a_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LeaseConfig(**kwargs)


async def test_on_time_renewal_logs_nothing_and_moves_the_deadline(vbackend):
    client, lease = await one_lease(vbackend)
    n_before = await log_length(vbackend)
    await vbackend.vclock.advance(900)
    assert await client.renew([lease]) == {lease.ref: Code.OK}
    assert await log_length(vbackend) == n_before
    key = vbackend.keys_for_ref(lease.ref).action(lease.ref)
    assert int(await vbackend.redis.hget(key, "deadline_ms")) == vbackend.vclock.now_ms + 1000


async def test_packed_and_flat_renewals_answer_alike_and_a_malformed_pack_is_refused(vbackend):
    """renew.lua's packed form (one JSON array, what the client sends) renews as the flat pairs do."""
    client, lease = await one_lease(vbackend)
    prefix = [vbackend.keys(lease.partition).prefix]
    flat = await vbackend.scripts.renew(keys=prefix, args=["w1", 1000, lease.ref, lease.token])
    packed = await vbackend.scripts.renew(keys=prefix, args=renew_args("w1", 1000, [lease]))
    assert flat[1:] == packed[1:] == [Code.OK]
    for bad in (f'["{lease.ref}"]', f'["{lease.ref}", {lease.token}]', f'["{lease.ref}"', "{}x", "[null, null]",
                f"{lease.ref} {lease.token}"):
        with pytest.raises(ResponseError, match="LESSOR_BAD_ARG renew: ARGV.3. must be one JSON array of strings"):
            await vbackend.scripts.renew(keys=prefix, args=["w1", 1000, bad])


def test_renew_args_pack_any_ref_as_valid_json():
    """The fast join and the json.dumps fallback give the same array, whatever a ref holds."""
    import json

    from lessor.leasing.client import Lease

    leases = [Lease(ref, 7, 1, 0, "t", b"", "", 0) for ref in ("a/b/r1/a0", 'a/b/"q/a0', "a/b/back\\/a0", "a/b/é/a0")]
    for some in (leases[:1], leases[:2], leases[2:3], leases, []):
        packed = renew_args("w", 1000, some)[2]
        assert json.loads(packed) == [v for lease in some for v in (lease.ref, "7")]


async def test_renewal_in_grace_resumes_and_after_reap_is_stale(vbackend):
    client, lease = await one_lease(vbackend)
    await vbackend.vclock.advance(1200)  # past the deadline, inside the grace window
    assert await client.renew([lease]) == {lease.ref: Code.RESUMED}
    (resumed,) = await events_of(vbackend, ev.LeaseResumed)
    assert resumed.late_ms == 200 and resumed.token == lease.token
    await vbackend.vclock.advance(1501)  # past the new deadline + grace
    assert (await Reaper(vbackend).reap_once()).expired == 1
    assert await client.renew([lease]) == {lease.ref: Code.STALE}
    assert await client.renew([lease]) == {lease.ref: Code.STALE}
    rejected = await events_of(vbackend, ev.ReportRejected)
    assert [(r.kind, r.token) for r in rejected] == [("renew", lease.token)]  # once per token
    assert await verify(vbackend) == []


async def test_failover_refuses_the_old_owner_and_accepts_exactly_one_result(vbackend):
    old, lease1 = await one_lease(vbackend, "w1")
    await vbackend.vclock.advance(1501)
    await Reaper(vbackend).reap_once()
    new = LeaseClient(vbackend, "w2", CFG)
    (lease2,) = await new.acquire(NS, "default", 1)
    assert lease2.ref == lease1.ref and lease2.token > lease1.token and lease2.attempt == 2
    with pytest.raises(StaleToken, match="refused and recorded"):
        await old.complete(lease1, b"late result")
    await new.complete(lease2, b"good result")
    await new.complete(lease2, b"twice")  # idempotent for the same token: nothing applied again
    succeeded = await events_of(vbackend, ev.ActionSucceeded)
    assert [(s.token, s.result) for s in succeeded] == [(lease2.token, b"good result")]
    rejected = await events_of(vbackend, ev.ReportRejected)
    assert [(r.kind, r.worker, r.token) for r in rejected] == [("complete", "w1", lease1.token)]
    expired = await events_of(vbackend, ev.LeaseExpired)
    assert [(e.worker, e.token) for e in expired] == [("w1", lease1.token)]
    assert await verify(vbackend) == []


async def test_late_report_after_deadline_plus_grace_is_refused_even_before_the_reaper(vbackend):
    client, lease = await one_lease(vbackend)
    await vbackend.vclock.advance(1501)
    with pytest.raises(StaleToken):
        await client.complete(lease, b"too late")
    types = [type(e.event).__name__ for e in await EventLog(vbackend).read_all()]
    assert types[-3:] == ["LeaseExpired", "ActionRequeued", "ReportRejected"]


async def test_system_budget_spent_fails_with_a_reason_that_says_so(vbackend):
    await submit_run(vbackend, "t", namespace=NS, retries=Retries(system=2))
    for i in range(3):
        (lease,) = await LeaseClient(vbackend, f"w-{i}", CFG).acquire(NS, "default", 1)
        await vbackend.vclock.advance(1501)
        await Reaper(vbackend).reap_once()
    (failed,) = await events_of(vbackend, ev.ActionFailed)
    assert failed.reason == "lease_expired"
    assert failed.error == "lease expired 3 times; last worker w-2; system retry budget spent"
    (done,) = await events_of(vbackend, ev.RunCompleted)
    assert done.phase == "failed"


async def test_user_failure_backs_off_and_the_reaper_promotes_it(vbackend):
    await submit_run(vbackend, "t", namespace=NS, retries=Retries(user=1, backoff_ms=1000))
    client = LeaseClient(vbackend, "w1", CFG)
    (lease,) = await client.acquire(NS, "default", 1)
    ready_at = await client.fail(lease, "ValueError: bad input")
    assert 500 <= ready_at - vbackend.vclock.now_ms <= 1500
    assert await client.acquire(NS, "default", 1) == []  # backing off
    await vbackend.vclock.set(ready_at)
    assert (await Reaper(vbackend).reap_once()).promoted == 1
    (again,) = await client.acquire(NS, "default", 1)
    assert again.attempt == 2
    assert await client.fail(again, "ValueError: still bad") == 0  # budget spent: failed for good
    (failed,) = await events_of(vbackend, ev.ActionFailed)
    assert failed.error == "ValueError: still bad"


async def test_unknown_action_and_bad_arguments_give_clear_errors(vbackend):
    client, lease = await one_lease(vbackend)
    ghost = lease.__class__(**{**lease.__dict__, "ref": "proj/development/nope/a0"})
    with pytest.raises(UnknownAction, match="no action proj/development/nope/a0"):
        await client.complete(ghost)
    assert await client.renew([ghost]) == {ghost.ref: Code.UNKNOWN}
    with pytest.raises(ValueError, match="queue id"):
        await client.acquire(NS, "bad queue!", 1)
    with pytest.raises(ValueError, match="namespace must look like"):
        await client.acquire("nodomain", "default", 1)


async def test_two_reapers_racing_over_3000_expired_leases_expire_each_once(vbackend):
    n = 3_000   # 30 reap calls each at these limits: enough interleavings, a third of the time
    sem = anyio.Semaphore(32)

    async def submit(i):
        async with sem:
            await submit_run(vbackend, "t", namespace=NS, run_id=f"x{i:05d}")

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(submit, i)
    client = LeaseClient(vbackend, "w1", CFG)
    leased = 0
    while leased < n:
        leased += len(await client.acquire(NS, "default", 500))
    await vbackend.vclock.advance(1501)
    other = await make_backend(vbackend.url, clock=ClockMode.VIRTUAL)
    reapers = [Reaper(vbackend, limit=97), Reaper(other, limit=101)]
    totals = []

    async def reap(r):
        while (result := await r.reap_once()).expired or result.more:
            totals.append(result.expired)

    async with anyio.create_task_group() as tg:
        for r in reapers:
            tg.start_soon(reap, r)
    await other.redis.aclose()
    assert sum(totals) == n
    expired = await events_of(vbackend, ev.LeaseExpired)
    assert len(expired) == n and len({(e.run, e.action) for e in expired}) == n
    assert all(r.statistics().expired > 0 for r in reapers), "both reapers took part"


async def test_renewal_after_abort_says_aborted_and_release_confirms(vbackend):
    from lessor.scheduler.control import abort_run

    client, lease = await one_lease(vbackend)
    ns, _, run, _ = lease.ref.split("/")
    await abort_run(vbackend, NS, lease.ref.split("/")[2], "user asked")
    assert await client.renew([lease]) == {lease.ref: Code.ABORTED}
    await client.release(lease, "cancelled")
    phases = [e.event.TYPE for e in await EventLog(vbackend).read_all()]
    assert phases[-2:] == ["action_aborted", "run_completed"]
    assert await client.acquire(NS, "default", 1) == []  # nothing requeued after an abort


async def test_noscript_after_script_flush_is_recovered_transparently(vbackend):
    """The scripts are a FUNCTION library: FUNCTION FLUSH (and SCRIPT FLUSH) cost a reload, no error."""
    client, lease = await one_lease(vbackend)
    await vbackend.redis.script_flush()
    await vbackend.redis.function_flush()
    assert await client.renew([lease]) == {lease.ref: Code.OK}
    await vbackend.redis.function_flush()
    await client.complete(lease, b"ok")


async def issue_tokens(backend, count: int, tag: str) -> list[int]:
    """Tokens of ``count`` leases, all in partition 0 (tokens are ordered per partition)."""
    tokens, i = [], 0
    while len(tokens) < count:
        i += 1
        run_id = f"{tag}{i}"
        if backend.keys_for_run(NS, run_id).partition != 0:
            continue
        await submit_run(backend, "t", namespace=NS, run_id=run_id)
        (lease,) = await LeaseClient(backend, "w1", CFG).acquire_from(0, NS, "default", 1)
        tokens.append(lease.token)
    return tokens


@pytest.mark.parametrize("clock", [ClockMode.SERVER, ClockMode.VIRTUAL])
async def test_tokens_increase_across_a_restart_that_lost_the_last_writes(clock, tmp_path):
    """Restart from an AOF that misses the latest acknowledged writes (as everysec can).

    The run ids differ each time, so 'lost' tokens were issued for other actions
    than 'after' ones: a reused token would show as a non-increasing sequence."""
    with EmbeddedServer(appendfsync="always", workdir=str(tmp_path / "data")) as server:
        backend = await make_backend(server.url, clock=clock)
        await backend.redis.set(VIRTUAL_CLOCK_KEY, 5_000)
        first = await issue_tokens(backend, 5, "first")
        # What the disk held one second before the crash:
        await backend.redis.aclose()
        shutil.copytree(server.workdir, tmp_path / "disk", ignore=shutil.ignore_patterns("*.sock"))
        backend = await make_backend(server.url, clock=clock)
        lost = await issue_tokens(backend, 5, "lost")  # acknowledged, then lost in the crash
        await backend.redis.aclose()
        server.crash()
        shutil.rmtree(os.path.join(server.workdir, "appendonlydir"))
        shutil.copytree(tmp_path / "disk" / "appendonlydir", os.path.join(server.workdir, "appendonlydir"))
        server.start()
        backend = await make_backend(server.url, clock=clock)
        assert await backend.redis.get(VIRTUAL_CLOCK_KEY) == b"5000"  # the virtual clock did not move
        after = await issue_tokens(backend, 5, "after")
        await backend.redis.aclose()
    tokens = first + lost + after
    assert all(a < b for a, b in zip(tokens, tokens[1:])), tokens


async def test_noscript_after_a_real_restart_is_recovered(tmp_path):
    with EmbeddedServer(appendfsync="always", workdir=str(tmp_path / "d")) as server:
        backend = await make_backend(server.url)
        client, lease = await one_lease(backend)
        server.restart()
        # Dead pooled connection -> one retry on a fresh one; the library came back with the AOF
        # (tests/test_functions.py covers a server that lost it: Function not found -> load -> retry).
        assert await client.renew([lease]) == {lease.ref: Code.OK}
        await backend.redis.aclose()


async def test_a_malformed_token_is_refused_before_anything_is_written(vbackend):
    client, lease = await one_lease(vbackend)
    before = await log_length(vbackend)
    keys = [vbackend.keys(lease.partition).prefix]
    for script, args in [("complete", ["w1", lease.ref, "7x", b""]),
                         ("fail", [lease.ref, "", "w1", "boom", 1, 0.5]), ("release", [lease.ref, "1.5", "w1", "r"])]:
        with pytest.raises(Exception, match=f"LESSOR_BAD_ARG {script}: token"):
            await getattr(vbackend.scripts, script)(keys=keys, args=args)
    # The renewal hot path answers STALE for something that is not a token (nothing to record).
    assert (await vbackend.scripts.renew(keys=keys, args=["w1", 1000, lease.ref, "abc"]))[1:] == [Code.STALE]
    assert await log_length(vbackend) == before
    assert await verify(vbackend) == []


async def test_renewals_are_judged_right_where_the_clock_gains_a_digit(vbackend):
    """renew.lua compares a deadline as text only when it has as many digits as the clock (then
    text order is number order), and as a number otherwise: a lease whose deadline has fewer
    digits than the clock is late, though '9999000' > '10000100' as text."""
    w = LeaseClient(vbackend, "w", LeaseConfig(ttl_ms=2000, grace_ms=500))
    await vbackend.vclock.set(9_997_000)
    await submit_run(vbackend, "t", namespace=NS, queue="q", run_id="short")
    await submit_run(vbackend, "t", namespace=NS, queue="q", run_id="long")
    [short] = await w.acquire(NS, "q", 1)            # deadline 9_999_000: seven digits
    await vbackend.vclock.set(9_999_000)
    [long] = await w.acquire(NS, "q", 1)             # deadline 10_001_000: eight digits, the clock seven
    assert (await w.renew([long]))[long.ref] is Code.OK
    await vbackend.vclock.set(10_000_999)            # both eight digits: text order
    assert (await w.renew([long]))[long.ref] is Code.OK
    await vbackend.vclock.set(10_002_001)            # deadline now 10_002_999: on time
    assert (await w.renew([long]))[long.ref] is Code.OK
    await vbackend.vclock.set(10_004_002)            # deadline now 10_004_001: 1 ms late, inside grace
    assert (await w.renew([long]))[long.ref] is Code.RESUMED
    # short's deadline (9_999_000) + grace passed long ago: dead, though longer as text.
    assert (await w.renew([short]))[short.ref] is Code.STALE
    assert await verify(vbackend) == []


async def test_a_token_beyond_the_exact_range_of_a_double_is_refused_at_the_boundary(backend):
    """bad_token bounds a 16-digit token by comparing it as text with 2^53 - 1 (equal-length digit
    strings order as numbers): one more is refused before anything is written; the bound itself
    is a token in form (stale here, and recorded as such)."""
    await submit_run(backend, "t", namespace=NS, queue="q", run_id="big")
    w = LeaseClient(backend, "w", LeaseConfig(ttl_ms=1000, grace_ms=500))
    [lease] = await w.acquire(NS, "q", 1)
    keys = [backend.keys_for_ref(lease.ref).prefix]
    for token in ("9007199254740992", "9999999999999999", "10000000000000000"):
        with pytest.raises(ResponseError, match="LESSOR_BAD_ARG complete: token"):
            await backend.scripts.complete(keys=keys, args=["w", lease.ref, token, b""])
    code, current = await backend.scripts.complete(keys=keys, args=["w", lease.ref, "9007199254740991", b""])
    assert (code, current) == (Code.STALE, lease.token)
    assert await verify(backend) == []
