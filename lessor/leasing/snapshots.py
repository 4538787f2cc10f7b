"""Where a partition's fold starts: its latest snapshot, or a fallback when that one is unusable.

Compaction keeps two snapshots in each partition's snapshot hash: the latest
(``data``, ``at``) and the one it was folded from (``prev``, ``prev_at``), and
never trims the stream past the older one. So a latest snapshot that does not
decode, or comes from an unknown version, costs one step of folding: the state
is rebuilt from the previous snapshot plus the stream. If that one is unusable
too (or absent), it is rebuilt from the archive (every event up to the archive
mark) plus the stream, when the reader has the archive. The reader is told
which (``Start.fell_back``); without a usable fallback it gets the
``SnapshotError``, which says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from lessor.core.fold import World
from lessor.core.ids import stream_id_key as id_key
from lessor.core.snapshot import SnapshotError, decode_snapshot
from lessor.leasing.archive import Archive

FIELDS = ("data", "at", "prev", "prev_at", "trimmed")


@dataclass
class Start:
    """A partition's state folded through stream id ``at`` (None: nothing folded; read the whole stream)."""

    world: World
    at: str | None = None
    data: bytes | None = None    # the latest snapshot's bytes, when the world is that snapshot as stored
    fell_back: str = ""          # why the latest snapshot was not used, and what was used instead


async def read_start(redis, key: str, partition: int, archive: Archive | None = None) -> Start:
    """The state to fold the stream's tail onto (after ``Start.at``).

    ``redis``: a client, or a pipeline in immediate (WATCH) mode. Raises
    SnapshotError when the latest snapshot is unusable and neither the previous
    one nor ``archive`` can stand in for it.
    """
    data, at, prev, prev_at, trimmed = await redis.hmget(key, *FIELDS)
    if data is None:
        return Start(World())   # never compacted: the stream was never trimmed
    where = f"of partition {partition}"
    try:
        snapshot = decode_snapshot(data, where)
        return Start(snapshot.world, snapshot.at, data)
    except SnapshotError as exc:
        latest = exc
    trimmed_to = trimmed.decode() if trimmed else "0-0"
    if prev is not None and prev_at is not None and id_key(trimmed_to) <= id_key(prev_at.decode()):
        try:
            snapshot = decode_snapshot(prev, f"{where} (the previous one)")
            return Start(snapshot.world, snapshot.at,
                         fell_back=f"{latest}; fell back to the previous snapshot (at {snapshot.at}) and the stream")
        except SnapshotError:
            pass
    if archive is None:
        raise SnapshotError(f"{latest}; no usable older snapshot either: give the archive "
                            "(--archive DIR) to rebuild the state from it") from None
    world, last = await anyio.to_thread.run_sync(archive.fold_partition, partition)
    if last is None or id_key(last) < id_key(trimmed_to):
        raise SnapshotError(f"{latest}; the archive in {archive.directory} ends at {last or 'nothing'} but the "
                            f"stream was trimmed to {trimmed_to}: it is not this server's archive, or "
                            "segments are missing") from None
    return Start(world, last, fell_back=f"{latest}; fell back to the archive in {archive.directory} "
                                        f"(through {last}) and the stream")
