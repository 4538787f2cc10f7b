"""Waiting in tests on what the log says, not on a timer.

State changes only through events, so a condition on state is re-checked each
time the log grows (a blocking XREAD on every partition's stream), instead of
every 50 ms. Conditions on things the log does not see (a file, a process, a
worker's counters) still poll: say so where they do.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import anyio

from lessor.leasing.eventlog import EventLog


async def until_logged(backend, condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0) -> None:
    """Return once ``condition()`` holds, re-checking it after each event appended to the log.

    Fails naming ``what`` after ``timeout_s``. The follow starts before the first
    check, so an event appended between the check and the read is not missed.
    """
    log = EventLog(backend)
    try:
        with anyio.fail_after(timeout_s):
            start = await log.last_ids()
            if await condition():
                return
            async for _ in log.follow(start, block_ms=500):
                if await condition():
                    return
    except TimeoutError:
        raise AssertionError(f"waited {timeout_s:g} s for {what}") from None
