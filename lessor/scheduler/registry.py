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

Where a task runs (``executor``):
- ``async`` (an ``async def``): in the worker's event loop; cancelled at its next await.
- ``process`` (the default for a plain ``def``): in a child process of a pool
  sized to the worker's concurrency. When its lease is fenced, aborted or timed
  out, or the worker shuts down, that process is killed (and replaced), so a
  sync task can always be stopped (guarantee 2). Its function must be importable
  (module level) and its inputs and output picklable; it gets a ``SyncContext``
  (ids, attempt, token, output prefix) and cannot spawn children.
- ``thread`` (opt in: ``@registry.task(executor="thread")``): in a thread. A thread
  cannot be killed: when its lease is lost (or the worker shuts down) its slot is
  freed and its result dropped, but the code runs on to its end, unaccounted for.
  Use it only for short tasks that must share memory.

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
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import anyio
import anyio.to_process

from lessor.errors import ConfigError, LessorError
from lessor.scheduler.query import ActionInfo

TaskFn = Callable[..., Awaitable[Any]] | Callable[..., Any]


class Context(Protocol):
    """What a task sees of its attempt: annotate a task's ``ctx`` with it.

    ``TaskContext`` (async and thread tasks) is one. A process task gets a
    ``SyncContext``: the same ids and token, but no children.
    """

    namespace: str
    run_id: str
    action_id: str
    attempt: int
    token: int
    worker_id: str

    @property
    def output_prefix(self) -> str: ...

    async def submit(self, task: str, inputs: Any = None, **options: Any) -> "ChildHandle": ...

    async def call(self, task: str, inputs: Any = None, **options: Any) -> Any: ...


class Children(Protocol):
    """What a task context needs from the runtime that runs its attempt (``Worker`` is one).

    Narrow on purpose: the context spawns and awaits children through it and
    nothing else, so this module never needs the worker's class.
    """

    async def submit_child(self, lease: Any, child_id: str, task: str, inputs: Any = None,
                           **options: Any) -> bool:
        """Create a child action of ``lease``'s action, fenced by its token. True if created now."""
        ...

    async def wait_child(self, namespace: str, run_id: str, action_id: str,
                         timeout_s: float | None = None) -> ActionInfo:
        """Wait until that action is terminal; its info (phase, result, error)."""
        ...


class UnknownTask(LessorError, KeyError):
    """A lease named a task this worker does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


class ChildFailed(LessorError):
    """A child action ended in a phase other than succeeded."""


EXECUTORS = ("async", "process", "thread")


class Registry:
    """Tasks by name, each with the executor it runs in."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskFn] = {}
        self.executors: dict[str, str] = {}

    def task(self, fn: TaskFn | None = None, *, name: str | None = None, executor: str | None = None):
        """Register ``fn`` under ``name`` (default: its ``__name__``). Usable as a decorator.

        ``executor``: ``async`` for an ``async def`` (the default there); for a plain
        ``def``, ``process`` (the default: killable) or ``thread`` (cannot be stopped).
        Raises ConfigError for a mismatch.
        """
        def register(f: TaskFn) -> TaskFn:
            is_async = inspect.iscoroutinefunction(f)
            chosen = executor or ("async" if is_async else "process")
            if chosen not in EXECUTORS or (chosen == "async") != is_async:
                raise ConfigError(f"task {name or f.__name__}: executor {chosen!r} does not fit a "
                                  f"{'coroutine' if is_async else 'plain'} function; use "
                                  f"{'async' if is_async else 'process (default) or thread'}")
            self.tasks[name or f.__name__] = f
            self.executors[name or f.__name__] = chosen
            return f

        return register(fn) if fn is not None else register

    def executor(self, name: str) -> str:
        """How task ``name`` runs: async, process or thread."""
        return self.executors.get(name, "async")

    def get(self, name: str) -> TaskFn:
        """The task called ``name``; UnknownTask naming the known ones otherwise."""
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"unknown task {name!r}: this worker knows {known}; register it or "
                              "start a worker with the right --app") from None


