"""Golden event logs: recorded histories, every one replayed on every change, kept forever.

Each file under ``tests/fixtures/golden/`` is an event log as the scripts of a
released lessor wrote it (``v<schema>-<date>.msgpack``) with what its fold must
give (``.json``). The set is append-only: ``SHA256SUMS`` pins every file, a
changed or removed one fails here, and a new recording (for a new event type,
say) is a new file made by ``tests/fixtures/make_golden.py``, which never
overwrites. So an upgrade that cannot replay an old history is caught, as
Temporal's replayer tests catch it.
"""

from __future__ import annotations

import hashlib
import json
import os

import msgpack
import pytest

from lessor.core.codec import decode_entry
from lessor.core.events import EVENT_TYPES
from lessor.core.fold import fold

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden")


def _pinned() -> dict[str, str]:
    with open(os.path.join(HERE, "SHA256SUMS")) as f:
        return {name: digest for digest, name in (line.split() for line in f if line.strip())}


def _logs() -> list[str]:
    return sorted(name[:-len(".msgpack")] for name in _pinned() if name.endswith(".msgpack"))


def test_golden_files_are_append_only():
    pinned = _pinned()
    on_disk = {name for name in os.listdir(HERE) if name != "SHA256SUMS"}
    assert on_disk == set(pinned), "every golden file is pinned in SHA256SUMS, and none is ever removed"
    for name, digest in pinned.items():
        with open(os.path.join(HERE, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, f"{name} was changed: record a new file instead"


def _events(log: str, raw: list) -> list:
    """The events of a recorded log: each stream entry as it was written (one event per entry
    in the older recordings; later, a script call's events, some standing for two: decode_entry)."""
    return [e for i, (_, data) in enumerate(raw) for e in decode_entry(data, f"{log}#{i}")]


@pytest.mark.parametrize("log", _logs())
def test_every_golden_log_folds_to_its_recorded_state(log):
    with open(os.path.join(HERE, log + ".msgpack"), "rb") as f:
        raw = msgpack.unpackb(f.read(), raw=False)
    with open(os.path.join(HERE, log + ".json")) as f:
        expected = json.load(f)
    events = _events(log, raw)
    world = fold(events)
    assert sorted({e.TYPE for e in events}) == expected.pop("types")
    assert {ref: r.phase.value for ref, r in world.runs.items()} == expected.pop("runs")
    got = {ref: {"phase": a.phase.value, "attempt": a.attempt, "expirations": a.expirations,
                 "rejected": a.rejected, "error": a.error} for ref, a in world.actions.items()}
    assert got == expected


def test_the_golden_logs_cover_every_event_type():
    covered = set()
    for log in _logs():
        with open(os.path.join(HERE, log + ".json")) as f:
            covered |= set(json.load(f)["types"])
    assert covered == set(EVENT_TYPES), "record a golden log holding the new event type (make_golden.py)"


@pytest.mark.parametrize("log", _logs())
def test_tracebacks_are_optional_and_kept_where_recorded(log):
    """The traceback field (added to action_requeued and action_failed) is optional: a log
    written without it decodes and folds with no traceback on any action; one written with it
    keeps it."""
    with open(os.path.join(HERE, log + ".msgpack"), "rb") as f:
        raw = msgpack.unpackb(f.read(), raw=False)
    events = _events(log, raw)
    tracebacks = [e.traceback for e in events if getattr(e, "traceback", None)]
    if log <= "v1-2026-11-27-5":  # recorded before the field existed (-6 is the first with it)
        assert tracebacks == []
        assert all(a.traceback is None for a in fold(events).actions.values())
    else:  # make_golden.py records one with each of its two failed attempts; the fold keeps the last
        assert len(tracebacks) == 2 and all(t.startswith("Traceback (most recent call last):") for t in tracebacks)
        [failed] = [a for a in fold(events).actions.values() if a.traceback]
        assert failed.phase.value == "failed" and failed.traceback == tracebacks[-1]
