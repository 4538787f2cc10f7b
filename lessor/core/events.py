"""The events of the log: one frozen dataclass per event type.

Every event names its run (``ns`` + ``run``) and carries the server timestamp
``ts`` (ms) at which the script that wrote it ran. Action events also name the
``action``. Lease-related events carry ``attempt``, ``token`` and ``worker``.
User values (inputs, results) are opaque ``bytes`` (msgpack written by the
scheduler): the control plane stores references, not payloads.

Fields with no default are required; the codec refuses an event missing one.
Fields the decoder does not know are kept in ``extra`` (forward compatibility
within one schema version).

Each class is the one definition of its event type. Besides its fields it says

* ``MOVES``: the phase transitions it makes on its action (phase before ->
  phase after; ``None`` = the action does not exist yet), and ``RUN_MOVES`` on
  its run; the transition tables below are derived from these;
* ``PROJECT`` / ``RUN_PROJECT``: what it does to the state (``core/effects.py``),
  read by the Python fold and generated into the Lua ``emit`` handlers (a run's
  handlers write only its own fields, onto its root action's hash:
  ``core/fold.py RUN_ON_ROOT``).

Adding an event type is adding a class here (and to ``EVENT_TYPES``) plus its
tests; CONTRIBUTING.md has the checklist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from lessor.core.effects import Const, Copy, Create, Effect, FirstOf, Incr, Soft, Text
from lessor.core.phases import FROM_PAYLOAD, RETIRED, TERMINAL, Phase, SchedulePhase, SettingsPhase

SCHEMA_VERSION = 1

_Q, _R = Phase.QUEUED, Phase.RUNNING
_ON, _OFF = SchedulePhase.ACTIVE, SchedulePhase.PAUSED
Moves = Mapping[Phase | None, Phase | str]


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events. ``id`` is the stream entry id and ``index`` the event's place in that
    entry (set when read from the log): an entry holds the events of one script call."""

    TYPE: ClassVar[str] = ""
    MOVES: ClassVar[Moves] = {}                 # on its action
    RUN_MOVES: ClassVar[Moves] = {}             # on its run
    SCHEDULE_MOVES: ClassVar[Moves] = {}        # on its schedule
    SETTINGS_MOVES: ClassVar[Moves] = {}        # on its settings scope
    TRIGGER_MOVES: ClassVar[Moves] = {}         # on its trigger
    PROJECT: ClassVar[tuple[Effect, ...]] = ()
    RUN_PROJECT: ClassVar[tuple[Effect, ...]] = ()
    SCHEDULE_PROJECT: ClassVar[tuple[Effect, ...]] = ()
    SETTINGS_PROJECT: ClassVar[tuple[Effect, ...]] = ()
    TRIGGER_PROJECT: ClassVar[tuple[Effect, ...]] = ()
    ns: str
    run: str
    ts: int = 0
    id: str = field(default="", compare=False)
    index: int = field(default=0, compare=False)   # its place in the stream entry (0 = first)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, kw_only=True)
class RunCreated(Event):
    TYPE: ClassVar[str] = "run_created"
    RUN_MOVES = {None: _R}
    RUN_PROJECT = (Create(),)
    task: str
    queue: str
    inputs: bytes | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunCompleted(Event):
    TYPE: ClassVar[str] = "run_completed"
    RUN_MOVES = {_R: FROM_PAYLOAD}   # to the terminal phase it carries
    phase: str


@dataclass(frozen=True, kw_only=True)
class RunRetired(Event):
    """Retention removed a finished run: its state and its actions' state are deleted
    (its events stay in the log until compaction archives and trims them)."""

    TYPE: ClassVar[str] = "run_retired"
    RUN_MOVES = {phase: RETIRED for phase in TERMINAL}
    reason: str
    actions: int = 0


@dataclass(frozen=True, kw_only=True)
class ActionEvent(Event):
    """An event about one action of a run."""

    action: str


@dataclass(frozen=True, kw_only=True)
class LeaseEvent(ActionEvent):
    """An action event tied to one lease: which attempt, which token, which worker."""

    attempt: int
    token: int
    worker: str


