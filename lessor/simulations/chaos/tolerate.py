"""What live chaos waits out: a store that is down, restarting or reloading.

``is_transient`` (leasing/outage.py) names those errors; a call that fans out
over a task group (``submit_runs``, the keeper's renewals) raises them inside
an ExceptionGroup, which counts the same when every member is transient.
"""

from __future__ import annotations

from typing import Any, Awaitable

from lessor.leasing.outage import is_transient


def transient(exc: BaseException) -> bool:
    """``is_transient``, looking inside exception groups: transient if every member is."""
    if isinstance(exc, BaseExceptionGroup):
        return all(transient(e) for e in exc.exceptions)
    return is_transient(exc)


async def tolerant(awaitable: Awaitable[Any]) -> Any:
    """Await; None if the store was down, restarting or reloading (a pass to retry later).
    Raises anything else."""
    try:
        return await awaitable
    except Exception as exc:  # re-raised unless a transient store error (then: no answer, the caller retries)
        if not transient(exc):
            raise
        return None
