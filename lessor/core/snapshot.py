"""Snapshots: the fold of a partition at a stream id, as bytes (pure; no I/O).

A snapshot holds every run and action state the fold has at that id (retired
runs are gone from it, as they are from the server). ``replay`` starts from
the latest snapshot and folds only the events after it, so its cost follows
live state, not all-time history; compaction can then trim the stream up to
the snapshot.

Wire form, version 2: msgpack ``{"v": 2, "id": "<stream id>", "z": <zlib of the
version 1 body>}``. Version 1 (still read) is the body itself: msgpack ``{"v": 1,
"id": "<stream id>", "events": n, "runs": [...], "actions": [...], "schedules":
[...]}``, each state a map of its dataclass fields (phase as text). The maps
repeat their keys in every state, so zlib (level 1) shrinks a snapshot about 8x:
it is held in the server twice (the latest and the previous) and written to its
AOF at every compaction step.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import msgpack

from lessor.core.fold import ActionState, RunState, ScheduleState, SettingsState, TriggerState, World
from lessor.core.phases import Phase, SchedulePhase, SettingsPhase
from lessor.errors import LessorError

SNAPSHOT_VERSION = 2
READABLE_VERSIONS = (1, 2)


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
    """The wire form of ``world`` folded through stream id ``at`` (version 2)."""
    body = msgpack.packb({"v": 1, "id": at, "events": world.events,
                          "runs": [_state(r) for r in world.runs.values()],
                          "actions": [_state(a) for a in world.actions.values()],
                          "schedules": [_state(x) for x in world.schedules.values()],
                          "settings": [_state(x) for x in world.settings.values()],
                          "triggers": [_state(x) for x in world.triggers.values()]}, use_bin_type=True)
    return msgpack.packb({"v": SNAPSHOT_VERSION, "id": at, "z": zlib.compress(body, 1)}, use_bin_type=True)


def _unpack(data: bytes, where: str) -> dict:
    """The version 1 body of a snapshot of either version (SnapshotError if it is neither)."""
    try:
        body = msgpack.unpackb(data, raw=False)
        if isinstance(body, dict) and body.get("v") == 2 and isinstance(body.get("z"), bytes):
            body = msgpack.unpackb(zlib.decompress(body["z"]), raw=False)
            if not isinstance(body, dict) or body.get("v") != 1:
                raise ValueError("its compressed body is not a version 1 body")
    except Exception as exc:  # msgpack and zlib raise several unrelated types on garbage
        raise SnapshotError(f"snapshot {where} is not valid msgpack ({exc}): "
                            "delete it and replay from the archive, or take a new one") from None
    if not isinstance(body, dict) or body.get("v") not in READABLE_VERSIONS:
        version = body.get("v") if isinstance(body, dict) else None
        raise SnapshotError(f"snapshot {where} has version {version!r}; this lessor reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade lessor, or take a new snapshot")
    return body


def decode_snapshot(data: bytes, where: str = "?") -> Snapshot:
    """A Snapshot, or SnapshotError naming what was wrong (and what to do)."""
    body = _unpack(data, where)
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
        for x in body.get("settings", ()):   # absent in snapshots taken before settings existed
            scope = SettingsState(**(x | {"phase": SettingsPhase(x["phase"])}))
            world.settings[scope.ns] = scope
        for x in body.get("triggers", ()):   # absent in snapshots taken before triggers existed
            trigger = TriggerState(**(x | {"phase": SchedulePhase(x["phase"])}))
            world.triggers[f"{trigger.ns}/{trigger.trigger}"] = trigger
        world.events = int(body["events"])
        return Snapshot(at=str(body["id"]), world=world)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot {where} is malformed ({exc!r}): delete it and take a new one") from None
