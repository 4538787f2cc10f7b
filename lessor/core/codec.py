"""msgpack codec for events, with a schema version.

Wire form: a msgpack map ``{"v": 1, "type": "...", <fields>}``. The Lua scripts
write the same form with ``cmsgpack``; since Lua strings are bytes, a blob
field written by Lua arrives as a msgpack *str* that may not be UTF-8, so the
decoder reads strings with ``surrogateescape`` and turns blob fields back into
bytes losslessly.

``decode`` either returns a complete event or raises an ``EventDecodeError``
subclass naming what was wrong. It never returns a half-built event.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

import msgpack

from lessor.core.events import EVENT_TYPES, SCHEMA_VERSION, Event
from lessor.errors import EventDecodeError, UnknownEventType, UnknownSchemaVersion

_HEADER = ("v", "type")
_NOT_ENCODED = ("id", "index", "extra")
#: The wire version of a root action's event that also stands for its run's own event (the
#: scripts write it: leasing/lua/_prelude.lua, IMPLIES_RUN). a0's ``action_created`` that
#: created its run implies ``run_created`` (the run's ``idempotency_key`` rides along), and a0's
#: move to a terminal phase implies ``run_completed`` (its ``run_phase`` rides along).
#: ``decode_entry`` expands each into the two events, so readers see the same sequence.
IMPLIES_RUN = 2
_RUN_FIELDS = ("ns", "run", "ts", "task", "queue", "inputs")


def encode(event: Event) -> bytes:
    """Encode an event to its msgpack wire form (unknown ``extra`` fields are written back)."""
    body: dict[str, Any] = dict(event.extra)
    body["v"] = SCHEMA_VERSION
    body["type"] = event.TYPE
    for f in dataclasses.fields(event):
        if f.name in _NOT_ENCODED:
            continue
        value = getattr(event, f.name)
        if value is not None:
            body[f.name] = value
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes, event_id: str = "") -> Event:
    """Decode wire bytes of one event into it, or raise EventDecodeError (or a subclass).
    A map that stands for two events (version IMPLIES_RUN) is read with ``decode_entry``."""
    try:
        body = msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape", strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise EventDecodeError(f"event {event_id or '?'} is not valid msgpack: {exc}") from None
    events = _events(body, event_id, 0)
    if len(events) != 1:
        raise EventDecodeError(f"event {event_id or '?'} stands for {len(events)} events (wire version "
                               f"{IMPLIES_RUN}): read it with decode_entry")
    return events[0]


def decode_entry(data: bytes, entry_id: str = "") -> list[Event]:
    """The events of one stream entry: its field ``e`` holds one or more events' msgpack
    maps back to back, what one script call wrote, in order. Each event gets the entry's
    id and its ``index`` in the entry. Every event, or EventDecodeError: an entry is what
    one call did, so it is never read in part."""
    try:   # an entry of one event (every entry before the log's unit became the call)
        return _events(msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape",
                                       strict_map_key=False), entry_id, 0)
    except msgpack.ExtraData:
        pass   # several events
    except EventDecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise EventDecodeError(f"entry {entry_id or '?'} is not valid msgpack: {exc}") from None
    unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False)
    unpacker.feed(data)
    events: list[Event] = []
    try:
        for body in unpacker:
            events += _events(body, entry_id, len(events))
    except EventDecodeError:
        raise
    except Exception as exc:  # safe: only msgpack runs here, and it raises several unrelated types on garbage
        raise EventDecodeError(f"entry {entry_id or '?'} is not valid msgpack: {exc}") from None
    if unpacker.tell() != len(data):
        raise EventDecodeError(f"entry {entry_id or '?'} ends in the middle of an event "
                               f"({len(data) - unpacker.tell()} bytes left over)")
    return events


def _events(body: Any, entry_id: str, index: int) -> list[Event]:
    """The event one wire map holds, and the run event it implies if it says so (IMPLIES_RUN);
    ``index``: the first one's place in its entry."""
    if not isinstance(body, dict) or body.get("v") != IMPLIES_RUN:
        return [_event(body, entry_id, index)]
    where = entry_id if not index else f"{entry_id or '?'} (event {index + 1} of its entry)"
    body = dict(body, v=SCHEMA_VERSION)
    etype = body.get("type")
    if body.get("action") != "a0":
        raise EventDecodeError(f"event {where or '?'}: only a root action's (a0) event implies its run's, "
                               f"got {etype!r} of action {body.get('action')!r}")
    if etype == "action_created":
        run = {"v": SCHEMA_VERSION, "type": "run_created", "idempotency_key": body.pop("idempotency_key", None)}
        run |= {name: body[name] for name in _RUN_FIELDS if name in body}
        return [_event(run, entry_id, index), _event(body, entry_id, index + 1)]
    phase = body.pop("run_phase", None)
    if phase is None:
        raise EventDecodeError(f"{etype} event {where or '?'} says it completed its run (version "
                               f"{IMPLIES_RUN}) but carries no run_phase")
    completed = {"v": SCHEMA_VERSION, "type": "run_completed", "phase": phase,
                 **{name: body[name] for name in ("ns", "run", "ts") if name in body}}
    return [_event(body, entry_id, index), _event(completed, entry_id, index + 1)]


