"""The archive: events moved out of the server before the stream is trimmed.

A directory of gzip-compressed JSON-lines segments, one file per partition and
stream-id range, readable without lessor::

    zcat archive/p003/1764250000000-0_1764250099999-5.jsonl.gz | jq .

Each line is one event: ``partition``, ``id`` (its stream id), its fields
(``type``, ``ns``, ``run``, ...; bytes as ``{"b64": "..."}``) and ``raw``, the
exact msgpack the scripts wrote (base64), which lessor decodes losslessly.
A segment is written to a temporary name, fsynced, renamed into place and its
directory fsynced before compaction may trim anything it holds.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
from typing import Iterator

from lessor.core.codec import decode_entry
from lessor.core.events import Event
from lessor.core.fold import World
from lessor.errors import EventDecodeError, LessorError

SUFFIX = ".jsonl.gz"


class ArchiveError(LessorError):
    """The archive directory cannot be written or read."""


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}   # event class -> the fields a line shows (computed once)


def _names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls)
                                          if f.name not in ("id", "index", "extra"))
    return names


def _event_fields(event: Event) -> dict:
    out: dict = {"type": event.TYPE}
    for name in _names(type(event)):
        value = getattr(event, name)
        out[name] = _jsonable(value) if isinstance(value, bytes) else value
    return out


def event_line(partition: int, entry_id: str, raw: bytes, events: list[Event] | None = None) -> dict:
    """One archive line per stream entry: its event's fields as JSON (an entry of several events,
    what one script call wrote: the list ``events``), and its raw bytes (``events``: already decoded)."""
    line: dict = {"partition": partition, "id": entry_id}
    try:
        events = events if events is not None else decode_entry(raw, entry_id)
        if len(events) == 1:
            line |= _event_fields(events[0])
        else:
            line["events"] = [_event_fields(e) for e in events]
    except EventDecodeError as exc:   # kept as it was, with why it does not decode
        line["undecodable"] = str(exc)
    line["raw"] = base64.b64encode(raw).decode()
    return line


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Archive:
    """A local directory of segments (``p<partition>/<first id>_<last id>.jsonl.gz``)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(os.path.expanduser(directory))

    def __repr__(self) -> str:
        return f"Archive({self.directory!r})"

    def _dir(self, partition: int) -> str:
        return os.path.join(self.directory, f"p{partition:03d}")

    def write_segment(self, partition: int, rows: list[tuple[str, bytes]], events: list | None = None) -> str:
        """Write ``rows`` (stream id, raw event) durably; the segment's path.

        ``events``: each row's events already decoded (None where it does not decode),
        to save decoding them twice.

        Rewriting the same range (a retry after a crash) replaces the file with
        the same content.
        """
        if not rows:
            raise ValueError("an archive segment needs at least one event")
        folder = self._dir(partition)
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{rows[0][0]}_{rows[-1][0]}{SUFFIX}")
            tmp = path + ".tmp"
            encode = json.JSONEncoder(separators=(",", ":")).encode
            body = "\n".join(encode(event_line(partition, entry_id, raw, events[i] if events is not None else None))
                             for i, (entry_id, raw) in enumerate(rows))
            with open(tmp, "wb") as f:
                # Level 1: the archive is written as fast as the log grows; zcat reads it the same.
                # One write of the whole segment: GzipFile's per-call CRC and bookkeeping cost more
                # than the compression did when it was written line by line.
                with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=1) as gz:
                    gz.write(body.encode())
                    gz.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(folder)
        except OSError as exc:
            raise ArchiveError(f"cannot write the archive segment in {folder}: {exc}; "
                               "nothing was trimmed (check the directory and its free space)") from None
        return path

    def segments(self, partition: int) -> list[str]:
        """This partition's segment files, oldest first."""
        folder = self._dir(partition)
        if not os.path.isdir(folder):
            return []
        names = [n for n in os.listdir(folder) if n.endswith(SUFFIX)]
        return [os.path.join(folder, n) for n in sorted(names, key=_first_id)]

    def lines(self, partition: int) -> Iterator[dict]:
        """Every archived line of one partition, in order, each once (a segment rewritten after a
        crash may overlap the one before it)."""
        last = (-1, -1)
        for path in self.segments(partition):
            with gzip.open(path, "rt") as f:
                for text in f:
                    line = json.loads(text)
                    key = _id_key(line["id"])
                    if key > last:
                        last = key
                        yield line

    def fold_partition(self, partition: int) -> tuple[World, str | None]:
        """The fold of every archived event of one partition, and the last archived id (None: none).

        The fallback when a partition's snapshots are unusable (``leasing/snapshots.py``).
        """
        world, last = World(), None
        for line in self.lines(partition):
            last = line["id"]
            if "undecodable" not in line:   # skipped, as every reader skips it
                for event in decode_entry(base64.b64decode(line["raw"]), last):
                    world.apply(event)
        return world, last

    def run_events(self, namespace: str, run_id: str, partition: int) -> list[Event]:
        """The archived events of one run (a scan of its partition's segments)."""
        out = []
        for line in self.lines(partition):
            if _names_run(line, namespace, run_id) and "undecodable" not in line:
                out += [e for e in decode_entry(base64.b64decode(line["raw"]), line["id"])
                        if e.ns == namespace and e.run == run_id]
        return out

    def has_run(self, namespace: str, run_id: str, partition: int) -> bool:
        """True if the archive holds any event of this run."""
        return any(_names_run(line, namespace, run_id) for line in self.lines(partition))


def _names_run(line: dict, namespace: str, run_id: str) -> bool:
    """Does an archive line hold an event of this run (its own fields, or one of its ``events``)?"""
    return any(e.get("ns") == namespace and e.get("run") == run_id for e in line.get("events") or (line,))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _first_id(name: str) -> tuple[int, int, tuple[int, int]]:
    first, last = name[:-len(SUFFIX)].split("_", 1)
    return (*_id_key(first), _id_key(last))