@dataclass(frozen=True, kw_only=True)
class ActionCreated(ActionEvent):
    TYPE: ClassVar[str] = "action_created"
    MOVES = {None: _Q}
    PROJECT = (Create(renamed=(("sys_left", "sys_retries"), ("user_left", "user_retries"))),)
    task: str
    queue: str
    inputs: bytes | None = None
    parent: str | None = None
    parent_token: int = 0
    sys_retries: int = 3
    user_retries: int = 0
    backoff_ms: int = 1000
    priority: int = 0
    timeout_ms: int = 0
    cache_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class ActionLeased(LeaseEvent):
    TYPE: ClassVar[str] = "action_leased"
    MOVES = {_Q: _R}
    PROJECT = (Copy("attempt"), Copy("token"), Copy("worker"), Copy("ttl_ms"), Copy("grace_ms"),
               Const("ready_at_ms", 0), Soft("deadline_ms"))
    ttl_ms: int
    grace_ms: int
    deadline_ms: int


@dataclass(frozen=True, kw_only=True)
class LeaseResumed(LeaseEvent):
    TYPE: ClassVar[str] = "lease_resumed"
    MOVES = {_R: _R}
    PROJECT = (Soft("deadline_ms"),)
    late_ms: int
    deadline_ms: int


@dataclass(frozen=True, kw_only=True)
class LeaseExpired(LeaseEvent):
    TYPE: ClassVar[str] = "lease_expired"
    # Records the reap; the same script then appends the decision
    # (action_requeued, action_failed or action_aborted).
    MOVES = {_R: _R}
    PROJECT = (Incr("expirations"),)
    deadline_ms: int
    grace_ms: int


@dataclass(frozen=True, kw_only=True)
class LeaseExtended(LeaseEvent):
    """A live lease given a full ttl from now because the server's epoch (its run_id and
    master_replid) changed: a restart or a failover may have lost its latest renewals
    (etcd's Promote). The epoch itself is not logged: it differs between two servers
    replaying the same history, and the log must not."""

    TYPE: ClassVar[str] = "lease_extended"
    MOVES = {_R: _R}
    PROJECT = (Soft("deadline_ms"),)
    deadline_ms: int


@dataclass(frozen=True, kw_only=True)
class ActionRequeued(ActionEvent):
    TYPE: ClassVar[str] = "action_requeued"
    MOVES = {_R: _Q}
    PROJECT = (Const("worker", ""), Copy("sys_left"), Copy("user_left"), Copy("ready_at_ms"),
               FirstOf("error", ("error",)), Copy("traceback"))
    reason: str
    ready_at_ms: int = 0
    sys_left: int = 0
    user_left: int = 0
    error: str | None = None
    traceback: str | None = None  # the failed attempt's traceback, its tail (limits.MAX_TRACEBACK); absent in old logs


@dataclass(frozen=True, kw_only=True)
class ActionSucceeded(LeaseEvent):
    TYPE: ClassVar[str] = "action_succeeded"
    MOVES = {_R: Phase.SUCCEEDED}
    PROJECT = (Copy("result"),)
    result: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ActionFailed(ActionEvent):
    TYPE: ClassVar[str] = "action_failed"
    MOVES = {_R: Phase.FAILED}
    PROJECT = (FirstOf("error", ("error", "reason")), Copy("traceback"))
    reason: str
    error: str | None = None
    traceback: str | None = None  # as ActionRequeued's
    attempt: int = 0
    token: int = 0
    worker: str = ""


@dataclass(frozen=True, kw_only=True)
class ActionTimedOut(LeaseEvent):
    TYPE: ClassVar[str] = "action_timed_out"
    MOVES = {_R: Phase.TIMED_OUT}
    PROJECT = (Text("error", "attempt {attempt} timed out after {timeout_ms} ms"),)
    timeout_ms: int


