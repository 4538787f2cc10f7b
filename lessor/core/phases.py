"""Phases and the one transition table, defined once as data.

The Python fold (``core/fold.py``) uses these tables directly; the Lua scripts
receive them generated into their prelude (``leasing/scripts.py``), so the
server and the fold cannot disagree about what is legal.
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


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.TIMED_OUT})
ACTIVE = frozenset({Phase.QUEUED, Phase.RUNNING})

#: Marks a run transition whose target phase is carried in the event (run_completed).
FROM_PAYLOAD = "<payload>"

_Q, _R = Phase.QUEUED, Phase.RUNNING

#: (phase before, event type) -> phase after, for actions. ``None`` = does not exist yet.
ACTION_TRANSITIONS: dict[tuple[Phase | None, str], Phase] = {
    (None, "action_created"): _Q,
    (_Q, "action_leased"): _R,
    (_Q, "cache_hit"): Phase.SUCCEEDED,
    (_Q, "action_aborted"): Phase.ABORTED,
    (_Q, "abort_requested"): _Q,
    (_R, "lease_resumed"): _R,
    # lease_expired records the reap; the same script then appends the decision
    # (action_requeued, action_failed or action_aborted).
    (_R, "lease_expired"): _R,
    (_R, "action_requeued"): _Q,
    (_R, "action_succeeded"): Phase.SUCCEEDED,
    (_R, "action_failed"): Phase.FAILED,
    (_R, "action_timed_out"): Phase.TIMED_OUT,
    (_R, "abort_requested"): _R,
    (_R, "action_aborted"): Phase.ABORTED,
    # A refused report never changes state, in any phase: it is recorded evidence.
    **{(phase, "report_rejected"): phase for phase in Phase},
}

#: (phase before, event type) -> phase after, for runs.
RUN_TRANSITIONS: dict[tuple[Phase | None, str], Phase | str] = {
    (None, "run_created"): _R,
    (_R, "abort_requested"): _R,
    (_R, "run_completed"): FROM_PAYLOAD,
}

RUN_EVENT_TYPES = frozenset({"run_created", "run_completed"})
