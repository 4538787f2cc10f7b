"""Lua generated from the Python definitions, for the scripts' prelude.

Nothing here is written by hand twice. From ``core``:

* the transition tables and the terminal set (``core/events.py`` MOVES);
* the ``emit`` handlers, one per event type, from its declared projection
  effects (``core/effects.py``), and the field types ``emit`` checks before it
  appends anything;
* the hash fields that read as text when missing (from the state classes);
* the key schema (``core/keyspace.py``) as constants and functions;
* the markers ``'<payload>'`` and ``'-'``, and the reply codes (``leasing/codes.py``).

``leasing/scripts.py`` splices these into ``lua/_prelude.lua``;
``tests/test_schema.py`` checks each reading against the fold.
"""

from __future__ import annotations

import dataclasses
import typing

from lessor.core import events as ev
from lessor.core.codec import field_types
from lessor.core.effects import Const, Copy, Create, FirstOf, Incr, Soft, Text, template_fields
from lessor.core.events import (
    ACTION_TRANSITIONS, EVENT_TYPES, RUN_TRANSITIONS, SCHEDULE_TRANSITIONS, SETTINGS_TRANSITIONS, TRIGGER_TRANSITIONS,
)
from lessor.core.fold import RUN_ON_ROOT, ActionState, RunState, ScheduleState, SettingsState, TriggerState
from lessor.core.keyspace import HOT, KEY_FAMILIES, PARTITION_KEYS
from lessor.core.phases import FROM_PAYLOAD, NO_PHASE, RETIRED, TERMINAL
from lessor.core.settings import SETTINGS, UNSET
from lessor.leasing.codes import Code, SubmitCode

#: Hash fields that only the scripts keep (not in the fold's state), read as text when missing.
_SERVER_TEXT_FIELDS = ("_ended",)


def _quote(value: object) -> str:
    if value is True:
        return "'1'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"'{value}'"
    text = str(value)
    if "'" in text or "\\" in text or "\n" in text:
        raise ValueError(f"cannot generate a Lua literal for {text!r}")
    return f"'{text}'"


