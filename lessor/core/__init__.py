"""The pure, event-sourced core: events, codec, phases, the fold. No I/O here."""

from lessor.core.codec import decode, encode
from lessor.core.events import ACTION_TRANSITIONS, EVENT_TYPES, RUN_TRANSITIONS, SCHEMA_VERSION, Event
from lessor.core.fold import ActionState, RunState, World, apply_action, apply_run, fold
from lessor.core.phases import TERMINAL, Phase

__all__ = [
    "ACTION_TRANSITIONS", "ActionState", "EVENT_TYPES", "Event", "Phase", "RUN_TRANSITIONS",
    "RunState", "SCHEMA_VERSION", "TERMINAL", "World", "apply_action", "apply_run", "decode",
    "encode", "fold",
]
