"""Compaction against the real server: archive, snapshot, trim; replay from snapshot + tail.

The invariant, under hypothesis: whatever the order of workload steps,
retention passes and compaction steps, the fold of (snapshot + the events
after it) equals the live projection, and no running run loses its state.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib

import msgpack
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lessor.core.snapshot import SnapshotError, decode_snapshot, encode_snapshot
from lessor.core.fold import World
from lessor.errors import IllegalTransition, LogTrimmed
from lessor.leasing.archive import Archive
from lessor.leasing.compaction import compact, load_snapshot
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import replay, verify
from lessor.leasing.retention import RetentionPolicy, retire_once, set_policy
from lessor.scheduler.query import get_action
from lessor.leasing.scripts import ClockMode
from lessor.server import EmbeddedServer
from tests.conftest import TEST_MARK, VirtualClock, make_backend
from tests.test_eventlog import random_workload
from tests.test_cli import lessor
from tests.test_leasing import NS
from tests.test_retention import finish

pytestmark = pytest.mark.anyio


async def stream_lengths(backend) -> int:
    return sum([await backend.redis.xlen(k.stream) for k in backend.all_keys()])


async def test_compaction_archives_snapshots_and_trims_and_replay_still_matches(vbackend, tmp_path):
    b = vbackend
    await random_workload(b, b.vclock, random.Random(7), steps=150)
    before = await stream_lengths(b)   # entries: each holds the events of one script call
    events = len(await EventLog(b).read_all())
    assert events > before
    archive = Archive(str(tmp_path / "archive"))
    await b.vclock.advance(1)
    results = await compact(b, archive, keep_window_ms=0)
    assert sum(r.archived for r in results) == events
    assert sum(r.trimmed for r in results) >= before - b.partitions   # each stream keeps its snapshot entry
    assert await stream_lengths(b) <= b.partitions
    assert await verify(b) == []                                       # snapshot + (empty) tail == live
    await random_workload(b, b.vclock, random.Random(8), steps=80)     # more history on top of the snapshot
    assert await verify(b) == []
    # The archive is plain gzip JSON lines, and lossless.
    lines = [json.loads(x) for p in range(b.partitions) for s in archive.segments(p) for x in gzip.open(s, "rt")]
    assert len(lines) == before and all({"partition", "id", "raw"} <= set(x) for x in lines)
    fields = [e for x in lines for e in x.get("events") or (x,)]   # a line per entry, its events' fields
    assert len(fields) == events and all({"type", "ns", "run"} <= set(e) for e in fields)


async def test_a_retired_run_is_read_back_from_the_archive(vbackend, tmp_path):
    b = vbackend
    (gone, kept) = await finish(b, 2)
    original = await EventLog(b).run_events(NS, gone)
    await set_policy(b, NS, RetentionPolicy(keep_ms=1))
    await b.vclock.advance(5)
    await retire_once(b)
    archive = Archive(str(tmp_path / "a"))
    await compact(b, archive, keep_window_ms=0)
    partition = b.keys_for_run(NS, gone).partition
    archived = archive.run_events(NS, gone, partition)
    assert archived[:len(original)] == original and archived[-1].TYPE == "run_retired"
    assert archive.has_run(NS, gone, partition) and await verify(b) == []


async def test_a_follower_behind_the_trim_point_is_told_not_skipped(vbackend, tmp_path):
    b = vbackend
    await finish(b, 3)
    log = EventLog(b)
    behind = {p: "0" for p in range(b.partitions)}
    await compact(b, Archive(str(tmp_path / "a")), keep_window_ms=0)
    await finish(b, 3)                                   # new events arrive after the trim
    with pytest.raises(LogTrimmed, match="trimmed by compaction"):
        async for _ in log.follow(behind, block_ms=100):
            pass


async def test_a_snapshot_that_does_not_decode_is_named(vbackend, tmp_path):
    b = vbackend
    await finish(b, 2)
    await compact(b, Archive(str(tmp_path / "a")), keep_window_ms=0)
    key = b.keys(0).named("SNAPSHOT")
    await b.redis.hset(key, "data", b"\xc1garbage")
    with pytest.raises(SnapshotError, match="not valid msgpack"):
        await load_snapshot(b, 0)
    await b.redis.hset(key, "data", msgpack.packb({"v": 99}))
    with pytest.raises(SnapshotError, match="version 99"):
        await replay(b)
    # Version 1 (uncompressed, written before version 2) is still read.
    body = msgpack.unpackb(zlib.decompress(msgpack.unpackb(encode_snapshot("5-0", World()))["z"]))
    assert body["v"] == 1 and decode_snapshot(msgpack.packb(body)).at == "5-0"


async def test_an_unusable_snapshot_falls_back_to_the_previous_one_then_the_archive(vbackend, flushed, tmp_path):
    """The latest snapshot corrupted: replay --verify folds the previous one and the stream, and
    says so; both corrupted: it asks for the archive, and rebuilds from it when given; compaction's
    next step heals the partition."""
    b = vbackend
    archive = Archive(str(tmp_path / "a"))
    await finish(b, 12)
    await compact(b, archive, keep_window_ms=0)
    await finish(b, 12)
    await compact(b, archive, keep_window_ms=0)   # the second snapshot keeps the first beside it
    await finish(b, 4)                            # and a tail after it
    keys = [b.keys(p).named("SNAPSHOT") for p in range(b.partitions)]
    p = [p for p in range(b.partitions) if await b.redis.hexists(keys[p], "prev")][0]
    await b.redis.hset(keys[p], "data", msgpack.packb({"v": 99}))
    proc = lessor("replay", "--verify", "--json", url=flushed)
    summary = json.loads(proc.stdout)
    assert proc.returncode == 0 and summary["differences"] == [], proc.stdout + proc.stderr
    assert len(summary["fell_back"]) == 1 and "version 99" in summary["fell_back"][0]
    assert "fell back to the previous snapshot" in summary["fell_back"][0]
    await b.redis.hset(keys[p], "prev", b"\xc1garbage")
    proc = lessor("replay", "--verify", "--json", url=flushed)
    assert proc.returncode != 0 and "--archive DIR" in proc.stderr, proc.stdout + proc.stderr
    proc = lessor("replay", "--verify", "--json", "--archive", archive.directory, url=flushed)
    summary = json.loads(proc.stdout)
    assert proc.returncode == 0 and summary["differences"] == [], proc.stdout + proc.stderr
    assert "fell back to the archive" in summary["fell_back"][0]
    await finish(b, 8)
    healed = next(r for r in await compact(b, archive, keep_window_ms=0) if r.partition == p)
    assert "fell back to the archive" in healed.fell_back and healed.snapshot_at
    assert (await replay(b)).fell_back == [] and await verify(b) == []


async def test_verify_catches_a_trim_past_the_snapshot(vbackend, tmp_path):
    """The control: events trimmed beyond what the snapshot holds break replay, and verify says so."""
    b = vbackend
    await finish(b, 4)
    p = b.keys_for_run(NS, (await finish(b, 1))[0]).partition
    await b.redis.hset(b.keys(p).named("SNAPSHOT"), mapping={"data": encode_snapshot("0-1", World()), "at": "0-1"})
    await b.redis.xtrim(b.keys(p).stream, maxlen=1, approximate=False)   # the empty snapshot does not cover it
    with pytest.raises(IllegalTransition, match="is not allowed in phase"):
        await verify(b)


@settings(max_examples=int(os.environ.get("LESSOR_COMPACTION_EXAMPLES", "8")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["work", "work", "retire", "compact", "compact_window"]), min_size=3, max_size=10),
       st.integers(0, 2**16))
async def test_snapshot_plus_tail_always_equals_the_projection(server_url, tmp_path_factory, steps, seed):
    b = await fresh_vbackend(server_url)
    try:
        await _explore(b, tmp_path_factory, steps, seed)
    finally:
        await b.redis.aclose()


async def fresh_vbackend(url: str):
    """An emptied server and a backend on the virtual clock (one per hypothesis example)."""
    sync = redis.Redis.from_url(url)
    sync.flushall()
    sync.set(TEST_MARK, 1)
    sync.close()
    b = await make_backend(url, clock=ClockMode.VIRTUAL)
    b.vclock = VirtualClock(b)
    await b.vclock.set(1_000_000)
    return b


async def _explore(b, tmp_path_factory, steps, seed) -> None:
    rng = random.Random(seed)
    archive = Archive(str(tmp_path_factory.mktemp("archive")))
    await set_policy(b, NS, RetentionPolicy(keep_runs=rng.choice([0, 2, 8])))
    for step in steps:
        if step == "work":
            await random_workload(b, b.vclock, rng, steps=25)
        elif step == "retire":
            await retire_once(b)
        else:
            await compact(b, archive, keep_window_ms=0 if step == "compact" else 500, batch=rng.choice([7, 50, 10_000]))
        await b.vclock.advance(rng.choice([1, 300, 2000]))
        assert await verify(b) == [], f"after {step}"
        # Every run still live in the projection is in the replayed state (nothing lost to compaction).
        world = await replay(b)
        for ref in list(world.actions)[:20]:
            ns, run, action = ref.rsplit("/", 2)
            assert (await get_action(b, ns, run, action)).phase == world.actions[ref].phase


async def test_snapshot_retention_and_trim_survive_a_server_crash(tmp_path):
    """kill -9 between the steps: the snapshot, the trim and the retirements come back from the
    AOF together, and snapshot + tail still equals the projection."""
    with EmbeddedServer(appendfsync="always") as server:
        b = await make_backend(server.url, clock=ClockMode.VIRTUAL)
        b.vclock = VirtualClock(b)
        await b.vclock.set(1_000_000)
        archive = Archive(str(tmp_path / "archive"))
        await set_policy(b, NS, RetentionPolicy(keep_runs=4))
        for round_ in range(3):
            await random_workload(b, b.vclock, random.Random(round_), steps=60)
            await retire_once(b)
            await compact(b, archive, keep_window_ms=0)
            await random_workload(b, b.vclock, random.Random(100 + round_), steps=20)
            await b.redis.aclose()
            server.crash()
            server.start()
            b = await make_backend(server.url, clock=ClockMode.VIRTUAL)
            b.vclock = VirtualClock(b)
            await b.vclock.set(1_000_000 + 100_000 * (round_ + 1))
            assert await verify(b) == [], f"after crash {round_ + 1}"
        await b.redis.aclose()
