"""The event log against the real server: atomic append, replay == live, follow, durability."""

from __future__ import annotations

import dataclasses
import random

import anyio
import msgpack
import pytest

from lessor.core import events as ev
from lessor.core.fold import fold, run_view
from lessor.errors import EventDecodeError, IllegalTransition
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.replay import verify
from lessor.scheduler.query import get_run
from lessor.scheduler.submit import Retries, submit_run
from lessor.server import EmbeddedServer
from tests.conftest import make_backend

pytestmark = pytest.mark.anyio
NS = "proj/development"


def created(run: str, action: str) -> ev.ActionCreated:
    return ev.ActionCreated(ns=NS, run=run, action=action, task="t", queue="q")


async def snapshot(backend) -> dict:
    keys = sorted([k async for k in backend.redis.scan_iter(match="lessor:{*")])
    return {k: await backend.redis.type(k) for k in keys} | {
        "len": [await backend.redis.xlen(backend.keys(p).stream) for p in range(backend.partitions)]}


async def test_append_and_projection_are_atomic(backend):
    log = EventLog(backend)
    await log.append([ev.RunCreated(ns=NS, run="r1", task="t", queue="q"), created("r1", "a0")])
    before = await snapshot(backend)
    # The second event is illegal (a1 already exists): neither may be written.
    with pytest.raises(IllegalTransition, match="action_created"):
        await log.append([created("r1", "a1"), created("r1", "a1")])
    # A leased event for an action that does not exist: refused, nothing written.
    with pytest.raises(IllegalTransition):
        await log.append([ev.ActionLeased(ns=NS, run="r1", action="zz", attempt=1, token=1, worker="w",
                                          ttl_ms=1, grace_ms=0, deadline_ms=1)])
    assert await snapshot(backend) == before
    assert await verify(backend) == []


async def test_a_run_is_appended_with_its_root_action_or_not_at_all(backend):
    """A run lives on its root action's hash (no run hash): a run_created whose a0 is not created in
    the same call would leave a run no reader can see, and a second run_created of it later would
    fork the log from the fold. Refused, naming the event, nothing written; with its a0, written."""
    log = EventLog(backend)
    before = await snapshot(backend)
    with pytest.raises(EventDecodeError, match="#1: run_created must be followed by its root action a0's action_created"):
        await log.append([ev.RunCreated(ns=NS, run="alone", task="t", queue="q"), created("alone", "a1")])
    assert await snapshot(backend) == before
    await log.append([ev.RunCreated(ns=NS, run="rooted", task="t", queue="q", idempotency_key="k"),
                      created("rooted", "a0")])
    root = await backend.redis.hgetall(backend.keys_for_run(NS, "rooted").run_root(f"{NS}/rooted"))
    assert run_view(root) == {"phase": "running", "task": "t", "queue": "q", "inputs": None,
                              "created_ms": int(root[b"created_ms"]), "idempotency_key": "k", "aborting": False}
    # a0's end is the run's: a run_completed of its own, before or after it, is refused with
    # nothing written; so is anything between a run_created and its a0, or an a0 without its run.
    ended = ev.ActionAborted(ns=NS, run="rooted", action="a0", reason="stop")
    completed = ev.RunCompleted(ns=NS, run="rooted", phase="aborted")
    before = await snapshot(backend)
    for events, why in (([completed], "#1: run_completed is written by its root action's end"),
                        ([ended, completed], "#2: run_completed is written by its root action's end"),
                        ([ev.RunCreated(ns=NS, run="r2", task="t", queue="q"),
                          ev.AbortRequested(ns=NS, run="r2", action="", reason="x"), created("r2", "a0")],
                         "#1: run_created must be followed by its root action a0's action_created"),
                        ([created("r3", "a0")], "#1: a0's action_created must follow its run's run_created")):
        with pytest.raises(EventDecodeError, match=why):
            await log.append(events)
        assert await snapshot(backend) == before
    await log.append([ended])
    assert (await get_run(backend, NS, "rooted")).phase == "aborted"
    assert await verify(backend) == []


async def test_server_refuses_malformed_event_bytes_and_writes_nothing(backend):
    before = await snapshot(backend)
    keys = [backend.keys(0).prefix]
    for bad in (b"\xc1", b"\x93\x01\x02\x03", b"\x82\xa1v\x02\xa4type\xabrun_created"):
        with pytest.raises(Exception, match="LESSOR_BAD_EVENT"):
            await backend.scripts.append_events(keys=keys, args=[bad])
    assert await snapshot(backend) == before


