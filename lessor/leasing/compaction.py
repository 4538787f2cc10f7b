"""Compaction: archive the log, snapshot the fold, trim the stream.

Per partition, in bounded steps:

1. **Archive** the events after the ``ARCHIVED`` mark (at most ``batch`` of
   them) to a segment file, durably (fsync), then move the mark.
2. **Snapshot** the fold at the last archived id: the previous snapshot plus
   the events after it, written next to the log (the partition's ``SNAPSHOT``
   hash) with its stream id and version, and only over an older one.
3. **Trim** the stream with ``XTRIM MINID`` to the snapshot, but never past
   the archive mark and never into the last ``keep_window_ms`` of events, so
   followers a little behind do not lose their place.

Invariant (tested with hypothesis): the fold of (snapshot + the events after
it) equals the live projection. ``replay`` reads exactly that. A follower
whose position was trimmed away gets ``LogTrimmed`` (never a silent skip) and
starts again from the state (see ``EventLog.follow``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import anyio

from redis.exceptions import WatchError

from lessor.core.codec import decode
from lessor.core.fold import World
from lessor.core.ids import stream_id_key as id_key
from lessor.core.snapshot import Snapshot, SnapshotError, decode_snapshot, encode_snapshot
from lessor.errors import EventDecodeError
from lessor.leasing.archive import Archive
from lessor.leasing.backend import Backend

@dataclass
class CompactionResult:
    """What one compaction step of one partition did."""

    partition: int
    archived: int = 0
    segment: str = ""
    snapshot_at: str = ""
    trimmed: int = 0
    skipped: bool = False   # another compactor holds this partition


async def load_snapshot(backend: Backend, partition: int) -> Snapshot | None:
    """The partition's latest snapshot, or None. SnapshotError if it does not decode."""
    keys = backend.keys(partition)
    data = await backend.redis.hget(_snapshot_key(keys), "data")
    if data is None:
        return None
    return decode_snapshot(data, f"of partition {partition}")


def _snapshot_key(keys) -> str:
    return keys.named("SNAPSHOT")


def _archived_key(keys) -> str:
    return keys.named("ARCHIVED")


async def trimmed_to(backend: Backend, partition: int) -> str:
    """The stream id below which this partition's events may have been trimmed ("0-0" if none)."""
    value = await backend.redis.hget(_snapshot_key(backend.keys(partition)), "trimmed")
    return value.decode() if value else "0-0"


async def compact_partition(backend: Backend, partition: int, archive: Archive, *, batch: int = 10_000,
                            keep_window_ms: int = 60_000, lock_ms: int = 60_000) -> CompactionResult:
    """One bounded compaction step of one partition (see the module docstring).

    One compactor per partition at a time (a lock with a random value, ``lock_ms``
    at most): two at once would archive overlapping ranges, and one could fold a
    tail the other was trimming. Should a step outlive its lock anyway, its
    snapshot is written only if nobody wrote one since it read it (WATCH), so the
    worst case is a step that does nothing.
    """
    keys = backend.keys(partition)
    result = CompactionResult(partition)
    lock, token = keys.named("COMPACTING"), secrets.token_hex(8)
    if not await backend.redis.set(lock, token, nx=True, px=lock_ms):
        result.skipped = True
        return result
    try:
        await _step(backend, keys, partition, archive, batch, keep_window_ms, result)
    finally:
        async with backend.redis.pipeline(transaction=True) as pipe:   # release only our own lock
            await pipe.watch(lock)
            if await pipe.get(lock) == token.encode():
                pipe.multi()
                pipe.delete(lock)
                await pipe.execute()
    return result


async def _step(backend: Backend, keys, partition: int, archive: Archive, batch: int, keep_window_ms: int,
                result: CompactionResult) -> None:
    mark = (await backend.redis.get(_archived_key(keys)) or b"0-0").decode()
    archived_from = mark
    rows = await backend.redis.xrange(keys.stream, "(" + mark, "+", count=batch)
    decoded: list = []
    if rows:
        entries = [(i.decode(), fields.get(b"e", b"")) for i, fields in rows]
        decoded = [_decode_or_none(raw, entry_id) for entry_id, raw in entries]
        # Durable before anything moves. gzip, JSON and fsync run in a thread: the process
        # (a reaper) keeps reaping meanwhile.
        result.segment = await anyio.to_thread.run_sync(archive.write_segment, partition, entries, decoded)
        mark = entries[-1][0]
        await backend.redis.set(_archived_key(keys), mark)
        result.archived = len(entries)
    if mark == "0-0":
        return
    async with backend.redis.pipeline(transaction=True) as pipe:
        await pipe.watch(_snapshot_key(keys))       # the snapshot we fold on must still be the latest
        data = await pipe.hget(_snapshot_key(keys), "data")
        snapshot = decode_snapshot(data, f"of partition {partition}") if data is not None else None
        if snapshot is not None and id_key(snapshot.at) >= id_key(mark):
            return
        world = snapshot.world if snapshot is not None else World()
        start = "(" + snapshot.at if snapshot is not None else "-"
        if decoded and snapshot is not None and snapshot.at == archived_from:
            # The usual step: the snapshot ends where this batch begins; fold the batch as decoded.
            await anyio.to_thread.run_sync(_apply_all, world, decoded)
            start = None
        while start is not None:   # otherwise fold what the snapshot lacks, through the archive mark
            tail = await backend.redis.xrange(keys.stream, start, mark, count=batch)
            await anyio.to_thread.run_sync(_fold_into, world, tail)
            start = "(" + tail[-1][0].decode() if len(tail) == batch else None
        seconds, micros = await backend.redis.time()   # stream ids are the server's wall clock
        window_start = f"{max(0, seconds * 1000 + micros // 1000 - keep_window_ms)}-0"
        trim_to = min(mark, window_start, key=id_key)
        data = await anyio.to_thread.run_sync(encode_snapshot, mark, world)
        pipe.multi()
        pipe.hset(_snapshot_key(keys), mapping={"data": data, "at": mark,
                                                "trimmed": trim_to, "v": 1})
        pipe.xtrim(keys.stream, minid=trim_to, approximate=False)
        try:
            _, trimmed = await pipe.execute()
        except WatchError:
            return   # another compactor wrote a snapshot meanwhile: this step's fold is stale
    result.snapshot_at, result.trimmed = mark, trimmed


def _decode_or_none(raw: bytes, entry_id: str):
    try:
        return decode(raw, entry_id)
    except EventDecodeError:
        return None   # archived as it is, skipped by the fold (as every reader skips it)


def _apply_all(world: World, events: list) -> None:
    for event in events:
        if event is not None:
            world.apply(event)


def _fold_into(world: World, rows) -> None:
    for entry_id, fields in rows:
        try:
            world.apply(decode(fields.get(b"e", b""), entry_id.decode()))
        except EventDecodeError:
            pass   # skipped, as every reader skips it (replay --verify reports it)


async def compact(backend: Backend, archive: Archive, **kwargs) -> list[CompactionResult]:
    """One compaction step of every partition, the partitions side by side (their file writes
    and fsyncs overlap)."""
    results: list[CompactionResult | None] = [None] * backend.partitions

    async def one(p: int) -> None:
        results[p] = await compact_partition(backend, p, archive, **kwargs)

    async with anyio.create_task_group() as tg:
        for p in range(backend.partitions):
            tg.start_soon(one, p)
    return results  # type: ignore[return-value]


__all__ = ["Archive", "CompactionResult", "SnapshotError", "compact", "compact_partition", "load_snapshot",
           "trimmed_to"]
