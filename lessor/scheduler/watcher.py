"""Waiting for actions to finish, driven by the event log instead of polling.

One follow loop per process (started on the first wait) reads every
partition's stream and wakes the waiters of an action when a terminal event
for it arrives. A waiter registers *before* it reads the action's state, so an
event landing between the two cannot be missed.
"""

from __future__ import annotations

from collections import defaultdict

import anyio
from anyio.abc import TaskGroup

from lessor.core import events as ev
from lessor.core.phases import TERMINAL
from lessor.leasing.backend import Backend
from lessor.leasing.eventlog import EventLog
from lessor.scheduler.query import ActionInfo, get_action

TERMINAL_EVENTS = (ev.ActionSucceeded, ev.ActionFailed, ev.ActionTimedOut, ev.ActionAborted, ev.CacheHit)


class CompletionWatcher:
    """Wakes waiters when actions reach a terminal phase."""

    def __init__(self, backend: Backend, task_group: TaskGroup) -> None:
        self.backend = backend
        self._tg = task_group
        self._waiters: dict[str, list[anyio.Event]] = defaultdict(list)
        self._started: anyio.Event | None = None

    async def _ensure_following(self) -> None:
        if self._started is None:
            self._started = anyio.Event()
            self._tg.start_soon(self._follow)
        await self._started.wait()

    async def _follow(self) -> None:
        log = EventLog(self.backend)
        # Fix the start point before anyone registers: nothing after it is missed.
        start = await log.last_ids()
        self._started.set()
        async for entry in log.follow(from_ids=start, block_ms=2000):
            e = entry.event
            if isinstance(e, TERMINAL_EVENTS):
                ref = f"{e.ns}/{e.run}/{e.action}"
                for waiter in self._waiters.pop(ref, ()):
                    waiter.set()

    async def wait(self, namespace: str, run_id: str, action_id: str, timeout_s: float | None = None) -> ActionInfo:
        """Block until the action is terminal; returns its final state (TimeoutError on timeout)."""
        await self._ensure_following()
        ref = f"{namespace}/{run_id}/{action_id}"
        woken = anyio.Event()
        self._waiters[ref].append(woken)
        info = await get_action(self.backend, namespace, run_id, action_id)
        if info.phase not in TERMINAL:
            with anyio.fail_after(timeout_s):
                await woken.wait()
            info = await get_action(self.backend, namespace, run_id, action_id)
        else:
            self._discard(ref, woken)
        return info

    def _discard(self, ref: str, woken: anyio.Event) -> None:
        waiters = self._waiters.get(ref)
        if waiters and woken in waiters:
            waiters.remove(woken)
            if not waiters:
                del self._waiters[ref]