@dataclass
class SyncContext:
    """What an attempt knows about itself; all a sync (process) task gets: picklable, no children."""

    namespace: str
    run_id: str
    action_id: str
    attempt: int
    token: int
    worker_id: str

    @property
    def output_prefix(self) -> str:
        """Where this attempt writes its outputs: scoped by run, action and attempt.

        Outputs become the action's result only through the fenced commit.
        """
        return f"{self.namespace}/{self.run_id}/{self.action_id}/attempt-{self.attempt}"


def _call_in_process(fn: TaskFn, ctx: SyncContext, args: tuple, kwargs: dict, fence_file: str | None) -> Any:
    """Runs in the pool process. With ``fence_file``: a watchdog thread ends this process at the
    self-fence deadline the worker keeps writing there (CLOCK_MONOTONIC, shared by all processes),
    so the task stops even if the worker itself is paused (SIGSTOP, a long GC) and cannot kill it."""
    stop = threading.Event()
    if fence_file:
        threading.Thread(target=_fence_watchdog, args=(fence_file, stop), daemon=True).start()
    try:
        return fn(ctx, *args, **kwargs)
    finally:
        stop.set()


def _fence_watchdog(path: str, stop: threading.Event) -> None:
    while not stop.wait(0.05):
        try:
            with open(path) as f:
                deadline_ms = float(f.read() or "inf")
        except (OSError, ValueError):
            continue
        if time.monotonic() * 1000 > deadline_ms:  # clock: the same monotonic clock the worker fences by
            os._exit(75)  # the lease may be reaped now: stop computing at once


def publish_fence(path: str, deadline_ms: float) -> None:
    """Write a self-fence deadline (monotonic ms) for a process task's watchdog, atomically."""
    partial = path + ".tmp"
    with open(partial, "w") as f:
        f.write(repr(deadline_ms))
    os.replace(partial, path)


async def invoke(fn: TaskFn, ctx: "TaskContext", inputs: Any, executor: str = "async",
                 limiter: anyio.CapacityLimiter | None = None, fence_file: str | None = None) -> Any:
    """Call a task with its inputs spread as its signature expects, in its executor.

    ``process``: a pooled child process, killed if this call is cancelled
    (``limiter`` bounds the pool). ``thread``: a thread (not killable).
    """
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
    if executor == "thread":
        # Abandoned on cancel: the worker (and its shutdown) never waits on a thread it
        # cannot stop; the thread's result is dropped. See the module docstring.
        return await anyio.to_thread.run_sync(lambda: fn(ctx, *args, **kwargs), abandon_on_cancel=True)
    sync_ctx = SyncContext(ctx.namespace, ctx.run_id, ctx.action_id, ctx.attempt, ctx.token, ctx.worker_id)
    return await anyio.to_process.run_sync(_call_in_process, fn, sync_ctx, args, kwargs, fence_file,
                                           cancellable=True, limiter=limiter)


@dataclass
class ChildHandle:
    """A child action submitted with ``ctx.submit``."""

    ctx: "TaskContext"
    action_id: str

    async def result(self, timeout_s: float | None = None) -> Any:
        """Wait for the child; its output, or ChildFailed with its phase and error."""
        info = await self.ctx._children.wait_child(self.ctx.namespace, self.ctx.run_id, self.action_id, timeout_s)
        if info.phase.value != "succeeded":
            raise ChildFailed(f"child {self.action_id} ({info.task}) {info.phase.value}: {info.error or ''}".rstrip(": "))
        return info.result


@dataclass
class TaskContext(SyncContext):
    """What a running async attempt knows about itself, and how it spawns children."""

    _children: Children = field(repr=False)
    _lease: Any = field(repr=False)
    _submitted: int = 0

    async def submit(self, task: str, inputs: Any = None, **options: Any) -> ChildHandle:
        """Submit a child action (fenced by this attempt's token) without waiting for it.

        Child ids follow call order (a0.1, a0.2, ...), so a retried parent
        re-attaches to the children an earlier attempt already submitted.
        """
        child_id = f"{self.action_id}.{self._submitted + 1}"
        await self._children.submit_child(self._lease, child_id, task, inputs, **options)
        self._submitted += 1  # only once it is submitted: a retried call reuses the same id
        return ChildHandle(self, child_id)

    async def call(self, task: str, inputs: Any = None, **options: Any) -> Any:
        """Submit a child action and wait for its output (ChildFailed if it does not succeed)."""
        return await (await self.submit(task, inputs, **options)).result()
