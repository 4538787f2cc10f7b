"""Tasks by name, and the context a task runs with.

    registry = Registry()

    @registry.task
    async def square(ctx, x):
        return x * x

    @registry.task
    async def fanout(ctx, n):
        children = [await ctx.submit("square", {"x": i}) for i in range(n)]
        return sum([await child.result() for child in children])

A task receives its inputs as keyword arguments (a dict), positional ones (a
list), one argument (anything else) or none. Its return value is the output.

Fencing your own side effects: ``ctx.token`` is the attempt's fencing token. It
strictly increases across attempts of an action, so an external write can be
made conditional on it and a stale attempt can never overwrite a newer one:

    UPDATE reports SET body = :body, token = :token
     WHERE id = :id AND token < :token          -- a late, failed-over attempt matches no row

or an object-store precondition (write ``ctx.output_prefix + "/out.parquet"``,
then publish it with a compare-and-swap on a manifest that records the token).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import anyio

from lessor.errors import LessorError

if TYPE_CHECKING:
    from lessor.scheduler.worker import Worker

TaskFn = Callable[..., Awaitable[Any]] | Callable[..., Any]


class UnknownTask(LessorError, KeyError):
    """A lease named a task this worker does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


class ChildFailed(LessorError):
    """A child action ended in a phase other than succeeded."""


class Registry:
    """Tasks by name."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskFn] = {}

    def task(self, fn: TaskFn | None = None, *, name: str | None = None):
        """Register ``fn`` under ``name`` (default: its ``__name__``). Usable as a decorator."""
        def register(f: TaskFn) -> TaskFn:
            self.tasks[name or f.__name__] = f
            return f

        return register(fn) if fn is not None else register

    def get(self, name: str) -> TaskFn:
        """The task called ``name``; UnknownTask naming the known ones otherwise."""
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"unknown task {name!r}: this worker knows {known}; register it or "
                              "start a worker with the right --app") from None


async def invoke(fn: TaskFn, ctx: "TaskContext", inputs: Any) -> Any:
    """Call a task with its inputs spread as its signature expects (sync tasks run in a thread)."""
    if isinstance(inputs, dict):
        args, kwargs = (), inputs
    elif isinstance(inputs, list):
        args, kwargs = tuple(inputs), {}
    elif inputs is None:
        args, kwargs = (), {}
    else:
        args, kwargs = (inputs,), {}
    if inspect.iscoroutinefunction(fn):
        return await fn(ctx, *args, **kwargs)
    return await anyio.to_thread.run_sync(lambda: fn(ctx, *args, **kwargs))


@dataclass
class ChildHandle:
    """A child action submitted with ``ctx.submit``."""

    ctx: "TaskContext"
    action_id: str

    async def result(self, timeout_s: float | None = None) -> Any:
        """Wait for the child; its output, or ChildFailed with its phase and error."""
        info = await self.ctx._worker.watcher.wait(self.ctx.namespace, self.ctx.run_id, self.action_id, timeout_s)
        if info.phase.value != "succeeded":
            raise ChildFailed(f"child {self.action_id} ({info.task}) {info.phase.value}: {info.error or ''}".rstrip(": "))
        return info.result


@dataclass
class TaskContext:
    """What a running attempt knows about itself, and how it spawns children."""

    namespace: str
    run_id: str
    action_id: str
    attempt: int
    token: int
    worker_id: str
    _worker: "Worker" = field(repr=False)
    _lease: Any = field(repr=False)
    _children: int = 0

    @property
    def output_prefix(self) -> str:
        """Where this attempt writes its outputs: scoped by run, action and attempt.

        Outputs become the action's result only through the fenced commit.
        """
        return f"{self.namespace}/{self.run_id}/{self.action_id}/attempt-{self.attempt}"

    async def submit(self, task: str, inputs: Any = None, **options: Any) -> ChildHandle:
        """Submit a child action (fenced by this attempt's token) without waiting for it.

        Child ids follow call order (a0.1, a0.2, ...), so a retried parent
        re-attaches to the children an earlier attempt already submitted.
        """
        child_id = f"{self.action_id}.{self._children + 1}"
        await self._worker.submit_child(self._lease, child_id, task, inputs, **options)
        self._children += 1  # only once it is submitted: a retried call reuses the same id
        return ChildHandle(self, child_id)

    async def call(self, task: str, inputs: Any = None, **options: Any) -> Any:
        """Submit a child action and wait for its output (ChildFailed if it does not succeed)."""
        return await (await self.submit(task, inputs, **options)).result()
