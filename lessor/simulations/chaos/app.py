"""The tasks live chaos runs: they sleep for a while (real time) and return."""

from __future__ import annotations

import anyio

from lessor.scheduler.registry import Registry

registry = Registry()


@registry.task
async def chaos_task(ctx, seconds: float) -> dict:
    await anyio.sleep(seconds)
    return {"slept": seconds, "attempt": ctx.attempt}
