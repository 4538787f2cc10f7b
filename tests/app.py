"""Tasks for the end-to-end tests (run by real `lessor worker` processes)."""

from __future__ import annotations

import anyio

from lessor.scheduler.registry import Registry

registry = Registry()


@registry.task
async def square(ctx, x: int) -> int:
    return x * x


@registry.task
async def fanout(ctx, n: int) -> int:
    children = [await ctx.submit("square", {"x": i}) for i in range(n)]
    return sum([await child.result() for child in children])


@registry.task
async def flaky(ctx, fail_until: int) -> dict:
    """Fails its first attempts (a user error), then succeeds."""
    if ctx.attempt < fail_until:
        raise RuntimeError(f"attempt {ctx.attempt} failed on purpose")
    return {"attempt": ctx.attempt}


@registry.task
async def record(ctx, path: str, value: str) -> str:
    """Appends a line to ``path`` (evidence of execution), returns ``value``."""
    with open(path, "a") as f:
        f.write(f"{ctx.action_id} {ctx.attempt} {ctx.token}\n")
    return value


@registry.task
async def sleepy(ctx, seconds: float, path: str = "") -> str:
    """Sleeps; writes 'started'/'cancelled' lines to ``path`` if given."""
    def note(text: str) -> None:
        if path:
            with open(path, "a") as f:
                f.write(f"{text} {ctx.attempt} {ctx.token}\n")

    note("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        note("cancelled")
        raise
    note("finished")
    return "slept"


@registry.task
async def boom(ctx) -> None:
    raise ValueError("bad things")


@registry.task
async def unpackable(ctx) -> object:
    return object()


@registry.task
def spin_forever(ctx, path: str) -> None:
    """A plain def task (a pool process) that writes its pid and never returns."""
    import os
    import time

    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.01)
