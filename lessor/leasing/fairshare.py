"""Fair share and running limits of a queue: where they are stored and how they are applied.

Workers that take work of every namespace of a queue (namespace ``*``) get it by
weighted fair share (acquire.lua: stride scheduling over the namespaces with queued
work), and every acquire, of one namespace or of all, keeps the running limits.

Storage, kept simple so that a settings layer can write it later:

- ``lessor:fair_share`` (one hash, outside the partitions): what was asked, as JSON,
  field ``<queue> <namespace>`` -> ``{"weight": w, "max_running": m}`` and field
  ``<queue>`` -> ``{"max_running": m}``. Read by ``lessor fairshare show``; the source
  ``apply`` copies into the partitions.
- each partition's ``share_key(queue)`` hash (core/keyspace.py), what acquire.lua
  reads: ``w:<ns>`` (the weight; missing = 1), ``max:<ns>`` and ``max`` (this
  partition's share of the limit; missing = none).

A limit of N over P partitions is split as ceil(N / P) per partition (as retention's
keep_runs is): runs spread evenly over partitions by hash, so the total stays near N
and never exceeds P * ceil(N / P). Fairness is per partition too: each partition's
acquires follow the weights, and since a namespace's runs spread evenly over the
partitions and workers visit the partitions in turn, the sum follows them as well.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from lessor.core.ids import check_id, check_namespace
from lessor.errors import ConfigError
from lessor.leasing.backend import Backend

SHARE_KEY = "lessor:fair_share"
MAX_WEIGHT = 10_000
MAX_RUNNING = 1_000_000


@dataclass(frozen=True)
class NamespaceShare:
    """One namespace's weight and running limit on one queue (0 = no limit), and its figures."""

    namespace: str
    weight: float = 1.0
    max_running: int = 0
    running: int = 0      # leases running now, summed over partitions
    queued: int = 0       # actions waiting in the queue, summed over partitions


@dataclass(frozen=True)
class QueueShares:
    """A queue's running limit (0 = none), its running total and its namespaces' shares."""

    queue: str
    max_running: int = 0
    running: int = 0
    namespaces: list[NamespaceShare] = field(default_factory=list)


def _check_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or not 0 < weight <= MAX_WEIGHT:
        raise ConfigError(f"weight must be a number above 0 and at most {MAX_WEIGHT} (1 = an equal share), "
                          f"got {weight!r}")
    return float(weight)


def _check_max(max_running: object) -> int:
    if isinstance(max_running, bool) or not isinstance(max_running, int) or not 0 <= max_running <= MAX_RUNNING:
        raise ConfigError(f"max_running must be an integer in 0..{MAX_RUNNING} (0 = no limit), got {max_running!r}")
    return max_running