@dataclass(frozen=True, kw_only=True)
class AbortRequested(ActionEvent):
    TYPE: ClassVar[str] = "abort_requested"
    # With action "" it is about the run itself (lessor abort), else about one action.
    MOVES = {_Q: _Q, _R: _R}
    RUN_MOVES = {_R: _R}
    PROJECT = RUN_PROJECT = (Const("aborting", True),)
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class ActionAborted(ActionEvent):
    TYPE: ClassVar[str] = "action_aborted"
    MOVES = {_Q: Phase.ABORTED, _R: Phase.ABORTED}
    PROJECT = (Const("aborting", True), FirstOf("error", ("reason",)))
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class CacheHit(ActionEvent):
    TYPE: ClassVar[str] = "cache_hit"
    MOVES = {_Q: Phase.SUCCEEDED}
    PROJECT = (Copy("result"),)
    cache_key: str
    result: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ReportRejected(ActionEvent):
    """A write carrying a token that is not current was refused (never applied)."""

    TYPE: ClassVar[str] = "report_rejected"
    # A refused report never changes state, in any phase: it is recorded evidence.
    MOVES = {phase: phase for phase in Phase}
    PROJECT = (Incr("rejected"),)
    kind: str
    token: int
    worker: str
    current_token: int = 0


# --- schedules: cron ticks, each fired once, under a fenced ticker lease (scheduler/schedules.py) ---


@dataclass(frozen=True, kw_only=True)
class ScheduleEvent(Event):
    """An event about one schedule (``schedule``: its name in the namespace). ``run`` is the
    run a tick started, and empty otherwise."""

    schedule: str
    run: str = ""


@dataclass(frozen=True, kw_only=True)
class ScheduleCreated(ScheduleEvent):
    TYPE: ClassVar[str] = "schedule_created"
    SCHEDULE_MOVES = {None: _ON}
    SCHEDULE_PROJECT = (Create(),)
    task: str
    queue: str
    cron: str
    timezone: str
    catchup: str                 # all | latest | none
    start_ms: int                # ticks after this instant fire (the creation time, or later)
    inputs: bytes | None = None
    misfire_grace_ms: int = 60_000
    jitter_ms: int = 0           # each tick fires up to this much after its time (the same for every ticker)
    retries: int = 0             # user retries of each run a tick starts


@dataclass(frozen=True, kw_only=True)
class ScheduleTicked(ScheduleEvent):
    """A tick fired: the run it started (its id derived from the schedule and the tick)."""

    TYPE: ClassVar[str] = "schedule_ticked"
    SCHEDULE_MOVES = {_ON: _ON}
    SCHEDULE_PROJECT = (Copy("last_tick_ms", "tick_ms"), Copy("last_run", "run"), Incr("ticks"))
    tick_ms: int
    token: int
    worker: str


@dataclass(frozen=True, kw_only=True)
class ScheduleSkipped(ScheduleEvent):
    """Ticks the catch-up policy did not fire (after downtime): ``count`` of them, through ``to_ms``."""

    TYPE: ClassVar[str] = "schedule_skipped"
    SCHEDULE_MOVES = {_ON: _ON}
    SCHEDULE_PROJECT = (Copy("last_tick_ms", "to_ms"), Incr("skips"))
    from_ms: int
    to_ms: int
    count: int
    reason: str
    token: int
    worker: str


@dataclass(frozen=True, kw_only=True)
class SchedulePaused(ScheduleEvent):
    TYPE: ClassVar[str] = "schedule_paused"
    SCHEDULE_MOVES = {_ON: _OFF}
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class ScheduleResumed(ScheduleEvent):
    """Resumed: ticks from ``from_ms`` on fire again (those of the pause never do)."""

    TYPE: ClassVar[str] = "schedule_resumed"
    SCHEDULE_MOVES = {_OFF: _ON}
    SCHEDULE_PROJECT = (Copy("last_tick_ms", "from_ms"),)
    from_ms: int


@dataclass(frozen=True, kw_only=True)
class ScheduleDeleted(ScheduleEvent):
    TYPE: ClassVar[str] = "schedule_deleted"
    SCHEDULE_MOVES = {_ON: RETIRED, _OFF: RETIRED}


@dataclass(frozen=True, kw_only=True)
class ScheduleTickRejected(ScheduleEvent):
    """A tick written with a ticker token that is not current (a deposed ticker): refused."""

    TYPE: ClassVar[str] = "schedule_tick_rejected"
    SCHEDULE_MOVES = {_ON: _ON, _OFF: _OFF}
    SCHEDULE_PROJECT = (Incr("rejected"),)
    tick_ms: int
    token: int
    worker: str
    current_token: int = 0


