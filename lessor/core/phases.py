"""Phases of actions and runs.

The transitions between them are declared by each event type (``MOVES`` in
``core/events.py``), from which ``ACTION_TRANSITIONS``/``RUN_TRANSITIONS`` are
derived. The Python fold uses those tables directly; the Lua scripts receive
them generated into their prelude (``leasing/scripts.py``), so the server and
the fold cannot disagree about what is legal.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """The phase of an action (and of a run)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    TIMED_OUT = "timed_out"


class SchedulePhase(StrEnum):
    """The phase of a schedule."""

    ACTIVE = "active"
    PAUSED = "paused"


class SettingsPhase(StrEnum):
    """The phase of a settings scope's document (it exists once written; it is never deleted:
    an empty document means the scope inherits everything)."""

    CURRENT = "current"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.TIMED_OUT})

#: Marks a run transition whose target phase is carried in the event (run_completed).
FROM_PAYLOAD = "<payload>"

#: How the transition tables (and the Lua prelude) spell "does not exist yet".
NO_PHASE = "-"

#: Marks a transition that deletes its subject (run_retired: retention removed the run).
RETIRED = "<retired>"


def run_phase_of(root_phase: str | bytes | None) -> Phase | None:
    """A run's phase from its root action a0's (the store keeps no run hash: a run lives on
    a0's). None: a0 does not exist, so neither does the run. Once a0 has ended the run has
    ended the same way (a0's end is the run's: the log's ``run_completed``); before, it runs."""
    if not root_phase:
        return None
    phase = Phase(root_phase.decode() if isinstance(root_phase, bytes) else root_phase)
    return phase if phase in TERMINAL else Phase.RUNNING
