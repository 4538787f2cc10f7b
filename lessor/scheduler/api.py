"""The embedding API a control plane uses: submit, query, wait, watch, abort.

    async with lessor.connect() as client:              # None = embedded server
        run = await client.submit_run("pipeline", inputs={"uri": "s3://b/in"},
                                      retries=Retries(user=3, system=3))
        info = await run.wait()
        print(info.phase, info.result)

Works under asyncio and uvloop (anyio underneath).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, AsyncIterator

import anyio

from lessor import telemetry
from lessor.core.events import Event
from lessor.core.ids import ROOT_ACTION, check_namespace
from lessor.core.limits import seconds_to_ms
from lessor.core.phases import Phase
from lessor.leasing import fairshare
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.eventlog import EventLog, LogEntry
from lessor.leasing.durability import Durability
from lessor.scheduler import query, schedules, triggers
from lessor.scheduler import settings as settings_store
from lessor.scheduler.control import AbortOutcome, abort_run
from lessor.scheduler.submit import Retries, submit_run
from lessor.scheduler.values import pack_value
from lessor.scheduler.watcher import CompletionWatcher

DEFAULT_NAMESPACE = "proj/development"


@dataclass(frozen=True)
class CacheKey:
    """Cache identity of a task's output: same name, version and inputs -> same result.

    Bump ``version`` when the task's code changes meaning.
    """

    name: str
    version: str = "1"

    def key_for(self, inputs: bytes) -> str:
        digest = hashlib.sha256(inputs or b"").hexdigest()[:20]
        return f"{self.name}:{self.version}:{digest}"


async def lookup_cache(backend: Backend, namespace: str, key: str) -> bytes | None:
    """The cached output for ``key`` in ``namespace`` (one pipelined round trip), or None."""
    pipe = backend.redis.pipeline(transaction=False)
    for keys in backend.all_keys():
        pipe.hget(keys.cache(namespace), key)
    for hit in await pipe.execute():
        if hit is not None:
            return hit
    return None


class RunHandle:
    """A submitted run: wait for it, read it, abort it, watch its events."""

    def __init__(self, client: "Client", namespace: str, run_id: str, created: bool) -> None:
        self.client, self.namespace, self.run_id, self.created = client, namespace, run_id, created

    def __repr__(self) -> str:
        return f"RunHandle({self.namespace}/{self.run_id})"

    async def wait(self, timeout_s: float | None = None) -> query.RunInfo:
        return await self.client.wait(self.run_id, namespace=self.namespace, timeout_s=timeout_s)

    async def info(self) -> query.RunInfo:
        return await self.client.get_run(self.run_id, namespace=self.namespace)

    async def abort(self, reason: str = "aborted by user") -> AbortOutcome:
        return await self.client.abort(self.run_id, namespace=self.namespace, reason=reason)

    def events(self, follow: bool = False) -> AsyncIterator[Event]:
        return self.client.events(self.run_id, namespace=self.namespace, follow=follow)


class Client:
    """A connection to lessor for a control plane (use ``connect``)."""

    def __init__(self, backend: Backend, task_group, settings_ttl_s: float = 5.0) -> None:
        self.backend = backend
        self.watcher = CompletionWatcher(backend, task_group)
        self.settings_cache = settings_store.SettingsCache(backend, settings_ttl_s)

    async def submit_run(self, task: str, inputs: Any = None, *, namespace: str = DEFAULT_NAMESPACE,
                         queue: str | None = None, retries: Retries | None = None, timeout_s: float | None = None,
                         cache: CacheKey | None = None, priority: int = 0,
                         idempotency_key: str | None = None, durability: str | None = None) -> RunHandle:
        """Submit a run of ``task``; its root action a0 is queued on ``queue``.

        ``inputs`` is a reference (a URI) or a small msgpack-able value. With
        ``cache`` and a stored result for the same key, the run completes at
        once with cache_hit. A repeated ``idempotency_key`` returns the first
        run and submits nothing. Raises ValueError naming a bad argument
        (checked before anything is written: lessor/core/limits.py).

        ``queue``, ``retries`` (user retries), ``timeout_s`` and ``durability``
        left at None take the namespace's settings (``run.default_queue``,
        ``run.default_retries``, ``run.timeout_s``, ``run.durability``; read
        through a cache of ``settings_ttl_s``, see ``connect``), else the
        defaults: queue ``default``, no user retries, no timeout, the client's
        durability. ``timeout_s=0`` asks for no timeout whatever the settings say.
        """
        if queue is None or retries is None or timeout_s is None or durability is None:
            queue, retries, timeout_s, durability = await self._defaults(namespace, queue, retries, timeout_s,
                                                                         durability)
        mode = Durability.parse(durability) if durability is not None else None
        packed = pack_value(inputs)
        cache_key = cache.key_for(packed) if cache else None
        with telemetry.instruments().tracer.start_as_current_span("lessor.submit") as span:
            cached = await lookup_cache(self.backend, namespace, cache_key) if cache_key else None
            submitted = await submit_run(
                self.backend, task, inputs=packed, namespace=namespace, queue=queue, retries=retries,
                timeout_ms=seconds_to_ms("timeout_s", timeout_s), priority=priority, idempotency_key=idempotency_key,
                cache_key=cache_key, cached_result=cached, durability=mode)
            span.set_attribute("lessor.run", f"{namespace}/{submitted.run_id}")
            if submitted.created and cached is None:
                telemetry.instruments().queue_depth.add(1)
            span.set_attribute("lessor.task", task)
        return RunHandle(self, namespace, submitted.run_id, submitted.created)

    async def _defaults(self, namespace, queue, retries, timeout_s, durability):
        """What a submit leaves to the namespace's settings, filled in from them."""
        check_namespace(namespace)
        values = await self.settings_cache.get(namespace)
        if queue is None:
            queue = values["run.default_queue"].value
        if retries is None:
            retries = Retries(user=values["run.default_retries"].value)
        if timeout_s is None:
            timeout_s = values["run.timeout_s"].value or None
        if durability is None:
            durability = values["run.durability"].value
        return queue, retries, timeout_s, durability

    async def get_run(self, run_id: str, *, namespace: str = DEFAULT_NAMESPACE) -> query.RunInfo:
        """The run's live state; UnknownRun if there is none."""
        return await query.get_run(self.backend, namespace, run_id)

    async def get_action(self, run_id: str, action_id: str, *, namespace: str = DEFAULT_NAMESPACE) -> query.ActionInfo:
        """One action's live state; UnknownAction if there is none."""
        return await query.get_action(self.backend, namespace, run_id, action_id)

    async def list_runs(self, namespace: str = DEFAULT_NAMESPACE, phase: Phase | str | None = None,
                        limit: int = 50, cursor: str | None = None) -> tuple[list[query.RunInfo], str | None]:
        """A page of runs, newest first, and the cursor of the next page (None at the end)."""
        return await query.list_runs(self.backend, namespace, phase, limit, cursor)

    async def tree(self, run_id: str, *, namespace: str = DEFAULT_NAMESPACE) -> query.ActionNode:
        """The run's execution tree (a0 and its descendants)."""
        return await query.tree(self.backend, namespace, run_id)

    async def wait(self, run_id: str, *, namespace: str = DEFAULT_NAMESPACE,
                   timeout_s: float | None = None) -> query.RunInfo:
        """Block until the run is terminal (TimeoutError after ``timeout_s``); its final state."""
        await self.watcher.wait(namespace, run_id, ROOT_ACTION, timeout_s)
        return await self.get_run(run_id, namespace=namespace)

    async def events(self, run_id: str, *, namespace: str = DEFAULT_NAMESPACE,
                     follow: bool = False) -> AsyncIterator[Event]:
        """The run's events so far; with ``follow``, then every new one as it is appended."""
        async for entry in self.entries(run_id, namespace=namespace, follow=follow):
            yield entry.event

    async def entries(self, run_id: str | None = None, *, namespace: str = DEFAULT_NAMESPACE,
                      follow: bool = False) -> AsyncIterator[LogEntry]:
        """The event log so far as (partition, event) entries: every run's, or only ``run_id``'s.

        Each partition is read in order, one after the other. With ``follow``,
        then every new entry as it is appended, from where the reading stopped:
        none is missed or repeated. Yields nothing for a run with no events.
        """
        log = EventLog(self.backend)
        partitions = ([self.backend.keys_for_run(namespace, run_id).partition] if run_id
                      else range(self.backend.partitions))
        last: dict[int, str] = {}

        def wanted(e: Event) -> bool:
            return run_id is None or (e.run == run_id and e.ns == namespace)

        for p in partitions:
            last[p] = "0"
            async for event in log.scan(p):
                last[p] = event.id
                if wanted(event):
                    yield LogEntry(p, event)
        if follow:
            async for entry in log.follow(from_ids=last):
                if entry.partition in last and wanted(entry.event):
                    yield entry

    async def abort(self, run_id: str, *, namespace: str = DEFAULT_NAMESPACE,
                    reason: str = "aborted by user") -> AbortOutcome:
        """Abort every non-terminal action of the run; running workers learn it on their next renewal."""
        return await abort_run(self.backend, namespace, run_id, reason)

    # --- schedules (scheduler/schedules.py): each tick starts one run, exactly once ----------

    async def create_schedule(self, name: str, task: str, cron: str, *, timezone: str = "UTC", inputs: Any = None,
                              namespace: str = DEFAULT_NAMESPACE, queue: str = "default", catchup: str = "latest",
                              misfire_grace_s: float = 60.0, jitter_s: float = 0.0, retries: int = 0) -> bool:
        """Create a cron schedule of ``task``; True if new, False if the same one existed
        (ScheduleConflict if another one has the name). Workers and reapers tick it. Each tick
        fires up to ``jitter_s`` after its time (the same delay for every ticker); each run
        gets ``retries`` user retries."""
        return await schedules.create_schedule(self.backend, name, task, cron, timezone=timezone, inputs=inputs,
                                               namespace=namespace, queue=queue, catchup=catchup,
                                               misfire_grace_s=misfire_grace_s, jitter_s=jitter_s,
                                               retries=retries)

    async def pause_schedule(self, name: str, *, namespace: str = DEFAULT_NAMESPACE, reason: str = "") -> bool:
        """Pause a schedule (its ticks during the pause never fire); False if it was paused."""
        return await schedules.pause_schedule(self.backend, name, namespace=namespace, reason=reason)

    async def resume_schedule(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> bool:
        """Resume a paused schedule from now; False if it was active."""
        return await schedules.resume_schedule(self.backend, name, namespace=namespace)

    async def delete_schedule(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Delete a schedule (the runs it started stay)."""
        await schedules.delete_schedule(self.backend, name, namespace=namespace)

    async def list_schedules(self, namespace: str | None = None) -> list[schedules.ScheduleInfo]:
        """Every schedule (of ``namespace``, if given)."""
        return await schedules.list_schedules(self.backend, namespace)

    # --- triggers (scheduler/triggers.py): an external event starts a run, once per dedup key -------

    async def create_trigger(self, name: str, task: str, *, namespace: str = DEFAULT_NAMESPACE,
                             window_s: float = 3600.0, queue: str = "default") -> bool:
        """Create an event trigger of ``task``; True if new, False if the same one existed
        (TriggerConflict if another one has the name)."""
        return await triggers.create_trigger(self.backend, name, task, namespace=namespace, window_s=window_s,
                                             queue=queue)

    async def trigger(self, name: str, payload: Any = None, *, dedup_key: str,
                      namespace: str = DEFAULT_NAMESPACE) -> RunHandle:
        """Start the trigger's task with ``payload`` as its inputs, at most once per ``dedup_key``
        within the trigger's window: a repeated fire gets the first run (``handle.created`` False).
        One atomic script call; UnknownTrigger if there is no such trigger."""
        fired = await triggers.fire(self.backend, name, payload, dedup_key=dedup_key, namespace=namespace)
        return RunHandle(self, namespace, fired.run_id, fired.created)

    async def delete_trigger(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Delete a trigger (the runs it started stay); UnknownTrigger if there is none."""
        await triggers.delete_trigger(self.backend, name, namespace=namespace)

    async def list_triggers(self, namespace: str | None = None) -> list[triggers.TriggerInfo]:
        """Every trigger (of ``namespace``, if given)."""
        return await triggers.list_triggers(self.backend, namespace)

    # --- settings (scheduler/settings.py): org -> domain -> project, versioned writes ----------

    async def get_settings(self, namespace: str = DEFAULT_NAMESPACE) -> dict[str, settings_store.Effective]:
        """Every setting's effective value for ``namespace`` and the scope it came from (read now, not cached)."""
        return await settings_store.effective(self.backend, namespace)

    async def read_settings(self, scope: str) -> settings_store.ScopeDocument:
        """One scope's local overrides and their version (``*``, ``*/domain`` or ``project/domain``)."""
        return await settings_store.read_scope(self.backend, scope)

    async def write_settings(self, scope: str, document: dict[str, Any], *, version: int) -> int:
        """Replace the scope's local overrides with ``document``, if the scope is still at ``version``
        (what ``read_settings`` returned); the new version. SettingsConflict otherwise (nothing written)."""
        try:
            return await settings_store.write_scope(self.backend, scope, document, version)
        finally:
            self.settings_cache.forget()

    async def update_settings(self, scope: str, changes: dict[str, Any], *, version: int | None = None,
                              remove: tuple[str, ...] = ()) -> int:
        """Set ``changes`` (and drop the keys in ``remove``) in the scope, keeping its other keys; the new version."""
        try:
            return await settings_store.update_scope(self.backend, scope, changes, version=version, remove=remove)
        finally:
            self.settings_cache.forget()
    # --- fair share and running limits (leasing/fairshare.py) ---------------------------------

    async def set_fair_share(self, queue: str, namespace: str, *, weight: float | None = None,
                             max_running: int | None = None) -> fairshare.NamespaceShare:
        """Set ``namespace``'s weight (default 1) and/or running limit (0 = none) on ``queue``;
        None leaves a value as it is. Workers of ``*`` share the queue by these weights."""
        return await fairshare.set_fair_share(self.backend, queue, namespace, weight=weight,
                                              max_running=max_running)

    async def set_queue_limit(self, queue: str, max_running: int) -> None:
        """At most ``max_running`` leases of ``queue`` at once over all namespaces (0 = no limit)."""
        await fairshare.set_queue_limit(self.backend, queue, max_running)

    async def fair_share(self, queue: str) -> fairshare.QueueShares:
        """``queue``'s limits, weights, and running and queued counts per namespace."""
        return await fairshare.show(self.backend, queue)


@contextlib.asynccontextmanager
async def connect(url: str | None = None, *, partitions: int | None = None,
                  durability: str = "memory", settings_ttl_s: float = 5.0) -> AsyncIterator[Client]:
    """A Client on ``url`` ($LESSOR_REDIS_URL, else an embedded server for the block's life).

    ``durability``: when its writes count as acknowledged: ``memory`` (default),
    ``fsync``, ``replicas:N`` or ``fsync+replicas:N`` (docs/store-faults.md).
    ``settings_ttl_s``: how long the client keeps a namespace's resolved
    settings for submits (0: read them at every submit that needs them).
    An exception raised in the block reaches the caller as itself (e.g.
    UnknownRun), not wrapped in an ExceptionGroup.
    """
    async with open_backend(url, partitions=partitions, durability=durability) as backend:
        raised: Exception | None = None
        async with anyio.create_task_group() as tg:
            try:
                yield Client(backend, tg, settings_ttl_s)
            except Exception as exc:  # kept, so the caller gets the error itself, not an ExceptionGroup
                raised = exc
            tg.cancel_scope.cancel()
        if raised is not None:
            raise raised
