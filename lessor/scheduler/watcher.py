"""Waiting for actions to finish, driven by the event log instead of polling.

One follow loop per process (started on the first wait) reads every
partition's stream and wakes the waiters of an action when a terminal event
for it arrives. A waiter registers *before* it reads the action's state, so an
event landing between the two cannot be missed.

Store faults never end the follow loop (it waits them out and goes on from the
last id it saw). Because a failover can lose the very event a waiter needed, a
waiter also re-reads its action's state every ``recheck_s``, and as soon as
the follow loop recovers from an outage.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import anyio
from anyio.abc import TaskGroup

from lessor.core import events as ev
from lessor.core.phases import TERMINAL
from lessor.leasing.backend import Backend
from lessor.leasing.eventlog import EventLog
from lessor.leasing.outage import Outage, is_transient
from lessor.scheduler.query import ActionInfo, get_action

TERMINAL_EVENTS = (ev.ActionSucceeded, ev.ActionFailed, ev.ActionTimedOut, ev.ActionAborted, ev.CacheHit)


class CompletionWatcher:
    """Wakes waiters when actions reach a terminal phase."""

    def __init__(self, backend: Backend, task_group: TaskGroup, recheck_s: float = 5.0) -> None:
        self.backend = backend
        self._tg = task_group
        self.recheck_s = recheck_s
        self._waiters: dict[str, list[anyio.Event]] = defaultdict(list)
        self._started: anyio.Event | None = None
        self.outage = _WakingOutage(self, "watcher", backend.url, log=logging.getLogger("lessor.watcher"))

    async def _ensure_following(self) -> None:
        if self._started is None:
            self._started = anyio.Event()
            self._tg.start_soon(self._follow)
        await self._started.wait()

    async def _follow(self) -> None:
        log = EventLog(self.backend)
        # Fix the start point before anyone registers: nothing after it is missed.
        start = await log._start_ids(None, self.outage)
        self._started.set()
        async for entry in log.follow(from_ids=start, block_ms=2000, outage=self.outage):
            e = entry.event
            if isinstance(e, TERMINAL_EVENTS):
                ref = f"{e.ns}/{e.run}/{e.action}"
                for waiter in self._waiters.pop(ref, ()):
                    waiter.set()

    async def wait(self, namespace: str, run_id: str, action_id: str, timeout_s: float | None = None) -> ActionInfo:
        """Block until the action is terminal; returns its final state (TimeoutError on timeout)."""
        await self._ensure_following()
        ref = f"{namespace}/{run_id}/{action_id}"
        with anyio.fail_after(timeout_s):
            while True:
                woken = anyio.Event()
                self._waiters[ref].append(woken)
                info = await self._read(namespace, run_id, action_id)
                if info.phase in TERMINAL:
                    self._discard(ref, woken)
                    return info
                with anyio.move_on_after(self.recheck_s):
                    await woken.wait()
                self._discard(ref, woken)

    async def _read(self, namespace: str, run_id: str, action_id: str) -> ActionInfo:
        """The action's state, waiting out store faults (the caller's timeout still applies)."""
        while True:
            try:
                return await get_action(self.backend, namespace, run_id, action_id)
            except Exception as exc:  # transient ones are waited out; the rest reach the caller
                if not is_transient(exc):
                    raise
                await anyio.sleep(self.outage.failed(exc) / 1000)

    def wake_all(self) -> None:
        """Make every waiter re-read its action's state (after an outage, events may be lost)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    def _discard(self, ref: str, woken: anyio.Event) -> None:
        waiters = self._waiters.get(ref)
        if waiters and woken in waiters:
            waiters.remove(woken)
            if not waiters:
                del self._waiters[ref]


class _WakingOutage(Outage):
    """The watcher's outage tracker: on recovery every waiter re-reads its state."""

    def __init__(self, watcher: CompletionWatcher, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._watcher = watcher

    def ok(self, mark: int | None = None) -> None:
        was_down = self.down
        super().ok(mark)
        if was_down and not self.down:
            self._watcher.wake_all()
