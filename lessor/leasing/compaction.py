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

from dataclasses import dataclass

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
                            keep_window_ms: int = 60_000) -> CompactionResult:
    """One bounded compaction step of one partition (see the module docstring)."""
    keys = backend.keys(partition)
    result = CompactionResult(partition)
    mark = (await backend.redis.get(_archived_key(keys)) or b"0-0").decode()
    rows = await backend.redis.xrange(keys.stream, "(" + mark, "+", count=batch)
    if rows:
        entries = [(i.decode(), fields.get(b"e", b"")) for i, fields in rows]
        result.segment = archive.write_segment(partition, entries)    # durable before anything moves
        mark = entries[-1][0]
        await backend.redis.set(_archived_key(keys), mark)
        result.archived = len(entries)
    snapshot = await load_snapshot(backend, partition)
    if snapshot is not None and id_key(snapshot.at) >= id_key(mark):
        return result
    world = snapshot.world if snapshot is not None else World()
    start = "(" + snapshot.at if snapshot is not None else "-"
    while True:   # fold what the snapshot lacks, through the archive mark
        tail = await backend.redis.xrange(keys.stream, start, mark, count=batch)
        for entry_id, fields in tail:
            try:
                world.apply(decode(fields.get(b"e", b""), entry_id.decode()))
            except EventDecodeError:
                pass   # skipped, as every reader skips it (replay --verify reports it)
        if len(tail) < batch:
            break
        start = "(" + tail[-1][0].decode()
    if mark == "0-0":
        return result
    seconds, micros = await backend.redis.time()   # stream ids are the server's wall clock
    window_start = f"{max(0, seconds * 1000 + micros // 1000 - keep_window_ms)}-0"
    trim_to = min(mark, window_start, key=id_key)
    # Written only over an older snapshot, in one call with the trim mark (a script-free
    # compare: two compactors racing write the same fold of the same events).
    async with backend.redis.pipeline(transaction=True) as pipe:
        pipe.hset(_snapshot_key(keys), mapping={"data": encode_snapshot(mark, world), "at": mark,
                                                "trimmed": trim_to, "v": 1})
        pipe.xtrim(keys.stream, minid=trim_to, approximate=False)
        _, trimmed = await pipe.execute()
    result.snapshot_at, result.trimmed = mark, trimmed
    return result


async def compact(backend: Backend, archive: Archive, **kwargs) -> list[CompactionResult]:
    """One compaction step of every partition."""
    return [await compact_partition(backend, p, archive, **kwargs) for p in range(backend.partitions)]


__all__ = ["Archive", "CompactionResult", "SnapshotError", "compact", "compact_partition", "load_snapshot",
           "trimmed_to"]
