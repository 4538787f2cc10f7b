"""The tasks live chaos runs: they sleep for a while (real time) and return, or await children.

``chaos_sync`` is a plain ``def``: it runs in a killable child process, so the
checkers see whether a sync task also stops when its lease is lost.
"""

from __future__ import annotations

import time

import anyio

from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import Retries

registry = Registry()
APP = "lessor.simulations.chaos.app:registry"  # what `lessor worker --app` takes


@registry.task
async def chaos_task(ctx, seconds: float) -> dict:
    await anyio.sleep(seconds)
    return {"slept": seconds, "attempt": ctx.attempt}


@registry.task
def chaos_sync(ctx, seconds: float) -> dict:
    """Blocks its process for ``seconds`` (no await: only killing the process stops it)."""
    time.sleep(seconds)
    return {"slept": seconds, "attempt": ctx.attempt, "sync": True}


@registry.task
async def chaos_parent(ctx, children: list[float]) -> dict:
    """Submits one ``chaos_task`` child per entry (that many seconds each) and awaits them all.

    A retried attempt re-attaches to the children an earlier attempt submitted
    (child ids follow call order), so a failover never runs a finished child again.
    """
    handles = [await ctx.submit("chaos_task", {"seconds": s}, retries=Retries(system=5)) for s in children]
    return {"children": [await h.result() for h in handles], "attempt": ctx.attempt}
