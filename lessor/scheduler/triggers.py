"""Event triggers: an external event (a webhook) starts a task, at most once per dedup key and window.

``create_trigger`` names a task, a queue and a window. ``fire`` starts a run of
the task with the payload as its inputs; fires with the same dedup key within
``window_s`` of the first one are answered with that first run and start
nothing. Everything is decided in one ``trigger.lua`` call: the dedup record,
the run and the ``trigger_fired`` event are written together.

The run id is a function of (trigger, dedup key, window index), the index being
the server clock's ``now // window`` at the fire, and lies in the trigger's own
partition (so the record, the run and the event are one atomic write). A retried
fire whose reply was lost therefore lands on the same run, even if its dedup
record were gone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from lessor.core.ids import check_id, check_namespace, run_id_beside
from lessor.core.limits import check_text, seconds_to_ms
from lessor.errors import LessorError
from lessor.leasing.backend import Backend
from lessor.leasing.codes import Code, SubmitCode
from lessor.scheduler.schedules import server_now_ms
from lessor.scheduler.values import pack_value


class TriggerConflict(LessorError, ValueError):
    """A trigger of that name exists with another definition."""


class UnknownTrigger(LessorError, KeyError):
    """No trigger of that name (never created, or deleted)."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Fired:
    """What a fire did: the run it started, or (``created`` False) the run it was deduplicated against."""

    namespace: str
    trigger: str
    run_id: str
    created: bool


@dataclass(frozen=True)
class TriggerInfo:
    """A trigger's live state."""

    namespace: str
    name: str
    task: str
    queue: str
    window_s: float
    fires: int
    last_run: str


def trigger_run_id(namespace: str, name: str, dedup_key: str, index: int, partitions: int) -> str:
    """The run id of a fire: derived from (trigger, dedup key, window index) only, and in the
    trigger's own partition, so that the fire and its run are written by one atomic script."""
    digest = hashlib.sha256(f"{name}\0{dedup_key}".encode()).hexdigest()[:12]
    return run_id_beside(namespace, name, f"{name[:20]}-{digest}-{index}", partitions)


async def create_trigger(backend: Backend, name: str, task: str, *, namespace: str, window_s: float = 3600.0,
                         queue: str = "default") -> bool:
    """Create a trigger; True if created now, False if the same one existed (TriggerConflict if another
    one has that name)."""
    check_namespace(namespace)
    check_id("trigger name", name)
    check_id("task", task)
    check_id("queue", queue)
    window_ms = seconds_to_ms("window_s", window_s, allow_none=False)
    if window_ms < 1:
        raise ValueError(f"window_s must be at least 0.001 s, got {window_s!r}")
    (code,) = await backend.call("trigger", [backend.keys_for_run(namespace, name).prefix],
                                 ["create", namespace, name, task, queue, window_ms])
    if code == SubmitCode.CONFLICT:
        raise TriggerConflict(f"trigger {namespace}/{name} exists with another definition: delete it first, "
                              "or choose another name")
    return code == SubmitCode.CREATED


async def fire(backend: Backend, name: str, payload: Any = None, *, dedup_key: str, namespace: str) -> Fired:
    """Start the trigger's task with ``payload`` as its inputs, unless ``dedup_key`` fired within the
    window: then answer with that run. UnknownTrigger if there is no such trigger (or it was deleted)."""
    check_namespace(namespace)
    check_id("trigger name", name)
    check_text("dedup_key", dedup_key, 256)
    inputs = pack_value(payload) if payload is not None else b""
    prefix = backend.keys_for_run(namespace, name).prefix
    window_ms = await _window_ms(backend, namespace, name)
    index = await server_now_ms(backend) // window_ms
    for _ in range(5):   # again only if the server's clock crossed into another window meanwhile
        run = trigger_run_id(namespace, name, dedup_key, index, backend.partitions)
        code, value = await backend.call("trigger", [prefix], ["fire", namespace, name, dedup_key, index, run, inputs])
        if code == Code.UNKNOWN:
            raise _unknown(namespace, name)
        if code != Code.STALE:
            return Fired(namespace, name, value.decode(), code == SubmitCode.CREATED)
        index = int(value)
    raise LessorError(f"trigger {namespace}/{name}: the window kept moving under the fire; fire again")


async def delete_trigger(backend: Backend, name: str, *, namespace: str) -> None:
    """Delete a trigger (the runs it started stay); UnknownTrigger if there is none."""
    check_namespace(namespace)
    check_id("trigger name", name)
    (code,) = await backend.call("trigger", [backend.keys_for_run(namespace, name).prefix],
                                 ["delete", namespace, name])
    if code == Code.UNKNOWN:
        raise _unknown(namespace, name)


async def list_triggers(backend: Backend, namespace: str | None = None) -> list[TriggerInfo]:
    """Every trigger (of ``namespace``, if given), by namespace and name."""
    out = []
    for keys in backend.all_keys():
        async for raw in backend.redis.scan_iter(match=keys.trigger((namespace or "*") + "/*"), count=1000):
            h = await backend.redis.hgetall(raw)
            if h:
                out.append(_info(h))
    return sorted(out, key=lambda t: (t.namespace, t.name))


def _info(h: dict) -> TriggerInfo:
    text = {k.decode(): v.decode(errors="replace") for k, v in h.items()}
    return TriggerInfo(text.get("ns", ""), text.get("trigger", ""), text.get("task", ""), text.get("queue", ""),
                       int(text.get("window_ms") or 0) / 1000, int(text.get("fires") or 0), text.get("last_run", ""))


async def _window_ms(backend: Backend, namespace: str, name: str) -> int:
    window = await backend.redis.hget(backend.keys_for_run(namespace, name).trigger(f"{namespace}/{name}"),
                                      "window_ms")
    if window is None:
        raise _unknown(namespace, name)
    return int(window)


def _unknown(namespace: str, name: str) -> UnknownTrigger:
    return UnknownTrigger(f"no trigger {namespace}/{name} (never created, or deleted): nothing was started; "
                          "`lessor trigger list` shows the triggers, `lessor trigger create` makes one")
