"""Property tests of the pure core: codec, transition table, fold."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lessor.core import codec
from lessor.core import events as ev
from lessor.core.events import ACTION_TRANSITIONS, RUN_TRANSITIONS
from lessor.core.fold import World, apply_action, apply_run, fold
from lessor.core.phases import TERMINAL, Phase
from lessor.errors import EventDecodeError, IllegalTransition, UnknownEventType, UnknownSchemaVersion

NS, RUN = "proj/development", "r1"

small_int = st.integers(min_value=0, max_value=2**53)
text = st.text(min_size=1, max_size=12)
blob = st.one_of(st.none(), st.binary(max_size=40))


def _strategy_for(cls: type[ev.Event]) -> st.SearchStrategy:
    """Any well-formed event of type ``cls``."""
    kinds = {int: small_int, str: text, bytes: blob}
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name in ("id", "index", "extra"):
            continue
        hint = codec.field_types(cls)[f.name][0]
        base = kinds[hint[0]]
        if f.name == "phase":
            base = st.sampled_from(sorted(TERMINAL))
        fields[f.name] = base if f.default is dataclasses.MISSING else st.one_of(st.just(f.default), base)
    return st.builds(cls, **fields)


any_event = st.one_of(*[_strategy_for(c) for c in ev.EVENT_TYPES.values()])


def test_every_event_type_moves_something_and_is_projected_where_it_moves():
    for cls in ev.EVENT_TYPES.values():
        assert cls.MOVES or cls.RUN_MOVES or cls.SCHEDULE_MOVES or cls.SETTINGS_MOVES or cls.TRIGGER_MOVES, \
            f"{cls.TYPE} declares no transition"
        # An event that creates its subject must say how (Create), and only such an event may.
        for moves, project in ((cls.MOVES, cls.PROJECT), (cls.RUN_MOVES, cls.RUN_PROJECT),
                               (cls.SCHEDULE_MOVES, cls.SCHEDULE_PROJECT), (cls.SETTINGS_MOVES, cls.SETTINGS_PROJECT),
                               (cls.TRIGGER_MOVES, cls.TRIGGER_PROJECT)):
            creates = None in moves
            assert creates == any(type(e).__name__ == "Create" for e in project), cls.TYPE


def test_transition_table_targets_are_phases_and_terminals_only_reject():
    for (phase, etype), target in ACTION_TRANSITIONS.items():
        assert etype in ev.EVENT_TYPES
        assert isinstance(target, Phase)
        if phase in TERMINAL:
            assert etype == "report_rejected" and target == phase, "terminal phases have no way out"
    assert all(etype in ev.EVENT_TYPES for _, etype in RUN_TRANSITIONS)


@given(any_event)
def test_codec_round_trips(event):
    assert codec.decode(codec.encode(event)) == event


@given(st.binary(max_size=200))
def test_fuzzed_bytes_only_raise_the_named_decode_error(data):
    try:
        event = codec.decode(data)
    except EventDecodeError:
        return
    assert isinstance(event, ev.Event)  # a valid event by chance is fine, but complete


@given(any_event, st.sampled_from(["v", "type", "ns", "run"]))
def test_missing_or_broken_header_is_refused(event, field):
    if field == "run" and isinstance(event, ev.ScheduleEvent):
        field = "schedule"   # a schedule event names its schedule; its run is optional
    if field == "run" and isinstance(event, ev.TriggerEvent):
        field = "trigger"    # likewise a trigger event
    if field == "run" and isinstance(event, ev.SettingsChanged):
        field = "document"   # a settings event names its scope (ns) and document; it has no run
    body = msgpack.unpackb(codec.encode(event), raw=False)
    del body[field]
    with pytest.raises(EventDecodeError):
        codec.decode(msgpack.packb(body, use_bin_type=True))


def _packed(*bodies: dict) -> bytes:
    return b"".join(msgpack.packb(body, use_bin_type=True) for body in bodies)


def test_a_root_actions_event_of_version_2_also_stands_for_its_runs_event():
    created = {"v": 2, "type": "action_created", "ns": NS, "run": RUN, "action": "a0", "task": "t",
               "queue": "q", "inputs": b"in", "ts": 5, "idempotency_key": "k1"}
    done = {"v": 2, "type": "action_succeeded", "ns": NS, "run": RUN, "action": "a0", "attempt": 1,
            "token": 7, "worker": "w", "ts": 9, "run_phase": "succeeded"}
    leased = {"v": 1, "type": "action_leased", "ns": NS, "run": RUN, "action": "a0", "attempt": 1, "token": 7,
              "worker": "w", "ttl_ms": 10, "grace_ms": 0, "deadline_ms": 16, "ts": 6}
    events = codec.decode_entry(_packed(created, leased, done), "5-0")
    assert [(e.TYPE, e.id, e.index) for e in events] == [
        ("run_created", "5-0", 0), ("action_created", "5-0", 1), ("action_leased", "5-0", 2),
        ("action_succeeded", "5-0", 3), ("run_completed", "5-0", 4)]
    run_created, action_created, _, succeeded, run_completed = events
    assert run_created == ev.RunCreated(ns=NS, run=RUN, task="t", queue="q", inputs=b"in", idempotency_key="k1", ts=5)
    assert run_completed == ev.RunCompleted(ns=NS, run=RUN, phase="succeeded", ts=9)
    assert action_created.extra == {} and succeeded.extra == {}   # the run's fields are not left on a0's events
    # The same history written with explicit run events (version 1) folds to the same state.
    implied, explicit = fold(events), fold(codec.decode_entry(b"".join(codec.encode(e) for e in events)))
    assert (implied.runs, implied.actions) == (explicit.runs, explicit.actions)
    assert implied.runs[f"{NS}/{RUN}"].phase is Phase.SUCCEEDED


def test_version_2_is_refused_where_it_cannot_stand_for_a_run():
    child = {"v": 2, "type": "action_created", "ns": NS, "run": RUN, "action": "a1", "task": "t", "queue": "q"}
    with pytest.raises(EventDecodeError, match="only a root action"):
        codec.decode_entry(_packed(child))
    no_phase = {"v": 2, "type": "action_failed", "ns": NS, "run": RUN, "action": "a0", "reason": "user_error"}
    with pytest.raises(EventDecodeError, match="no run_phase"):
        codec.decode_entry(_packed(no_phase))
    with pytest.raises(EventDecodeError, match="decode_entry"):   # one map, two events: not for decode()
        codec.decode(_packed(dict(child, action="a0")))


def test_unknown_version_and_type_are_named():
    body = {"v": 3, "type": "run_created", "ns": NS, "run": RUN, "task": "t", "queue": "q"}
    with pytest.raises(UnknownSchemaVersion, match="schema version 3"):
        codec.decode(msgpack.packb(body))
    body.update(v=1, type="run_exploded")
    with pytest.raises(UnknownEventType, match="run_exploded"):
        codec.decode(msgpack.packb(body))


def test_wrong_field_type_is_refused_and_unknown_fields_are_kept():
    body = {"v": 1, "type": "action_leased", "ns": NS, "run": RUN, "action": "a0", "attempt": "1",
            "token": 5, "worker": "w", "ttl_ms": 1, "grace_ms": 0, "deadline_ms": 9}
    with pytest.raises(EventDecodeError, match="'attempt' must be int"):
        codec.decode(msgpack.packb(body))
    body.update(attempt=1, future_field=[1, 2])
    decoded = codec.decode(msgpack.packb(body))
    assert decoded.extra == {"future_field": [1, 2]}
    assert codec.decode(codec.encode(decoded)).extra == {"future_field": [1, 2]}


# --- legal sequences, generated from the table itself ------------------------------


def _event(etype: str, i: int, action: str = "a1") -> ev.Event:
    """A well-formed event of any type, built from its definition (required fields only)."""
    cls = ev.EVENT_TYPES[etype]
    sample = {int: i, str: "w", bytes: b"ok"}
    fields = {name: sample[kinds[0]] for name, (kinds, required) in codec.field_types(cls).items() if required}
    fields.update(ns=NS, run=RUN, ts=i)
    if "action" in fields:
        fields["action"] = action
    if "phase" in fields:
        fields["phase"] = "succeeded"
    return cls(**fields)


@st.composite
def legal_action_history(draw):
    """A random walk through ACTION_TRANSITIONS from nothing."""
    phase, events = None, []
    for i in range(draw(st.integers(1, 30))):
        choices = sorted(etype for (p, etype) in ACTION_TRANSITIONS if p == phase)
        if not choices:
            break
        etype = draw(st.sampled_from(choices))
        events.append(_event(etype, i))
        phase = ACTION_TRANSITIONS[(phase, etype)]
    return events


@given(legal_action_history())
def test_any_legal_sequence_folds_and_is_deterministic(events):
    state = None
    for e in events:
        state = apply_action(state, e)
    again = fold(events)
    assert again.actions[f"{NS}/{RUN}/a1"] == state
    assert fold(events).actions == again.actions


@given(legal_action_history(), st.sampled_from(sorted(ev.EVENT_TYPES)))
def test_illegal_transitions_are_refused(events, etype):
    if etype in ("run_created", "run_completed"):
        return
    state = None
    for e in events:
        state = apply_action(state, e)
    phase = state.phase if state else None
    if (phase, etype) in ACTION_TRANSITIONS:
        return
    with pytest.raises(IllegalTransition) as info:
        apply_action(state, _event(etype, 99))
    assert info.value.event_type == etype


def test_run_completion_takes_its_phase_from_the_event_and_only_terminal_ones():
    run = apply_run(None, ev.RunCreated(ns=NS, run=RUN, task="t", queue="q"))
    assert run.phase is Phase.RUNNING
    done = apply_run(run, ev.RunCompleted(ns=NS, run=RUN, phase="failed"))
    assert done.phase is Phase.FAILED
    with pytest.raises(IllegalTransition):
        apply_run(run, ev.RunCompleted(ns=NS, run=RUN, phase="running"))
    with pytest.raises(IllegalTransition):
        apply_run(done, ev.RunCompleted(ns=NS, run=RUN, phase="failed"))


def test_world_keys_runs_and_actions_apart():
    world = World().extend([
        ev.RunCreated(ns=NS, run=RUN, task="t", queue="q"),
        _event("action_created", 1, "a0"),
        ev.AbortRequested(ns=NS, run=RUN, action=""),
    ])
    assert world.runs[f"{NS}/{RUN}"].aborting
    assert not world.actions[f"{NS}/{RUN}/a0"].aborting