# --- settings: one versioned document per scope (scheduler/settings.py) ---


@dataclass(frozen=True, kw_only=True)
class SettingsChanged(Event):
    """A scope's local settings were replaced by ``document`` (JSON text of key -> value), as
    version ``version``. ``ns`` is the scope: ``*`` (org), ``*/domain`` or ``project/domain``.
    Each write replaces the whole document, so the event alone says what the scope holds."""

    TYPE: ClassVar[str] = "settings_changed"
    SETTINGS_MOVES = {None: SettingsPhase.CURRENT, SettingsPhase.CURRENT: SettingsPhase.CURRENT}
    SETTINGS_PROJECT = (Create(),)
    run: str = ""
    version: int
    document: str
    previous: int = 0            # the version the writer read (version - 1)


# --- triggers: a run per dedup key and window, started by an external event (scheduler/triggers.py) ---


@dataclass(frozen=True, kw_only=True)
class TriggerEvent(Event):
    """An event about one trigger (``trigger``: its name in the namespace). ``run`` is the run a
    fire started, and empty otherwise."""

    trigger: str
    run: str = ""


@dataclass(frozen=True, kw_only=True)
class TriggerCreated(TriggerEvent):
    TYPE: ClassVar[str] = "trigger_created"
    TRIGGER_MOVES = {None: _ON}
    TRIGGER_PROJECT = (Create(),)
    task: str
    queue: str
    window_ms: int               # fires with one dedup key within this long of its first start one run


@dataclass(frozen=True, kw_only=True)
class TriggerFired(TriggerEvent):
    """A fire started a run (its id derived from the trigger, the dedup key and the window).
    A fire deduplicated against it is answered with this run and not logged."""

    TYPE: ClassVar[str] = "trigger_fired"
    TRIGGER_MOVES = {_ON: _ON}
    TRIGGER_PROJECT = (Copy("last_run", "run"), Incr("fires"))
    dedup_key: str
    until_ms: int                # fires with this key before then are answered with this run


@dataclass(frozen=True, kw_only=True)
class TriggerDeleted(TriggerEvent):
    TYPE: ClassVar[str] = "trigger_deleted"
    TRIGGER_MOVES = {_ON: RETIRED}


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        RunCreated, RunCompleted, ActionCreated, ActionLeased, LeaseResumed, LeaseExpired,
        LeaseExtended, ActionRequeued, ActionSucceeded, ActionFailed, ActionTimedOut, AbortRequested,
        ActionAborted, CacheHit, ReportRejected, RunRetired,
        ScheduleCreated, ScheduleTicked, ScheduleSkipped, SchedulePaused, ScheduleResumed, ScheduleDeleted,
        ScheduleTickRejected, SettingsChanged, TriggerCreated, TriggerFired, TriggerDeleted,
    )
}


def _table(moves_of: str) -> dict[tuple[Phase | None, str], Phase | str]:
    return {(before, cls.TYPE): after for cls in EVENT_TYPES.values()
            for before, after in getattr(cls, moves_of).items()}


#: (phase before, event type) -> phase after, for actions. ``None`` = does not exist yet.
ACTION_TRANSITIONS: dict[tuple[Phase | None, str], Phase] = _table("MOVES")  # type: ignore[assignment]

#: (phase before, event type) -> phase after, for runs (FROM_PAYLOAD: the phase the event carries).
RUN_TRANSITIONS: dict[tuple[Phase | None, str], Phase | str] = _table("RUN_MOVES")

#: (phase before, event type) -> phase after, for schedules (RETIRED: deleted).
SCHEDULE_TRANSITIONS: dict[tuple[SchedulePhase | None, str], SchedulePhase | str] = _table("SCHEDULE_MOVES")

#: (phase before, event type) -> phase after, for settings scopes.
SETTINGS_TRANSITIONS: dict[tuple[SettingsPhase | None, str], SettingsPhase | str] = _table("SETTINGS_MOVES")

#: (phase before, event type) -> phase after, for triggers (RETIRED: deleted).
TRIGGER_TRANSITIONS: dict[tuple[SchedulePhase | None, str], SchedulePhase | str] = _table("TRIGGER_MOVES")
