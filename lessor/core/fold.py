"""The pure fold: state = fold(apply, events).

``apply_action(state, event)`` and ``apply_run(state, event)`` are pure: they
check the transition table (core/phases.py), then call the one handler for the
event type. ``World`` folds a whole log into per-run and per-action states; it
is what ``lessor replay`` builds and compares against the live projection.

The projection (``action_projection``/``run_projection``) is the exact set of
hash fields the Lua scripts keep, as strings, so the two can be compared field
by field. A run has no hash of its own: its few own fields are kept on its root
action's (``RUN_ON_ROOT``), and readers derive the rest from a0 (``run_view``).
Lease timing that on-time renewals move without an event (``deadline_ms``) is
left out of it on purpose: like etcd after a leader change,
a rebuilt lease simply gets a fresh ttl.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from lessor.core import events as ev
from lessor.core.effects import Const, Copy, Create, FirstOf, Incr, Soft, Text, template_fields
from lessor.core.events import (
    ACTION_TRANSITIONS, RUN_TRANSITIONS, SCHEDULE_TRANSITIONS, SETTINGS_TRANSITIONS, TRIGGER_TRANSITIONS,
)
from lessor.core.phases import FROM_PAYLOAD, RETIRED, TERMINAL, Phase, SchedulePhase, SettingsPhase, run_phase_of
from lessor.errors import IllegalTransition


@dataclass(frozen=True)
class ActionState:
    """Everything the log says about one action."""

    ns: str
    run: str
    action: str
    task: str
    queue: str
    phase: Phase
    inputs: bytes | None = None
    parent: str | None = None
    parent_token: int = 0
    sys_left: int = 0
    user_left: int = 0
    backoff_ms: int = 0
    priority: int = 0
    timeout_ms: int = 0
    cache_key: str | None = None
    attempt: int = 0
    token: int = 0
    worker: str = ""
    ttl_ms: int = 0
    grace_ms: int = 0
    aborting: bool = False
    result: bytes | None = None
    error: str | None = None
    traceback: str | None = None   # of the failure that last requeued or failed it (None: none recorded)
    ready_at_ms: int = 0
    expirations: int = 0
    rejected: int = 0
    created_ms: int = 0
    updated_ms: int = 0


@dataclass(frozen=True)
class RunState:
    """Everything the log says about one run."""

    ns: str
    run: str
    task: str
    queue: str
    phase: Phase
    inputs: bytes | None = None
    idempotency_key: str | None = None
    aborting: bool = False
    created_ms: int = 0
    updated_ms: int = 0


@dataclass(frozen=True)
class ScheduleState:
    """Everything the log says about one schedule."""

    ns: str
    schedule: str
    task: str
    queue: str
    cron: str
    timezone: str
    catchup: str
    phase: SchedulePhase
    start_ms: int = 0
    inputs: bytes | None = None
    misfire_grace_ms: int = 0
    jitter_ms: int = 0
    retries: int = 0
    last_tick_ms: int = 0
    last_run: str = ""
    ticks: int = 0
    skips: int = 0
    rejected: int = 0
    created_ms: int = 0
    updated_ms: int = 0


@dataclass(frozen=True)
class SettingsState:
    """One settings scope (``ns``: ``*``, ``*/domain`` or ``project/domain``): its local
    document (JSON text) and its version. ``created_ms``: when this version was written."""

    ns: str
    version: int
    document: str
    phase: SettingsPhase
    created_ms: int = 0
    updated_ms: int = 0


def apply_settings(state: SettingsState | None, event: ev.Event) -> SettingsState:
    """Fold one settings event (each replaces the scope's whole document)."""
    phase = state.phase if state is not None else None
    target = SETTINGS_TRANSITIONS.get((phase, event.TYPE))
    if target is None:
        raise IllegalTransition(_subject(event), phase, event.TYPE)
    return _effects(state, event, type(event).SETTINGS_PROJECT, SettingsState, phase=target, updated_ms=event.ts)


@dataclass(frozen=True)
class TriggerState:
    """Everything the log says about one trigger (its phase: active, as a schedule's)."""

    ns: str
    trigger: str
    task: str
    queue: str
    window_ms: int
    phase: SchedulePhase
    fires: int = 0
    last_run: str = ""
    created_ms: int = 0
    updated_ms: int = 0


def apply_trigger(state: TriggerState | None, event: ev.Event) -> TriggerState | None:
    """Fold one trigger event; None when it deletes the trigger."""
    phase = state.phase if state is not None else None
    target = TRIGGER_TRANSITIONS.get((phase, event.TYPE))
    if target is None:
        raise IllegalTransition(_subject(event), phase, event.TYPE)
    if target == RETIRED:
        return None
    return _effects(state, event, type(event).TRIGGER_PROJECT, TriggerState, phase=target, updated_ms=event.ts)


def apply_schedule(state: ScheduleState | None, event: ev.Event) -> ScheduleState | None:
    """Fold one schedule event; None when it deletes the schedule."""
    phase = state.phase if state is not None else None
    target = SCHEDULE_TRANSITIONS.get((phase, event.TYPE))
    if target is None:
        raise IllegalTransition(_subject(event), phase, event.TYPE)
    if target == RETIRED:
        return None
    return _effects(state, event, type(event).SCHEDULE_PROJECT, ScheduleState, phase=target, updated_ms=event.ts)


def subject_kind(event: ev.Event) -> str:
    """What an event is about: ``settings``, ``trigger``, ``schedule``, ``run`` or ``action`` (from its definition)."""
    cls = type(event)
    if cls.SETTINGS_MOVES:
        return "settings"
    if cls.TRIGGER_MOVES:
        return "trigger"
    if cls.SCHEDULE_MOVES:
        return "schedule"
    if cls.RUN_MOVES and (not cls.MOVES or getattr(event, "action", "") == ""):
        return "run"
    return "action"


def _subject(event: ev.Event) -> str:
    if isinstance(event, ev.SettingsChanged):
        return f"settings of {event.ns}"
    if isinstance(event, ev.TriggerEvent):
        return f"{event.ns}/trigger {event.trigger}"
    if isinstance(event, ev.ScheduleEvent):
        return f"{event.ns}/schedule {event.schedule}"
    action = getattr(event, "action", None)
    return f"{event.ns}/{event.run}" + (f"/{action}" if action else "")


def apply_action(state: ActionState | None, event: ev.ActionEvent) -> ActionState:
    """Fold one action event into the action's state; IllegalTransition if the table forbids it."""
    phase = state.phase if state is not None else None
    target = ACTION_TRANSITIONS.get((phase, event.TYPE))
    if target is None:
        raise IllegalTransition(_subject(event), phase, event.TYPE)
    return _effects(state, event, type(event).PROJECT, ActionState, phase=target, updated_ms=event.ts)


def apply_run(state: RunState | None, event: ev.Event) -> RunState | None:
    """Fold one run-level event into the run's state; IllegalTransition if the table forbids it.

    None: the event retires the run (its state, and its actions', are gone).
    """
    phase = state.phase if state is not None else None
    target = RUN_TRANSITIONS.get((phase, event.TYPE))
    if target is None:
        raise IllegalTransition(_subject(event), phase, event.TYPE)
    if target == RETIRED:
        return None
    if target == FROM_PAYLOAD:
        target = Phase(event.phase)
        if target not in TERMINAL:
            raise IllegalTransition(_subject(event), phase, f"{event.TYPE}({event.phase})")
    return _effects(state, event, type(event).RUN_PROJECT, RunState, phase=target, updated_ms=event.ts)


# --- the projection effects of each event (core/effects.py), applied -------------------


def _present(value: object) -> bool:
    return value is not None and value != ""


def _effects(state, event: ev.Event, effects, cls, **changes):
    """Apply an event's declared effects to ``state`` (or create it), with ``changes`` (the
    new phase and time) in the same one copy: replay folds every event through here."""
    for effect in effects:
        match effect:
            case Create(renamed=renamed):
                names = _field_names(cls) - {"phase", "updated_ms", "created_ms"}
                sources = dict(renamed)
                kwargs = {name: getattr(event, sources.get(name, name)) for name in names
                          if hasattr(event, sources.get(name, name))}
                state = cls(**kwargs, phase=changes["phase"], created_ms=event.ts)
            case Copy():
                changes[effect.field] = getattr(event, effect.source)
            case Const(field=name, value=value):
                changes[name] = value
            case Incr(field=name):
                changes[name] = getattr(state, name) + 1
            case FirstOf(field=name, srcs=srcs):
                for src in srcs:
                    if _present(getattr(event, src)):
                        changes[name] = getattr(event, src)
                        break
            case Text(field=name, template=template):
                changes[name] = template.format(**{k: getattr(event, k) for k in template_fields(template)})
            case Soft():
                pass  # server-only lease timing: not part of the fold (see the module docstring)
            case _:
                raise TypeError(f"{event.TYPE}: no fold rule for effect {effect!r}")
    if state is None:
        raise IllegalTransition(_subject(event), None, event.TYPE)
    return _replace(state, changes)


_FIELDS: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def _replace(state, changes: dict):
    """``dataclasses.replace(state, **changes)`` for the flat, frozen, unvalidated states, at a
    fifth of its cost (it re-runs ``__init__`` over every field; replay and compaction spend most
    of their fold here). An unknown field name still fails loudly."""
    cls = type(state)
    if not changes.keys() <= _field_names(cls):
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(changes.keys() - _field_names(cls))}")
    new = object.__new__(cls)
    attrs = new.__dict__
    attrs.update(state.__dict__)
    attrs.update(changes)
    return new