def per_partition(max_running: int, partitions: int) -> int:
    """Each partition's share of a limit of ``max_running`` (0 = no limit stays 0)."""
    return 0 if max_running == 0 else -(-max_running // partitions)


async def set_fair_share(backend: Backend, queue: str, namespace: str, *, weight: float | None = None,
                         max_running: int | None = None) -> NamespaceShare:
    """Set ``namespace``'s weight and/or running limit on ``queue`` (None = leave as is).

    ``weight``: its share relative to the other namespaces with work (default 1);
    ``max_running``: at most this many of its leases at once (0 = no limit).
    Applies to every partition before it returns. Raises ConfigError on a bad value.
    """
    check_id("queue", queue)
    check_namespace(namespace)
    current = json.loads(await backend.redis.hget(SHARE_KEY, f"{queue} {namespace}") or "{}")
    if weight is not None:
        current["weight"] = _check_weight(weight)
    if max_running is not None:
        current["max_running"] = _check_max(max_running)
    await backend.redis.hset(SHARE_KEY, f"{queue} {namespace}", json.dumps(current))
    await apply(backend)
    return NamespaceShare(namespace, current.get("weight", 1.0), current.get("max_running", 0))


async def set_queue_limit(backend: Backend, queue: str, max_running: int) -> None:
    """At most ``max_running`` leases of ``queue`` at once, all namespaces together (0 = no limit)."""
    check_id("queue", queue)
    await backend.redis.hset(SHARE_KEY, queue, json.dumps({"max_running": _check_max(max_running)}))
    await apply(backend)


async def clear_fair_share(backend: Backend, queue: str, namespace: str | None = None) -> bool:
    """Forget ``namespace``'s weight and limit on ``queue`` (None: the queue's own limit). True if set."""
    check_id("queue", queue)
    field_ = queue if namespace is None else f"{queue} {check_namespace(namespace)}"
    removed = bool(await backend.redis.hdel(SHARE_KEY, field_))
    await apply(backend)
    return removed


async def stored(backend: Backend) -> dict[str, dict]:
    """What was asked: ``{queue: {"max_running": m, "namespaces": {ns: {...}}}}``."""
    out: dict[str, dict] = {}
    for raw_field, raw in (await backend.redis.hgetall(SHARE_KEY)).items():
        queue, _, ns = raw_field.decode().partition(" ")
        entry = out.setdefault(queue, {"max_running": 0, "namespaces": {}})
        value = json.loads(raw)
        if ns:
            entry["namespaces"][ns] = value
        else:
            entry["max_running"] = value.get("max_running", 0)
    return out


async def apply(backend: Backend) -> None:
    """Write every queue's stored weights and limits into each partition's ``share_key``.

    Only the weight and limit fields are replaced; the passes (``p:``) stay.
    """
    wanted = await stored(backend)
    for p in range(backend.partitions):
        keys = backend.keys(p)
        share_prefix = keys.share("")
        queues = set(wanted) | {raw.decode()[len(share_prefix):] async for raw in
                                backend.redis.scan_iter(match=share_prefix + "*", count=1000)}
        for queue in sorted(queues):
            entry = wanted.get(queue, {"max_running": 0, "namespaces": {}})
            fields: dict[str, str] = {}   # only what differs from the default (weight 1, no limit)
            if entry["max_running"]:
                fields["max"] = str(per_partition(entry["max_running"], backend.partitions))
            for ns, value in entry["namespaces"].items():
                if value.get("weight", 1.0) != 1.0:
                    fields[f"w:{ns}"] = repr(float(value["weight"]))
                if value.get("max_running", 0):
                    fields[f"max:{ns}"] = str(per_partition(value["max_running"], backend.partitions))
            key = keys.share(queue)
            old = [f.decode() for f in await backend.redis.hgetall(key)]   # (HKEYS is not in the ACL)
            stale = [f for f in old if (f == "max" or f.startswith(("w:", "max:"))) and f not in fields]
            pipe = backend.redis.pipeline(transaction=False)
            if stale:
                pipe.hdel(key, *stale)
            if fields:
                pipe.hset(key, mapping=fields)
            await pipe.execute()


async def show(backend: Backend, queue: str) -> QueueShares:
    """``queue``'s limits and weights with its running and queued figures, summed over partitions."""
    check_id("queue", queue)
    entry = (await stored(backend)).get(queue, {"max_running": 0, "namespaces": {}})
    running: dict[str, int] = {}
    queued: dict[str, int] = {}
    for p in range(backend.partitions):
        keys = backend.keys(p)
        for ns, count in (await backend.redis.hgetall(keys.running(queue))).items():
            running[ns.decode()] = running.get(ns.decode(), 0) + int(count)
        q_prefix = keys.queue("", "")[:-1]   # ``...q:``
        async for raw in backend.redis.scan_iter(match=f"{q_prefix}*:{queue}", count=1000):
            ns = raw.decode()[len(q_prefix):-(len(queue) + 1)]
            queued[ns] = queued.get(ns, 0) + await backend.redis.zcard(raw)
    names = sorted(set(entry["namespaces"]) | {n for n in running if n != "*"} | {n for n, q in queued.items() if q})
    shares = [NamespaceShare(ns, entry["namespaces"].get(ns, {}).get("weight", 1.0),
                             entry["namespaces"].get(ns, {}).get("max_running", 0),
                             running.get(ns, 0), queued.get(ns, 0)) for ns in names]
    return QueueShares(queue, entry["max_running"], running.get("*", 0), shares)


async def sync(backend: Backend) -> tuple[int, int]:
    """Repair each partition's fair-share state (fair_sync.lua): namespaces with queued work
    that are in no rotation (a queue filled before fair share) join it, and the running
    counters are recounted from the reap index. Returns (namespaces joined, leases counted)."""
    joined = counted = 0
    for p in range(backend.partitions):
        keys = backend.keys(p)
        q_prefix = keys.queue("", "")[:-1]   # ``...q:``
        pairs: list[str] = []
        queues: set[str] = set()
        async for raw in backend.redis.scan_iter(match=q_prefix + "*", count=1000):
            ns, _, queue = raw.decode()[len(q_prefix):].rpartition(":")
            pairs += [ns, queue]
            queues.add(queue)
        async for raw in backend.redis.scan_iter(match=keys.running("*"), count=1000):
            queues.add(raw.decode()[len(keys.running("")):])
        got = await backend.call("fair_sync", [keys.prefix], [len(pairs) // 2, *pairs, *sorted(queues)])
        joined, counted = joined + int(got[0]), counted + int(got[1])
    return joined, counted