async def test_stream_entries_that_are_not_events_raise_the_named_error_in_strict_mode(backend):
    await backend.redis.xadd(backend.keys(0).stream, {"x": b"1"})
    with pytest.raises(EventDecodeError, match="not written by lessor"):
        await EventLog(backend, strict=True).read(0)
    log = EventLog(backend)
    assert await log.read(0) == [] and "not written by lessor" in log.bad[0].why


async def random_workload(backend, vclock, rng: random.Random, steps: int = 120) -> None:
    """Submits, leases, renewals (late ones too), completions, failures, releases, reaps."""
    workers = [LeaseClient(backend, f"w{i}", LeaseConfig(ttl_ms=1000, grace_ms=500), rng=rng) for i in range(3)]
    held = []
    reaper = Reaper(backend, limit=7)
    for _ in range(steps):
        op = rng.choice(["submit", "submit", "acquire", "renew", "complete", "fail", "release", "advance", "reap"])
        if op == "submit":
            await submit_run(backend, "t", namespace=NS, retries=Retries(user=rng.randint(0, 2), system=rng.randint(0, 2), backoff_ms=100))
        elif op == "acquire":
            w = rng.choice(workers)
            got = await w.acquire(NS, "default", rng.randint(1, 3))
            # A worker that gets an action back (its old lease reaped) holds only the new
            # lease, as a real worker does: renew refuses two leases of one action.
            again = {lease.ref for lease in got}
            held = [(ww, old) for ww, old in held if not (ww is w and old.ref in again)]
            held += [(w, lease) for lease in got]
        elif op == "renew" and held:
            w, _ = rng.choice(held)
            await w.renew([lease for ww, lease in held if ww is w])
        elif op in ("complete", "fail", "release") and held:
            w, lease = held.pop(rng.randrange(len(held)))
            try:
                if op == "complete":
                    await w.complete(lease, b"\x01")
                elif op == "fail":
                    await w.fail(lease, "boom", retryable=rng.random() < 0.7)
                else:
                    await w.release(lease)
            except Exception as exc:  # stale tokens are expected after reaps
                assert type(exc).__name__ == "StaleToken"
        elif op == "advance":
            await vclock.advance(rng.choice([100, 400, 900, 1600]))
        elif op == "reap":
            await reaper.reap_once()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_replay_equals_live_state_after_a_random_workload(vbackend, seed):
    await random_workload(vbackend, vbackend.vclock, random.Random(seed))
    world = fold(e.event for e in await EventLog(vbackend).read_all())
    assert world.events > 50
    assert await verify(vbackend, world) == []


async def test_verify_reports_every_difference(vbackend):
    await random_workload(vbackend, vbackend.vclock, random.Random(7), steps=40)
    a_key = next(iter([k async for k in vbackend.redis.scan_iter(match="lessor:{*}:a:*")]))
    other = b"failed" if await vbackend.redis.hget(a_key, "phase") != b"failed" else b"succeeded"
    await vbackend.redis.hset(a_key, mapping={"phase": other, "attempt": 42})
    await vbackend.redis.hset(vbackend.keys(0).action("proj/development/ghost/a0"), "phase", "queued")
    diffs = {(d.key, d.field) for d in await verify(vbackend)}
    assert {(a_key.decode(), "phase"), (a_key.decode(), "attempt"),
            (vbackend.keys(0).action("proj/development/ghost/a0"), "<key>")} <= diffs