# --- the whole log ------------------------------------------------------------------


def is_run_event(event: ev.Event) -> bool:
    """Run-level events: those that move only a run, and those that move either (abort_requested)
    when they name no action."""
    return subject_kind(event) == "run"


class World:
    """The fold of a whole log: per-run and per-action states, keyed by ref.

    The per-entity functions are pure; this class only keeps the dicts so a
    replay over N events costs O(N), not O(N^2) copies.
    """

    def __init__(self) -> None:
        self.runs: dict[str, RunState] = {}
        self.actions: dict[str, ActionState] = {}
        self.schedules: dict[str, ScheduleState] = {}
        self.settings: dict[str, SettingsState] = {}   # by scope
        self.triggers: dict[str, TriggerState] = {}
        self._run_actions: dict[str, list[str]] = {}   # run ref -> its action refs (to retire them)
        self.events = 0
        self.bad_entries: list = []   # log entries a reader could not decode (skipped, reported)
        self.fell_back: list[str] = []   # partitions whose latest snapshot was unusable, and what stood in

    def apply(self, event: ev.Event) -> None:
        """Fold one event in (IllegalTransition if the log breaks the table)."""
        run_key = f"{event.ns}/{event.run}"
        kind = subject_kind(event)
        if kind == "settings":
            self.settings[event.ns] = apply_settings(self.settings.get(event.ns), event)
        elif kind == "trigger":
            key = f"{event.ns}/{event.trigger}"
            trigger = apply_trigger(self.triggers.get(key), event)
            if trigger is None:
                del self.triggers[key]
            else:
                self.triggers[key] = trigger
        elif kind == "schedule":
            key = f"{event.ns}/{event.schedule}"
            schedule = apply_schedule(self.schedules.get(key), event)
            if schedule is None:
                del self.schedules[key]
            else:
                self.schedules[key] = schedule
        elif kind == "run":
            run = apply_run(self.runs.get(run_key), event)
            if run is None:  # retired: the run and its actions leave the state
                del self.runs[run_key]
                for key in self._run_actions.pop(run_key, ()):
                    self.actions.pop(key, None)
            else:
                self.runs[run_key] = run
        else:
            key = f"{run_key}/{event.action}"
            if key not in self.actions:
                self._run_actions.setdefault(run_key, []).append(key)
            self.actions[key] = apply_action(self.actions.get(key), event)
        self.events += 1

    def merge(self, other: "World") -> None:
        """Take in another partition's states (partitions hold disjoint runs)."""
        self.runs.update(other.runs)
        self.schedules.update(other.schedules)
        self.settings.update(other.settings)
        self.triggers.update(other.triggers)
        for state in other.actions.values():
            self.adopt_action(state)
        self.events += other.events

    def adopt_action(self, state: ActionState) -> None:
        """Take an action's state as it is (a snapshot being loaded)."""
        key = f"{state.ns}/{state.run}/{state.action}"
        if key not in self.actions:
            self._run_actions.setdefault(f"{state.ns}/{state.run}", []).append(key)
        self.actions[key] = state

    def extend(self, events: Iterable[ev.Event]) -> "World":
        for event in events:
            self.apply(event)
        return self


