"""Snapshots: the fold of a partition at a stream id, as bytes (pure; no I/O).

A snapshot holds every run and action state the fold has at that id (retired
runs are gone from it, as they are from the server). ``replay`` starts from
the latest snapshot and folds only the events after it, so its cost follows
live state, not all-time history; compaction can then trim the stream up to
the snapshot.

Wire form: msgpack ``{"v": 1, "id": "<stream id>", "events": n, "runs": [...],
"actions": [...]}``, each state a map of its dataclass fields (phase as text).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from lessor.core.fold import ActionState, RunState, ScheduleState, World
from lessor.core.phases import Phase, SchedulePhase
from lessor.errors import LessorError

SNAPSHOT_VERSION = 1


class SnapshotError(LessorError):
    """A snapshot that does not decode, or comes from an unknown version."""


@dataclass(frozen=True)
class Snapshot:
    """The fold of one partition through stream id ``at`` (inclusive)."""

    at: str
    world: World


def _state(state) -> dict:
    # Every state field is a scalar, so a shallow copy is the whole state; dataclasses.asdict
    # deep-copies each field and cost ~0.3 ms a state (most of a compaction step at 10k runs).
    out = dict(state.__dict__)
    out["phase"] = state.phase.value
    return out


def encode_snapshot(at: str, world: World) -> bytes:
    """The wire form of ``world`` folded through stream id ``at``."""
    return msgpack.packb({"v": SNAPSHOT_VERSION, "id": at, "events": world.events,
                          "runs": [_state(r) for r in world.runs.values()],
                          "actions": [_state(a) for a in world.actions.values()],
                          "schedules": [_state(x) for x in world.schedules.values()]}, use_bin_type=True)


def decode_snapshot(data: bytes, where: str = "?") -> Snapshot:
    """A Snapshot, or SnapshotError naming what was wrong (and what to do)."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise SnapshotError(f"snapshot {where} is not valid msgpack ({exc}): "
                            "delete it and replay from the archive, or take a new one") from None
    if not isinstance(body, dict) or body.get("v") != SNAPSHOT_VERSION:
        version = body.get("v") if isinstance(body, dict) else None
        raise SnapshotError(f"snapshot {where} has version {version!r}; this lessor reads version "
                            f"{SNAPSHOT_VERSION}: upgrade lessor, or take a new snapshot")
    phases, schedule_phases = Phase._value2member_map_, SchedulePhase._value2member_map_
    try:
        world = World()
        for r in body["runs"]:
            run = RunState(**(r | {"phase": phases[r["phase"]]}))
            world.runs[f"{run.ns}/{run.run}"] = run
        for a in body["actions"]:
            action = ActionState(**(a | {"phase": phases[a["phase"]]}))
            world.adopt_action(action)
        for x in body.get("schedules", ()):   # absent in snapshots taken before schedules existed
            schedule = ScheduleState(**(x | {"phase": schedule_phases[x["phase"]]}))
            world.schedules[f"{schedule.ns}/{schedule.schedule}"] = schedule
        world.events = int(body["events"])
        return Snapshot(at=str(body["id"]), world=world)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot {where} is malformed ({exc!r}): delete it and take a new one") from None