def _transitions(name: str, table: dict) -> str:
    """``name[phase][event type] = next phase``: nested, so a lookup builds no 'phase|type' string."""
    by_phase: dict[str, list[str]] = {}
    for (phase, etype), target in sorted(table.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        by_phase.setdefault(phase or NO_PHASE, []).append(f'{etype} = "{target}"')
    rows = [f'  ["{phase}"] = {{{", ".join(moves)}}},' for phase, moves in by_phase.items()]
    return f"local {name} = {{\n" + "\n".join(rows) + "\n}"


def _text_fields() -> list[str]:
    names = set(_SERVER_TEXT_FIELDS)
    for cls in (ActionState, RunState, ScheduleState, SettingsState, TriggerState):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            if f.name != "phase" and any(k in (str, bytes) for k in kinds):
                names.add(f.name)
    return sorted(names)


def _kind(cls: type[ev.Event], name: str) -> str:
    kinds = field_types(cls)[name][0]
    return "i" if int in kinds else "b" if bytes in kinds else "s"


def _subjects() -> str:
    """SUBJECT[type]: 'settings', 'trigger', 'schedule', 'run', 'both' (its run when it names no action, else its
    action) or 'action': what each event is about, as core/fold.py subject_kind() decides."""
    def kind(c) -> str:
        if c.SETTINGS_MOVES:
            return "settings"
        if c.TRIGGER_MOVES:
            return "trigger"
        if c.SCHEDULE_MOVES:
            return "schedule"
        if c.RUN_MOVES:
            return "both" if c.MOVES else "run"
        return "action"
    rows = [f"{t} = '{kind(c)}'" for t, c in sorted(EVENT_TYPES.items())]
    return "local SUBJECT = { " + ", ".join(rows) + " }"


def _field_check(etype: str, name: str, kind: str, required: bool) -> str:
    # Types are told apart without a type() call per field (a C call that interns its answer:
    # a fifth of the check's cost, callgrind): a number is the only value that adding 0 leaves
    # equal to itself (a numeric string becomes a number, unequal), and a string the only one
    # that concatenating '' leaves equal (a number becomes a string). Any other value raises
    # there; bad_event runs the check protected and names that too.
    missing = f"return '{etype} needs field {name}'"
    if kind == "i":
        wrong = ("v + 0 ~= v or v % 1 ~= 0 or v > 9007199254740991 or v < -9007199254740991",
                 f"return '{etype}: field {name} must be an integer, got ' .. tostring(v)")
    else:
        wrong = ("v .. '' ~= v", f"return '{etype}: field {name} must be a string, got ' .. type(v)")
    if not required:
        return f"  v = ev.{name} if v ~= nil and ({wrong[0]}) then {wrong[1]} end"
    return f"  v = ev.{name} if v == nil then {missing} elseif {wrong[0]} then {wrong[1]} end"


def _event_fields() -> str:
    """EVF[type]: a function of an event that returns why its fields do not fit its
    definition (a missing required field, an int that is not an exact integer, a text
    that is not a string), or nil. Generated per type: the FUNCTION library builds them
    once per load, and an unrolled check costs a fraction of a loop over a spec
    (measured: a third of a submit's server CPU went to parsing spec strings)."""
    rows = []
    for etype, cls in sorted(EVENT_TYPES.items()):
        checks = [_field_check(etype, name, _kind(cls, name), req)
                  for name, (_, req) in field_types(cls).items() if name != "ts"]
        rows.append(f"EVF.{etype} = function(ev)\n  local v\n" + "\n".join(checks) + "\nend")
    return "local EVF = {}\n" + "\n".join(rows)


def _setting_kinds() -> str:
    """SETTING_KINDS[key] = s | i | n | m, and UNSET: what settings.lua checks a document against
    (core/settings.py SETTINGS)."""
    rows = ", ".join(f"['{key}'] = '{spec.lua_kind}'" for key, spec in SETTINGS.items())
    return f"local SETTING_KINDS, UNSET = {{ {rows} }}, '{UNSET}'"


# The handlers are straight-line code, one statement per field, specialised by the field's kind:
# emit() has checked the event against its definition first (bad_event), so an 'i' field is an
# exact integer within 2^53 ('%d' prints it exactly, as S() would) and any other is a string.
# (A vararg helper called per field was an eighth of a submit's script time: os.clock profile.)
# (v + 0: a -0 from tonumber('-0') becomes 0, which every server prints as '0'; Redis 7.0's
# '%.17g' would print '-0', and the event says 0.)
_INT = "(INT_TEXT and fmt('%d', v) or v + 0)"


def _set(name: str, value: str) -> str:
    return f"n = n + 2; f[n - 1], f[n] = '{name}', {value}"


def _stored(cls: type[ev.Event], src: str, name: str) -> str:
    """Store ``ev.src`` as ``name`` unless it is at its default (nil, '' or 0): what Create keeps."""
    if _kind(cls, src) == "i":
        return f"v = ev.{src} if v ~= nil and v ~= 0 then {_set(name, _INT)} end"
    return f"v = ev.{src} if v ~= nil and v ~= '' then {_set(name, 'v')} end"


def _put(cls: type[ev.Event], src: str, name: str) -> str:
    """Store ``ev.src`` as ``name`` always, nil as '' (what put() does)."""
    if _kind(cls, src) == "i":
        return f"v = ev.{src} if v == nil then v = '' else v = {_INT} end {_set(name, 'v')}"
    return f"v = ev.{src} if v == nil then v = '' end {_set(name, 'v')}"


def _create(cls: type[ev.Event], state_cls: type, effect: Create) -> list[str]:
    sources = dict(effect.renamed)
    event_fields = field_types(cls)
    lines = []
    for f in dataclasses.fields(state_cls):
        src = sources.get(f.name, f.name)
        if f.name not in ("phase", "updated_ms", "created_ms") and src in event_fields:
            lines.append(_stored(cls, src, f.name))
    # Fields at their default ('' or 0) are not stored: readers take a missing field as its default.
    return lines + [_stored(cls, "ts", "created_ms")]


def _handler(cls: type[ev.Event], effects: tuple, state_cls: type) -> str:
    lines: list[str] = ["local n, v = #f"]
    for effect in effects:
        match effect:
            case Create():
                lines += _create(cls, state_cls, effect)
            case Copy() | Soft():
                lines.append(_put(cls, effect.source, effect.field))
            case Const(field=name, value=value):
                lines.append(_set(name, _quote(value)))
            case Incr(field=name):
                lines.append(f"redis.call('HINCRBY', k, '{name}', 1)")
            case FirstOf(field=name, srcs=srcs):
                value = f"first({', '.join('ev.' + s for s in srcs)})"
                lines.append(f"v = {value} if v ~= nil then put(f, '{name}', v); n = n + 2 end")
            case Text(field=name, template=template):
                parts, rest = [], template
                for src in template_fields(template):
                    before, rest = rest.split("{" + src + "}", 1)
                    if before:
                        parts.append(_quote(before))
                    parts.append(f"S(ev.{src})" if _kind(cls, src) == "i" else f"ev.{src}")
                if rest:
                    parts.append(_quote(rest))
                lines.append(_set(name, " .. ".join(parts)))
            case _:
                raise TypeError(f"{cls.TYPE}: no Lua rule for effect {effect!r}")
    return "function(k, ev, f)\n" + "".join(f"  {line}\n" for line in lines) + "  return f\nend"


def _run_handler(cls: type[ev.Event]) -> str:
    """A run event's handler: the run lives on its root action's hash (core/fold.py RUN_ON_ROOT),
    so only the run's own fields are written there, under their names on a0's hash; its phase is
    a0's, and the fields it shares with a0 are a0's already."""
    lines: list[str] = ["local n, v = #f"]
    event_fields = field_types(cls)
    for effect in cls.RUN_PROJECT:
        match effect:
            case Create():
                sources = dict(effect.renamed)
                lines += [_stored(cls, sources.get(name, name), stored) for name, stored in RUN_ON_ROOT.items()
                          if sources.get(name, name) in event_fields]
            case Const(field=name, value=value) if name in RUN_ON_ROOT:
                lines.append(_set(RUN_ON_ROOT[name], _quote(value)))
            case _:
                raise TypeError(f"{cls.TYPE}: no rule for run effect {effect!r} on the root action's hash")
    return "function(k, ev, f)\n" + "".join(f"  {line}\n" for line in lines) + "  return f\nend"


def _handlers() -> str:
    out = []
    for etype, cls in sorted(EVENT_TYPES.items()):
        if cls.MOVES:
            out.append(f"ON.{etype} = {_handler(cls, cls.PROJECT, ActionState)}")
        if cls.RUN_MOVES:
            out.append(f"ON_RUN.{etype} = {_run_handler(cls)}")
        if cls.SCHEDULE_MOVES:
            out.append(f"ON_SCHEDULE.{etype} = {_handler(cls, cls.SCHEDULE_PROJECT, ScheduleState)}")
        if cls.TRIGGER_MOVES:
            out.append(f"ON_TRIGGER.{etype} = {_handler(cls, cls.TRIGGER_PROJECT, TriggerState)}")
        if cls.SETTINGS_MOVES:
            out.append(f"ON_SETTINGS.{etype} = {_handler(cls, cls.SETTINGS_PROJECT, SettingsState)}")
    return "\n".join(out)


def _keys(hot: bool) -> str:
    # The partition's key names are declared at the top (every call sets them: bind_block);
    # the families are functions of PREFIX, hot ones at the top, the rest in the library.
    lines = [f"local {', '.join(k.lua for k in PARTITION_KEYS)}"] if hot else []
    for fam in KEY_FAMILIES:
        if (fam.lua in HOT) == hot:
            body = " .. ':' .. ".join(fam.args)
            lines.append(f"local function {fam.lua}({', '.join(fam.args)}) return PREFIX .. '{fam.suffix}' .. {body} end")
    return "\n".join(lines)


def hot_block() -> str:
    """Top of the prelude (runs on every call, the renewal hot path too): codes, hot keys."""
    codes = [(c.name, c.value) for c in Code] + [(c.name, c.value) for c in SubmitCode]
    return "\n".join([
        f"local {', '.join(n for n, _ in codes)} = {', '.join(str(v) for _, v in codes)}",
        _keys(hot=True),
    ])


def bind_block() -> str:
    """Inside ``enter_call``: the partition's key names from this call's PREFIX."""
    return "\n".join(f"{k.lua} = PREFIX .. '{k.suffix}'" for k in PARTITION_KEYS)


def lib_block() -> str:
    """Inside the prelude's lazily built library: tables, keys, field specs, handlers."""
    terminal = ", ".join(f"{p} = true" for p in sorted(TERMINAL))
    text = ", ".join(f"{name} = true" for name in _text_fields())
    return "\n".join([
        _transitions("ACTION_T", ACTION_TRANSITIONS),
        _transitions("RUN_T", RUN_TRANSITIONS),
        _transitions("SCHEDULE_T", SCHEDULE_TRANSITIONS),
        _transitions("SETTINGS_T", SETTINGS_TRANSITIONS),
        _transitions("TRIGGER_T", TRIGGER_TRANSITIONS),
        f"local TERMINAL = {{ {terminal} }}",
        f"local FROM_PAYLOAD, NO_PHASE, RETIRED = '{FROM_PAYLOAD}', '{NO_PHASE}', '{RETIRED}'",
        _subjects(),
        f"local TEXT = {{ {text} }}",
        # a run's own fields, by their names on its root action's hash (core/fold.py)
        "local RUN_ON_ROOT = { " + ", ".join(f"{k} = '{v}'" for k, v in RUN_ON_ROOT.items()) + " }",
        _keys(hot=False),
        _event_fields(),
        _setting_kinds(),
    ])


def handlers_block() -> str:
    """The projection handlers: ON[type] for actions, ON_RUN[type] for runs (after put/first/fields_of)."""
    return _handlers()
