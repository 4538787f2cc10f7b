"""Compaction: archive the log, snapshot the fold, trim the stream.

Per partition, in bounded steps:

1. **Archive** the events after the ``ARCHIVED`` mark (at most ``batch`` of
   them) to a segment file, durably (fsync), then move the mark.
2. **Snapshot** the fold at the last archived id: the previous snapshot plus
   the events after it, written next to the log (the partition's ``SNAPSHOT``
   hash) with its stream id and version, and only over an older one.
3. **Trim** the stream with ``XTRIM MINID`` to the snapshot, but never past
   the archive mark, never into the last ``keep_window_ms`` of events (so
   followers a little behind do not lose their place) and never past the
   snapshot this one was folded from, which stays beside it as ``prev``: a
   latest snapshot that does not decode falls back to it (``snapshots.py``).

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

from lessor.core.codec import decode_entry
from lessor.core.fold import World
from lessor.core.ids import stream_id_key as id_key
from lessor.core.snapshot import SNAPSHOT_VERSION, Snapshot, SnapshotError, decode_snapshot, encode_snapshot
from lessor.errors import EventDecodeError
from lessor.leasing.archive import Archive
from lessor.leasing.backend import Backend
from lessor.leasing.snapshots import Start, read_start

@dataclass
class CompactionResult:
    """What one compaction step of one partition did."""

    partition: int
    archived: int = 0
    segment: str = ""
    snapshot_at: str = ""
    trimmed: int = 0
    skipped: bool = False   # another compactor holds this partition
    fell_back: str = ""     # the latest snapshot was unusable: why, and what stood in for it


async def load_snapshot(backend: Backend, partition: int) -> Snapshot | None:
    """The partition's latest snapshot, or None. SnapshotError if it does not decode
    (``snapshots.read_start`` falls back to an older one or the archive instead)."""
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


@dataclass
class _Folded:
    """A partition's snapshot as this process last wrote it: its id, its fold and its bytes."""

    at: str
    world: World
    data: bytes


class SnapshotCache:
    """The snapshots this process wrote, kept so its next step need not read and decode them.

    A step takes its partition's entry out (it folds into that world in place) and
    puts the new one back only once its snapshot is written; a step whose write
    failed leaves nothing behind, and the next one reads the server's.
    """

    def __init__(self) -> None:
        self._by_partition: dict[int, _Folded] = {}

    def take(self, partition: int, at: str | None) -> _Folded | None:
        """The cached fold of ``partition`` if it is the snapshot at ``at`` (removed from the cache)."""
        folded = self._by_partition.pop(partition, None)
        return folded if folded is not None and folded.at == at else None

    def put(self, partition: int, folded: _Folded) -> None:
        self._by_partition[partition] = folded


async def compact_partition(backend: Backend, partition: int, archive: Archive, *, batch: int = 10_000,
                            keep_window_ms: int = 60_000, lock_ms: int = 60_000,
                            cache: SnapshotCache | None = None) -> CompactionResult:
    """One bounded compaction step of one partition (see the module docstring).

    One compactor per partition at a time (a lock with a random value, ``lock_ms``
    at most): two at once would archive overlapping ranges, and one could fold a
    tail the other was trimming. Should a step outlive its lock anyway, its
    snapshot is written only if nobody wrote one since it read it (WATCH), so the
    worst case is a step that does nothing. ``cache``: keep this process's last
    snapshot of the partition in memory (a compactor that runs steps back to back).
    """
    keys = backend.keys(partition)
    result = CompactionResult(partition)
    lock, token = keys.named("COMPACTING"), secrets.token_hex(8)
    if not await backend.redis.set(lock, token, nx=True, px=lock_ms):
        result.skipped = True
        return result
    try:
        await _step(backend, keys, partition, archive, batch, keep_window_ms, result, cache or SnapshotCache())
    finally:
        async with backend.redis.pipeline(transaction=True) as pipe:   # release only our own lock
            await pipe.watch(lock)
            if await pipe.get(lock) == token.encode():
                pipe.multi()
                pipe.delete(lock)
                await pipe.execute()
    return result