async def test_verify_catches_a_log_whose_run_disagrees_with_its_root(backend):
    """A run lives on its root action's hash, so readers take its phase (and task, queue, ...) from
    a0's: verify also checks that the log's run agrees with the log's a0. Control: a log whose run
    completed differently from how its a0 ended (no script writes one; a broken writer could) is
    reported, though every hash matches its own events."""
    await submit_run(backend, "t", namespace=NS, run_id="split", queue="q")
    worker = LeaseClient(backend, "w", LeaseConfig(ttl_ms=1000, grace_ms=500))
    [lease] = await worker.acquire(NS, "q", 1)
    await worker.complete(lease, b"ok")
    events = [e.event for e in await EventLog(backend).read_all()]
    assert await verify(backend, fold(events)) == []
    broken = [dataclasses.replace(e, phase="failed") if isinstance(e, ev.RunCompleted) else e for e in events]
    root = backend.keys_for_run(NS, "split").run_root(f"{NS}/split")
    assert [(d.key, d.field, d.from_log, d.live) for d in await verify(backend, fold(broken))] == [
        (root, "run phase", "failed", "succeeded")]
    # ... and a log whose a0 has no run (its run_created lost): readers would see a run there.
    rootless = [e for e in events if not isinstance(e, (ev.RunCreated, ev.RunCompleted))]
    assert [(d.key, d.field) for d in await verify(backend, fold(rootless))] == [(root, "<run>")]


async def test_a_runs_own_events_ride_on_its_root_actions(backend):
    """The scripts write a run's run_created and run_completed on a0's events (wire version 2):
    three maps on the wire for a run that ran once, five events for every reader."""
    await submit_run(backend, "t", namespace=NS, run_id="rides", queue="q")
    worker = LeaseClient(backend, "w", LeaseConfig(ttl_ms=1000, grace_ms=500))
    [lease] = await worker.acquire(NS, "q", 1)
    await worker.complete(lease, b"ok")
    p = lease.partition
    raw = msgpack.Unpacker(raw=False)
    for _, fields in await backend.redis.xrange(backend.keys(p).stream):
        raw.feed(fields[b"e"])
    wire = [(body["type"], body["v"]) for body in raw]
    assert wire == [("action_created", 2), ("action_leased", 1), ("action_succeeded", 2)]
    read = [e.TYPE for e in await EventLog(backend).read(p)]
    assert read == ["run_created", "action_created", "action_leased", "action_succeeded", "run_completed"]
    assert await verify(backend) == []


async def test_an_entry_holds_a_calls_events_whatever_their_number(backend):
    """flush_log encodes a call's events as one msgpack array and cuts its header off: 1 byte
    up to 15 events, 3 up to 65535. Entries of 1, 15, 16 and 400 events each read back whole."""
    from lessor.core.ids import partition_of
    from lessor.scheduler.submit import RunSpec, submit_runs

    ids = {}
    for n in (1, 15, 16, 400):
        # runs of one partition: a batch goes to one script call per partition, so one entry
        candidates = (f"e{n}-{i}" for i in range(n * backend.partitions * 8))
        ids[n] = [r for r in candidates if partition_of(NS, r, backend.partitions) == 0][:n]
        await submit_runs(backend, [RunSpec("t", namespace=NS, queue="q", run_id=r) for r in ids[n]])
    events = await EventLog(backend).read_all()
    for n, runs in ids.items():
        mine = [e.event for e in events if e.event.run in set(runs)]
        assert [e.TYPE for e in mine] == ["run_created", "action_created"] * n
        assert len({e.id for e in mine}) == 1   # one call, one entry
    assert await verify(backend) == []


