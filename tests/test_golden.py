"""Golden event log: a recorded history (every event type) folded on every change.

If the codec or the fold changes meaning, this fails. Regenerate deliberately
with tests/fixtures/make_golden.py and review the diff of golden.json.
"""

from __future__ import annotations

import json
import os

import msgpack

from lessor.core.codec import decode
from lessor.core.events import EVENT_TYPES
from lessor.core.fold import fold

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def test_the_golden_log_folds_to_the_recorded_state():
    with open(os.path.join(HERE, "golden.msgpack"), "rb") as f:
        raw = msgpack.unpackb(f.read(), raw=False)
    with open(os.path.join(HERE, "golden.json")) as f:
        expected = json.load(f)
    events = [decode(data, f"golden#{i}") for i, (_, data) in enumerate(raw)]
    world = fold(events)
    assert sorted({e.TYPE for e in events}) == expected.pop("types") == sorted(EVENT_TYPES)
    assert {ref: r.phase.value for ref, r in world.runs.items()} == expected.pop("runs")
    got = {ref: {"phase": a.phase.value, "attempt": a.attempt, "expirations": a.expirations,
                 "rejected": a.rejected, "error": a.error} for ref, a in world.actions.items()}
    assert got == expected
