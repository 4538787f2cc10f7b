"""Submitting runs: the low-level call under the embedding API.

A run id is random unless an idempotency key is given: then it is derived from
(namespace, key), so a repeated submit lands on the same run id, the submit
script finds the run exists and returns it, and nothing is submitted twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from lessor.core.ids import check_id, check_namespace, new_run_id
from lessor.leasing.backend import Backend


@dataclass(frozen=True)
class Retries:
    """Retry budgets. ``user``: the task's own errors; ``system``: lease expiries.

    ``backoff_ms`` is the base of the exponential backoff between user retries
    (base * 2^(attempt-1), jittered by 0.5x-1.5x, capped at 10 minutes).
    """

    user: int = 0
    system: int = 3
    backoff_ms: int = 1000

    def __post_init__(self) -> None:
        if min(self.user, self.system, self.backoff_ms) < 0:
            raise ValueError(f"retry budgets and backoff must be >= 0, got {self}")


@dataclass(frozen=True)
class Submitted:
    """The outcome of a submit: the run id and whether this call created it."""

    namespace: str
    run_id: str
    created: bool


def idempotent_run_id(namespace: str, key: str) -> str:
    """The run id a given idempotency key always maps to within a namespace."""
    return "r" + hashlib.sha256(f"{namespace}\0{key}".encode()).hexdigest()[:12]


async def submit_run(
    backend: Backend,
    task: str,
    *,
    inputs: bytes = b"",
    namespace: str = "proj/development",
    queue: str = "default",
    retries: Retries = Retries(),
    timeout_ms: int = 0,
    priority: int = 0,
    idempotency_key: str | None = None,
    cache_key: str | None = None,
    cached_result: bytes | None = None,
    run_id: str | None = None,
) -> Submitted:
    """Create a run and queue its root action ``a0``. One script call.

    Raises ValueError naming a bad namespace, task, queue or number.
    """
    check_namespace(namespace)
    check_id("task", task)
    check_id("queue", queue)
    if timeout_ms < 0 or not -1000 <= priority <= 1000:
        raise ValueError("timeout_ms must be >= 0 and priority within -1000..1000")
    if run_id is None:
        run_id = idempotent_run_id(namespace, idempotency_key) if idempotency_key else new_run_id()
    check_id("run", run_id)
    keys = backend.keys_for_run(namespace, run_id)
    args = [namespace, run_id, task, queue, inputs or b"", idempotency_key or "", retries.system,
            retries.user, retries.backoff_ms, priority, timeout_ms, cache_key or ""]
    if cached_result is not None:
        args.append(cached_result)
    created, rid = await backend.scripts.submit(keys=[keys.prefix], args=args)
    return Submitted(namespace, rid.decode(), bool(created))