async def _step(backend: Backend, keys, partition: int, archive: Archive, batch: int, keep_window_ms: int,
                result: CompactionResult, cache: SnapshotCache) -> None:
    mark = (await backend.redis.get(_archived_key(keys)) or b"0-0").decode()
    archived_from = mark
    rows = await backend.redis.xrange(keys.stream, "(" + mark, "+", count=batch)
    decoded: list = []
    if rows:
        entries = [(i.decode(), fields.get(b"e", b"")) for i, fields in rows]
        # Decoding, gzip, JSON and fsync run in a thread: the process (a reaper) keeps reaping meanwhile.
        decoded = await anyio.to_thread.run_sync(_decode_all, entries)
        # Durable before anything moves.
        result.segment = await anyio.to_thread.run_sync(archive.write_segment, partition, entries, decoded)
        mark = entries[-1][0]
        await backend.redis.set(_archived_key(keys), mark)
        result.archived = sum(len(events) if events else 1 for events in decoded)   # events (an entry: a call's)
    if mark == "0-0":
        return
    key = _snapshot_key(keys)
    async with backend.redis.pipeline(transaction=True) as pipe:
        await pipe.watch(key)       # the snapshot we fold on must still be the latest
        at = await pipe.hget(key, "at")
        folded = cache.take(partition, at.decode() if at is not None else None)
        if folded is not None:
            start = Start(folded.world, folded.at, folded.data)
        else:   # falls back to the previous snapshot or the archive if the latest is unusable
            start = await read_start(pipe, key, partition, archive)
        if start.at is not None and id_key(start.at) >= id_key(mark) and not start.fell_back:
            if folded is not None:
                cache.put(partition, folded)   # nothing new: still the latest
            return
        world = start.world
        after = "(" + start.at if start.at is not None else "-"
        if decoded and start.at == archived_from:
            # The usual step: the snapshot ends where this batch begins; fold the batch as decoded.
            await anyio.to_thread.run_sync(_apply_all, world, decoded)
            after = None
        while after is not None:   # otherwise fold what the snapshot lacks, through the archive mark
            tail = await backend.redis.xrange(keys.stream, after, mark, count=batch)
            await anyio.to_thread.run_sync(_fold_into, world, tail)
            after = "(" + tail[-1][0].decode() if len(tail) == batch else None
        seconds, micros = await backend.redis.time()   # stream ids are the server's wall clock
        window_start = f"{max(0, seconds * 1000 + micros // 1000 - keep_window_ms)}-0"
        # Never past the snapshot this one was folded from: while the stream holds what followed
        # it, a new snapshot that turns out unusable costs one step of folding (snapshots.py).
        trim_to = min(mark, window_start, start.at or mark, key=id_key)
        # An archive fallback may have folded past the mark (a segment written just before a crash).
        at = max(mark, start.at or mark, key=id_key)
        data = await anyio.to_thread.run_sync(encode_snapshot, at, world)
        pipe.multi()
        pipe.hset(key, mapping={"data": data, "at": at, "trimmed": trim_to, "v": SNAPSHOT_VERSION})
        if start.data is not None:
            pipe.hset(key, mapping={"prev": start.data, "prev_at": start.at})
        else:
            pipe.hdel(key, "prev", "prev_at")
        pipe.xtrim(keys.stream, minid=trim_to, approximate=False)
        try:
            *_, trimmed = await pipe.execute()
        except WatchError:
            return   # another compactor wrote a snapshot meanwhile: this step's fold is stale
    cache.put(partition, _Folded(at, world, data))
    result.snapshot_at, result.trimmed, result.fell_back = at, trimmed, start.fell_back


def _decode_all(entries: list[tuple[str, bytes]]) -> list:
    return [_decode_or_none(raw, entry_id) for entry_id, raw in entries]


def _decode_or_none(raw: bytes, entry_id: str):
    try:
        return decode_entry(raw, entry_id)
    except EventDecodeError:
        return None   # archived as it is, skipped by the fold (as every reader skips it)


def _apply_all(world: World, entries: list) -> None:
    for events in entries:
        for event in events or ():
            world.apply(event)


def _fold_into(world: World, rows) -> None:
    for entry_id, fields in rows:
        try:
            events = decode_entry(fields.get(b"e", b""), entry_id.decode())
        except EventDecodeError:
            continue   # skipped, as every reader skips it (replay --verify reports it)
        for event in events:
            world.apply(event)


async def compact(backend: Backend, archive: Archive, partitions: list[int] | None = None,
                  **kwargs) -> list[CompactionResult]:
    """One compaction step of every partition (or of ``partitions``), side by side (their file
    writes and fsyncs overlap). Several processes can share the work, each with its own
    partitions: compaction is CPU-bound Python, and a process has one core's worth of it."""
    chosen = list(range(backend.partitions)) if partitions is None else list(partitions)
    results: list[CompactionResult | None] = [None] * len(chosen)

    async def one(i: int, p: int) -> None:
        results[i] = await compact_partition(backend, p, archive, **kwargs)

    async with anyio.create_task_group() as tg:
        for i, p in enumerate(chosen):
            tg.start_soon(one, i, p)
    return results  # type: ignore[return-value]


__all__ = ["Archive", "CompactionResult", "SnapshotCache", "SnapshotError", "compact", "compact_partition", "load_snapshot",
           "trimmed_to"]