def fold(events: Iterable[ev.Event]) -> World:
    """Fold a sequence of events from nothing."""
    return World().extend(events)


# --- the projection as the scripts store it ------------------------------------------

#: ActionState fields that are not in the Redis projection or are moved without events.
_ACTION_NOT_PROJECTED = {"updated_ms"}


def _as_field(value: object) -> str | bytes:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, bytes):
        return value
    return str(value)


def action_projection(state: ActionState) -> dict[str, str | bytes]:
    """The action hash the scripts keep, as the fold predicts it (strings / bytes)."""
    return {
        f.name: _as_field(getattr(state, f.name))
        for f in dataclasses.fields(state)
        if f.name not in _ACTION_NOT_PROJECTED
    }


#: The store keeps no run hash: a run lives on its root action a0's hash (one key, one HSET
#: fewer per run: a tenth of the server's work per action). What a run has that a0 has not is
#: kept there under these names; its phase is ``run_phase_of`` a0's; its task, queue, inputs
#: and created_ms are a0's (one call creates both, from the same values).
RUN_ON_ROOT = {"idempotency_key": "idempotency_key", "aborting": "run_aborting"}
#: The run's fields a reader takes from a0's as they are.
RUN_FROM_ROOT = ("task", "queue", "inputs", "created_ms")


