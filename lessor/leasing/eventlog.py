"""The event log: one Redis Stream per partition, read back as decoded events.

Writes happen only inside the Lua scripts (state + event together); this module
appends raw events through ``append_events.lua`` (tools, tests) and reads:
a range, a run's events, everything, and a live follow (XREAD BLOCK).

Why here and not in core: core is pure (no I/O); the log's only writer is a
Lua script, and the scripts live in leasing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import anyio
from redis.exceptions import ResponseError

from lessor.core.codec import decode_entry, encode
from lessor.core.events import Event
from lessor.core.ids import stream_id_key
from lessor.errors import EventDecodeError, IllegalTransition, LessorError, LogTrimmed
from lessor.leasing.backend import Backend
from lessor.leasing.outage import Outage, is_transient

READ_BATCH = 1000
log = logging.getLogger("lessor.eventlog")


@dataclass(frozen=True)
class BadEntry:
    """A stream entry that does not decode (an older buggy version, a foreign client): skipped, kept here."""

    partition: int
    entry_id: str
    why: str

    def __str__(self) -> str:
        return f"partition {self.partition} entry {self.entry_id}: {self.why}"


@dataclass(frozen=True)
class LogEntry:
    """An event and where it sits: partition and stream id."""

    partition: int
    event: Event


class EventLog:
    """Read and append the per-partition streams of one backend.

    Readers survive bad history: an entry that does not decode is logged once
    (stream, id, why), kept in ``bad``, and skipped, so one poisoned entry
    cannot stop ``events``, ``replay``, a follower or a watcher. With
    ``strict=True`` it raises EventDecodeError instead.
    """

    def __init__(self, backend: Backend, *, strict: bool = False) -> None:
        self.backend = backend
        self.strict = strict
        self.bad: list[BadEntry] = []

    def _decode(self, partition: int, row) -> list[Event]:
        """The events of one entry (none if it does not decode and this log is not strict)."""
        try:
            return _decode_row(row)
        except EventDecodeError as exc:
            if self.strict:
                raise
            bad = BadEntry(partition, row[0].decode(), str(exc))
            self.bad.append(bad)
            log.warning("skipped an undecodable event log entry: %s", bad)
            return []

    async def append(self, events: Sequence[Event]) -> list[str]:
        """Append events of one run atomically (all or none); returns stream ids.

        Raises IllegalTransition if the table forbids one (nothing written) or
        EventDecodeError if the server could not read one.
        """
        if not events:
            return []
        runs = {(e.ns, e.run) for e in events}
        if len(runs) != 1:
            raise ValueError(f"append takes events of one run (one partition), got {len(runs)} runs")
        keys = self.backend.keys_for_run(*runs.pop())
        try:
            ids = await self.backend.scripts.append_events(keys=[keys.prefix], args=[encode(e) for e in events])
        except ResponseError as exc:
            raise _script_error(str(exc)) from None
        return [i.decode() for i in ids]

    async def read(self, partition: int, start: str = "-", end: str = "+", count: int | None = None) -> list[Event]:
        """Events of one partition between two stream ids (inclusive)."""
        stream = self.backend.keys(partition).stream
        rows = await self.backend.redis.xrange(stream, start, end, count=count)
        return [e for row in rows for e in self._decode(partition, row)]

    async def scan(self, partition: int, start: str = "-") -> AsyncIterator[Event]:
        """Every event of one partition in order (from stream id ``start``), read in batches."""
        while True:
            rows = await self.backend.redis.xrange(self.backend.keys(partition).stream, start, "+", count=READ_BATCH)
            for row in rows:
                for event in self._decode(partition, row):
                    yield event
            if len(rows) < READ_BATCH:
                return
            start = "(" + rows[-1][0].decode()

    async def read_all(self) -> list[LogEntry]:
        """Every event of every partition (each partition in order)."""
        out = []
        for p in range(self.backend.partitions):
            out.extend([LogEntry(p, e) async for e in self.scan(p)])
        return out

    async def run_events(self, namespace: str, run_id: str) -> list[Event]:
        """The events of one run, in order (a scan of its partition)."""
        p = self.backend.keys_for_run(namespace, run_id).partition
        return [e async for e in self.scan(p) if e.ns == namespace and e.run == run_id]

    async def last_ids(self) -> dict[int, str]:
        """The id of the newest entry of each partition's stream ("0" if empty): a follow start point."""
        out = {}
        for p in range(self.backend.partitions):
            rows = await self.backend.redis.xrevrange(self.backend.keys(p).stream, "+", "-", count=1)
            out[p] = rows[0][0].decode() if rows else "0"
        return out

    async def follow(self, from_ids: dict[int, str] | None = None, block_ms: int = 1000,
                     outage: Outage | None = None) -> AsyncIterator[LogEntry]:
        """Yield new events of all partitions as they are appended, forever.

        ``from_ids`` maps partition -> last seen stream id ("$" = only new ones,
        "0" = from the start); partitions not named start at "$". Pass ids taken
        with ``last_ids()`` to be sure nothing appended after that point is missed.
        Every event is delivered exactly once, in order within its partition.

        With ``outage``, store faults never end the follow: it waits (capped,
        jittered backoff; one log line per outage) and goes on from the last id
        it delivered. After a failover that lost writes, events the old
        primary had appended past that id are gone: a follower that must not
        miss a state change re-reads the state it waits for (as ``wait()`` does).
        """
        last = await self._start_ids(from_ids, outage)
        # One XREAD for all partitions when they share a server; on a cluster each partition is
        # its own slot, and one XREAD may not span slots: then one XREAD per partition, in flight
        # together, merged here (order kept within each partition).
        groups = [[p] for p in last] if self.backend.cluster else [list(last)]
        pending: dict[asyncio.Task, list[int]] = {}
        failing: set[int] = set()   # groups whose last read failed: the outage ends when none is left
        try:
            while True:
                for i, group in enumerate(groups):
                    if group not in pending.values():
                        pending[asyncio.ensure_future(self._xread_checked(group, last, block_ms))] = group
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failure = None
                for task in done:
                    group = pending.pop(task)
                    try:
                        reply = task.result()
                    except Exception as exc:  # a store fault is waited out when an outage tracker is given
                        if outage is None or not is_transient(exc):
                            raise
                        failure = exc
                        failing.add(group[0])
                        continue
                    failing.discard(group[0])
                    for entry in self._rows(reply, last):
                        yield entry
                if failure is not None:
                    await anyio.sleep(outage.failed(failure) / 1000)
                elif outage is not None and not failing:
                    outage.ok()
        finally:
            for task in pending:
                task.cancel()
            if pending:  # wait for the cancelled reads, so no connection is left mid-command
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(*pending, return_exceptions=True)

    async def _check_not_trimmed(self, reply, last: dict[int, str]) -> None:
        """LogTrimmed if compaction trimmed events between a partition's last delivered id and
        this batch: never skip them silently. One read per batch that brought events."""
        by_stream = {self.backend.keys(p).stream: p for p in last}
        parts = [by_stream[s.decode() if isinstance(s, bytes) else s] for s, rows in reply or [] if rows]
        if not parts:
            return
        async with self.backend.redis.pipeline(transaction=False) as pipe:
            for p in parts:
                pipe.hget(self.backend.keys(p).named("SNAPSHOT"), "trimmed")
            marks = await pipe.execute()
        for p, mark in zip(parts, marks):
            if mark is not None and stream_id_key(last[p]) < stream_id_key(mark.decode()):
                raise LogTrimmed(f"partition {p}: events after {last[p]} up to {mark.decode()} were trimmed by "
                                 "compaction while this follower was behind; re-read the state and follow from "
                                 "now, or read them from the archive (lessor events --archive)")

    async def _xread_checked(self, partitions: list[int], last: dict[int, str], block_ms: int):
        """``_xread`` then ``_check_not_trimmed``: a store fault in either is waited out the same way."""
        reply = await self._xread(partitions, last, block_ms)
        await self._check_not_trimmed(reply, last)
        return reply

    async def _xread(self, partitions: list[int], last: dict[int, str], block_ms: int):
        streams = {self.backend.keys(p).stream: last[p] for p in partitions}
        return await self.backend.redis.xread(streams, count=READ_BATCH, block=block_ms)

    def _rows(self, reply, last: dict[int, str]):
        by_stream = {self.backend.keys(p).stream: p for p in last}
        for stream, rows in reply or []:
            p = by_stream[stream.decode() if isinstance(stream, bytes) else stream]
            for row in rows:
                last[p] = row[0].decode()
                for event in self._decode(p, row):
                    yield LogEntry(p, event)

    async def _start_ids(self, from_ids: dict[int, str] | None, outage: Outage | None) -> dict[int, str]:
        while True:
            try:
                now = await self.last_ids()
                break
            except Exception as exc:  # as in follow(): waited out only with an outage tracker
                if outage is None or not is_transient(exc):
                    raise
                await anyio.sleep(outage.failed(exc) / 1000)
        last = dict(now)
        for p, start in (from_ids or {}).items():
            last[p] = now[p] if start == "$" else start
        return last


def _decode_row(row) -> list[Event]:
    entry_id, fields = row
    entry_id = entry_id.decode()
    data = fields.get(b"e")
    if data is None:
        raise EventDecodeError(f"stream entry {entry_id} has no 'e' field: not written by lessor")
    return decode_entry(data, entry_id)


def _script_error(message: str) -> LessorError:
    parts = message.split(" ")
    if parts[0] == "LESSOR_ILLEGAL" and len(parts) >= 5:
        return IllegalTransition(parts[4], None if parts[2] == "-" else parts[2], parts[3])
    if parts[0] == "LESSOR_BAD_EVENT":
        return EventDecodeError(f"the server refused event #{parts[1]}: {' '.join(parts[2:])}")
    return LessorError(message)
