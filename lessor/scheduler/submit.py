"""Submitting runs: the low-level call under the embedding API.

A run id is random unless an idempotency key is given: then it is derived from
(namespace, key), so a repeated submit lands on the same run id, the submit
script finds the run exists and returns it, and nothing is submitted twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import anyio
import msgpack

from lessor.core.ids import check_id, check_namespace, new_run_id
from lessor.core.limits import MAX_BACKOFF_MS, MAX_DURATION_S, MAX_RETRIES, check_int, check_text
from lessor.errors import IdempotencyConflict, NotDurable
from lessor.leasing.backend import Backend
from lessor.leasing.durability import Durability


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
        check_int("Retries.user", self.user, 0, MAX_RETRIES)
        check_int("Retries.system", self.system, 0, MAX_RETRIES)
        check_int("Retries.backoff_ms", self.backoff_ms, 0, MAX_BACKOFF_MS)


@dataclass(frozen=True)
class Submitted:
    """The outcome of a submit: the run id and whether this call created it."""

    namespace: str
    run_id: str
    created: bool


def idempotent_run_id(namespace: str, key: str) -> str:
    """The run id a given idempotency key always maps to within a namespace."""
    return "r" + hashlib.sha256(f"{namespace}\0{key}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunSpec:
    """Everything a submit needs for one run (see ``submit_run`` for the meaning)."""

    task: str
    inputs: bytes = b""
    namespace: str = "proj/development"
    queue: str = "default"
    retries: Retries = Retries()
    timeout_ms: int = 0
    priority: int = 0
    idempotency_key: str | None = None
    cache_key: str | None = None
    cached_result: bytes | None = None
    run_id: str | None = None

    def checked_run_id(self) -> str:
        """Validate the spec; the run id to use (random, or derived from the idempotency key)."""
        check_namespace(self.namespace)
        check_id("task", self.task)
        check_id("queue", self.queue)
        check_int("timeout_ms", self.timeout_ms, 0, MAX_DURATION_S * 1000)
        check_int("priority", self.priority, -1000, 1000)
        if not isinstance(self.retries, Retries):
            raise ValueError(f"retries must be lessor.Retries, got {type(self.retries).__name__}")
        for name in ("inputs", "cached_result"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bytes):
                raise ValueError(f"{name} must be packed bytes (lessor.pack_value), got {type(value).__name__}")
        if self.idempotency_key is not None:
            check_text("idempotency_key", self.idempotency_key, 256)
        if self.cache_key is not None:
            check_text("cache_key", self.cache_key, 256)
        run_id = self.run_id or (idempotent_run_id(self.namespace, self.idempotency_key)
                                 if self.idempotency_key else new_run_id())
        return check_id("run", run_id)

    def args(self, run_id: str) -> list:
        """The 14 submit.lua values of this run. Numbers go as text: submit.lua takes integers
        too, but turning each into text there cost the server more than the client (callgrind)."""
        r = self.retries
        return [self.namespace, run_id, self.task, self.queue, self.inputs or b"", self.idempotency_key or "",
                str(r.system), str(r.user), str(r.backoff_ms), str(self.priority), str(self.timeout_ms),
                self.cache_key or "", "1" if self.cached_result is not None else "0", self.cached_result or b""]


async def submit_runs(backend: Backend, specs: list[RunSpec], *,
                      durability: Durability | None = None) -> list[Submitted]:
    """Submit many runs: one script call per partition touched, all concurrently.

    Returns one Submitted per spec, in order. Raises ValueError naming a bad spec,
    IdempotencyConflict for a reused key (any error raised after the calls carries
    ``.submitted``: the Submitted of every run that was created, None for the rest),
    StoreUnavailable if the server could not be reached (the runs may or may not
    exist: submit again with the same run ids), and NotDurable if they were
    created but not confirmed durable (``durability``, else ``Backend.durability``).
    """
    run_ids = [spec.checked_run_id() for spec in specs]
    groups: dict[int, list[int]] = {}
    for i, (spec, run_id) in enumerate(zip(specs, run_ids)):
        groups.setdefault(backend.keys_for_run(spec.namespace, run_id).partition, []).append(i)
    results: list[Submitted | None] = [None] * len(specs)

    errors: list[Exception] = []

    async def one(partition: int, indexes: list[int]) -> None:
        # One msgpack blob and a count instead of 14 arguments per run (submit.lua unpacks
        # it): redis-py packs every argument in Python, msgpack packs the array in C.
        values = [value for i in indexes for value in specs[i].args(run_ids[i])]
        args = [msgpack.packb(values, use_bin_type=False), len(indexes)]  # raw, as cmsgpack reads it
        try:
            reply = await backend.call("submit", [backend.keys(partition).prefix], args, durability=durability)
        except NotDurable as exc:
            ids = ", ".join(f"{specs[i].namespace}/{run_ids[i]}" for i in indexes)
            errors.append(NotDurable(f"submit of {ids} is unconfirmed: {exc}. Submitting again with the same "
                                     "run id (or idempotency key) is safe", exc.reply))
            return
        except Exception as exc:  # kept, so the caller gets the error itself, not an ExceptionGroup
            errors.append(exc)
            return
        for n, i in enumerate(indexes):
            code, run_id = int(reply[2 * n]), reply[2 * n + 1].decode()
            if code == 2:
                spec = specs[i]
                what = f"idempotency key {spec.idempotency_key!r}" if spec.idempotency_key else f"run id {run_id!r}"
                errors.append(IdempotencyConflict(
                    f"{what} already names run {spec.namespace}/{run_id}, submitted with another task or other "
                    f"inputs than this {spec.task!r} request: nothing was submitted. Use a new key for a new "
                    f"request, or `lessor run show {spec.namespace}/{run_id}` to see the existing run"))
                continue
            results[i] = Submitted(specs[i].namespace, run_id, bool(code))

    async with anyio.create_task_group() as tg:
        for partition, indexes in groups.items():
            tg.start_soon(one, partition, indexes)
    if errors:
        # The other runs of the batch were created: the error carries them (None where not).
        errors[0].submitted = results
        raise errors[0]
    return results


async def submit_run(backend: Backend, task: str, *, durability: Durability | None = None, **fields) -> Submitted:
    """Create a run and queue its root action ``a0``. One script call.

    Keyword fields as RunSpec: inputs (packed bytes), namespace, queue, retries,
    timeout_ms, priority, idempotency_key, cache_key, cached_result, run_id.
    Raises ValueError naming a bad namespace, task, queue or number.
    """
    (submitted,) = await submit_runs(backend, [RunSpec(task, **fields)], durability=durability)
    return submitted