def run_projection(state: RunState) -> dict[str, str | bytes]:
    """The run's own fields on its root action's hash, as the fold predicts them."""
    return {stored: _as_field(getattr(state, name)) for name, stored in RUN_ON_ROOT.items()}


def run_view(root: dict) -> dict[str, object] | None:
    """A run as a reader sees it, from its root action's hash (HGETALL, bytes or str keys):
    phase, task, queue, inputs (bytes), created_ms, idempotency_key and aborting. None: no
    such run."""
    def get(name: str):
        value = root.get(name, root.get(name.encode()))
        return value.decode() if isinstance(value, bytes) and name != "inputs" else value
    phase = run_phase_of(get("phase"))
    if phase is None:
        return None
    return {"phase": phase.value, "task": get("task") or "", "queue": get("queue") or "",
            "inputs": get("inputs") or None, "created_ms": int(get("created_ms") or 0),
            "idempotency_key": get(RUN_ON_ROOT["idempotency_key"]) or None,
            "aborting": get(RUN_ON_ROOT["aborting"]) == "1"}


def run_view_of(state: RunState) -> dict[str, object]:
    """What ``run_view`` must read for this run, from the fold's own run state."""
    return {"phase": state.phase.value, "task": state.task, "queue": state.queue, "inputs": state.inputs or None,
            "created_ms": state.created_ms, "idempotency_key": state.idempotency_key or None,
            "aborting": state.aborting}


def schedule_projection(state: ScheduleState) -> dict[str, str | bytes]:
    """The schedule hash the scripts keep, as the fold predicts it."""
    return {f.name: _as_field(getattr(state, f.name)) for f in dataclasses.fields(state) if f.name != "updated_ms"}


def settings_projection(state: SettingsState) -> dict[str, str | bytes]:
    """The settings hash the scripts keep, as the fold predicts it."""
    return {f.name: _as_field(getattr(state, f.name)) for f in dataclasses.fields(state) if f.name != "updated_ms"}


def trigger_projection(state: TriggerState) -> dict[str, str | bytes]:
    """The trigger hash the scripts keep, as the fold predicts it."""
    return {f.name: _as_field(getattr(state, f.name)) for f in dataclasses.fields(state) if f.name != "updated_ms"}