def _event(body: Any, event_id: str, index: int = 0) -> Event:
    where = event_id if not index else f"{event_id or '?'} (event {index + 1} of its entry)"
    if not isinstance(body, dict):
        raise EventDecodeError(f"event {where or '?'} must be a msgpack map, got {type(body).__name__}")
    version = body.get("v")
    if version != SCHEMA_VERSION:
        raise UnknownSchemaVersion(
            f"event {where or '?'} has schema version {version!r}; this lessor reads versions "
            f"{SCHEMA_VERSION} and {IMPLIES_RUN}: upgrade lessor to read it"
        )
    etype = body.get("type")
    cls = EVENT_TYPES.get(etype) if isinstance(etype, str) else None
    if cls is None:
        raise UnknownEventType(f"event {where or '?'} has unknown type {etype!r}")
    return _build(cls, body, event_id, index)


def _build(cls: type[Event], body: dict, event_id: str, index: int = 0) -> Event:
    where = event_id if not index else f"{event_id or '?'} (event {index + 1} of its entry)"
    kwargs: dict[str, Any] = {}
    fields = field_types(cls)
    extra = {k: v for k, v in body.items() if k not in fields and k not in _HEADER}
    for name, (kinds, required) in fields.items():
        value = body.get(name)
        if value is None:
            if required:
                raise EventDecodeError(f"{cls.TYPE} event {where or '?'} is missing field {name!r}")
            continue
        # The common cases first (replay and compaction decode every event): an int where
        # an int belongs, an ASCII str where a str belongs.
        kind = type(value)
        if kind is int and int in kinds or kind is str and str in kinds and value.isascii():
            kwargs[name] = value
        else:
            kwargs[name] = _coerce(cls, name, value, kinds, where)
    return cls(**kwargs, id=event_id, index=index, extra=extra)


def _coerce(cls: type[Event], name: str, value: Any, kinds: tuple[type, ...], event_id: str) -> Any:
    if bytes in kinds and isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool) or not isinstance(value, kinds):
        # bool is an int subclass; a bool where a number belongs is a broken writer
        raise EventDecodeError(
            f"{cls.TYPE} event {event_id or '?'}: field {name!r} must be "
            f"{'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}"
        )
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EventDecodeError(
                f"{cls.TYPE} event {event_id or '?'}: field {name!r} is not valid UTF-8"
            ) from None
    return value


@functools.cache
def field_types(cls: type[Event]) -> dict[str, tuple[tuple[type, ...], bool]]:
    """name -> (accepted python types, required) for each encoded field of ``cls``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in _NOT_ENCODED:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = tuple(a for a in args if a is not type(None))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = (kinds, required)
    return out