async def test_follow_delivers_every_event_exactly_once_in_order(backend):
    log = EventLog(backend)
    got: list = []
    total = 60

    async def consume(task_status=anyio.TASK_STATUS_IGNORED):
        agen = log.follow(from_ids=await log.last_ids(), block_ms=100)
        task_status.started()
        async for entry in agen:
            got.append(entry)
            if len(got) == total:
                return

    async with anyio.create_task_group() as tg:
        await tg.start(consume)
        for i in range(total // 2):  # each submit appends run_created + action_created
            await submit_run(backend, "t", namespace=NS, run_id=f"f{i:03d}")
    ids = [(e.partition, e.event.id, e.event.index) for e in got]   # an entry holds one call's events
    assert len(set(ids)) == total
    for p in range(backend.partitions):
        mine = [e.event for e in got if e.partition == p]
        assert mine == await log.read(p)  # same events, same order, nothing extra


async def test_restart_with_appendfsync_always_loses_no_acknowledged_event():
    with EmbeddedServer(appendfsync="always") as server:
        backend = await make_backend(server.url)
        acked = [(await submit_run(backend, "t", namespace=NS)).run_id for _ in range(50)]
        before = [e.event for e in await EventLog(backend).read_all()]
        await backend.redis.aclose()
        server.crash()  # SIGKILL: no shutdown save, only what the AOF holds
        server.start()
        backend = await make_backend(server.url)
        after = [e.event for e in await EventLog(backend).read_all()]
        assert after == before and len(after) == 100
        assert {e.run for e in after} == set(acked)
        assert await verify(backend) == []
        await backend.redis.aclose()


async def test_readers_skip_and_report_an_entry_that_does_not_decode(backend):
    """Bad history (an older buggy version, a foreign client) never stops a reader."""
    from lessor.errors import EventDecodeError
    from lessor.leasing.eventlog import EventLog
    from lessor.leasing.replay import replay, verify
    from lessor.scheduler.submit import submit_run

    await submit_run(backend, "t", namespace="proj/development", run_id="r1")
    partition = backend.keys_for_run("proj/development", "r1").partition
    stream = backend.keys(partition).stream
    bad_id = (await backend.redis.xadd(stream, {"e": b"\xc1 not msgpack"})).decode()
    await backend.redis.xadd(stream, {"other": b"x"})
    await submit_run(backend, "t", namespace="proj/development", run_id="r1b")

    log = EventLog(backend)
    entries = await log.read_all()
    assert {e.event.run for e in entries} == {"r1", "r1b"}          # everything else still reads
    assert [b.entry_id for b in log.bad][0] == bad_id and len(log.bad) == 2
    world = await replay(backend)
    assert "proj/development/r1/a0" in world.actions and len(world.bad_entries) == 2
    diffs = await verify(backend)
    assert [d.field for d in diffs] == [f"entry {b.entry_id}" for b in log.bad]   # listed, not hidden
    with pytest.raises(EventDecodeError):
        await EventLog(backend, strict=True).read_all()


@pytest.mark.parametrize("field, value, why", [
    ("token", "5", "field token must be an integer"),            # a numeric string is not a number
    ("token", 1.5, "field token must be an integer"),
    ("token", 2**60, "field token must be an integer"),          # beyond the exact range of a double
    ("worker", 5, "field worker must be a string"),
    ("worker", [1, 2], "neither a number nor a string"),
    ("worker", True, "neither a number nor a string"),
    ("attempt", {"a": 1}, "neither a number nor a string"),
])
async def test_an_event_with_a_field_of_the_wrong_type_is_refused_and_nothing_written(backend, field, value, why):
    """The scripts' event check (generated from core/events.py) tells a number from a numeric string
    and a string from a number without a type() call per field; anything else raises inside it and is
    refused as well. append_events checks every event before its first write: all or none."""
    await EventLog(backend).append([ev.RunCreated(ns=NS, run="typed", task="t", queue="q"), created("typed", "a0")])
    before = await snapshot(backend)
    ok = {"v": 1, "type": "action_aborted", "ns": NS, "run": "typed", "action": "a0", "reason": "first, and fine"}
    bad = {"v": 1, "type": "action_leased", "ns": NS, "run": "typed", "action": "a0", "attempt": 1, "token": 7,
           "worker": "w", "ttl_ms": 1000, "grace_ms": 0, "deadline_ms": 5} | {field: value}
    with pytest.raises(Exception, match=f"LESSOR_BAD_EVENT 2 action_leased.*{why}"):
        await backend.scripts.append_events(keys=[backend.keys_for_run(NS, "typed").prefix],
                                            args=[msgpack.packb(ok), msgpack.packb(bad, use_bin_type=True)])
    assert await snapshot(backend) == before


async def test_a_call_whose_done_index_write_fails_still_logs_its_events(backend):
    """The done index (retention's list of finished runs) is written when the call ends, before the
    log: a failure there (here the key holds a string) is the call's error, and its events still
    reach the log, so the log says everything the projections do."""
    await submit_run(backend, "t", namespace=NS, queue="q", run_id="undone")
    worker = LeaseClient(backend, "w", LeaseConfig(ttl_ms=1000, grace_ms=500))
    [lease] = await worker.acquire(NS, "q", 1)
    keys = backend.keys_for_ref(lease.ref)
    await backend.redis.set(keys.prefix + f"done:{NS}", "not a sorted set")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await worker.complete(lease, b"ok")
    read = [e.TYPE for e in await EventLog(backend).read(lease.partition)]
    assert read[-2:] == ["action_succeeded", "run_completed"]
    assert await verify(backend) == []
