"""Worker presence: which workers run, where, and which version.

The lease index says which workers hold leases; it cannot say a worker's
host, pid or version, nor that an idle worker is alive. So each worker keeps
one field of ``WORKERS`` (a hash, on partition 0 only: one small key, not one
per partition): its id -> a JSON object (``Presence``). It writes it when it
starts and every ``ANNOUNCE_MS`` after that, with ``seen_ms`` from the
server's clock (``TIME``: the server judges every deadline, and so every age
shown), and deletes it when it stops cleanly. A worker that dies leaves its
entry: readers show it as gone once it is ``STALE_MS`` old, and a starting
worker deletes entries older than ``FORGET_MS``, so the hash stays about the
size of the fleet.

Not a lease and not fenced: presence is for people reading ``lessor
workers`` and the dashboard; nothing decides ownership from it.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass

from lessor.leasing.backend import Backend

ANNOUNCE_MS = 10_000           # how often a worker rewrites its entry
STALE_MS = 3 * ANNOUNCE_MS     # an entry older than this is of a worker that stopped without saying so
FORGET_MS = 3_600_000          # a starting worker deletes entries older than this
READ_CAP = 2_000               # entries a reader parses at most


@dataclass(frozen=True)
class Presence:
    """One worker as it announced itself."""

    worker: str
    host: str
    pid: int
    version: str
    namespace: str
    queue: str
    concurrency: int
    started_ms: int   # server ms
    seen_ms: int      # server ms of its latest announcement

    def stale(self, now_ms: int) -> bool:
        """Not announced for STALE_MS: the worker stopped without withdrawing (killed, or cut off)."""
        return now_ms - self.seen_ms > STALE_MS


def _key(backend: Backend) -> str:
    return backend.keys(0).named("WORKERS")


async def server_ms(backend: Backend) -> int:
    """The server's clock, in ms."""
    seconds, micros = await backend.redis.time()
    return seconds * 1000 + micros // 1000


def _version() -> str:
    # The installed distribution's version (lessor/__init__.py sits above this layer).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lessor")
    except PackageNotFoundError:
        return "unknown"


def this_process(worker: str, namespace: str, queue: str, concurrency: int, started_ms: int) -> Presence:
    """The presence of a worker in this process (host name, pid, lessor's installed version)."""
    return Presence(worker=worker, host=socket.gethostname()[:100], pid=os.getpid(), version=_version(),
                    namespace=namespace, queue=queue, concurrency=concurrency, started_ms=started_ms,
                    seen_ms=started_ms)


async def announce(backend: Backend, me: Presence) -> Presence:
    """Write ``me`` with seen_ms = the server's now; returns what was written."""
    now = await server_ms(backend)
    me = Presence(**{**asdict(me), "seen_ms": now, "started_ms": me.started_ms or now})
    await backend.redis.hset(_key(backend), me.worker, json.dumps(asdict(me)))
    return me


async def withdraw(backend: Backend, worker: str) -> None:
    """Delete ``worker``'s entry (it stops cleanly)."""
    await backend.redis.hdel(_key(backend), worker)


async def forget_stale(backend: Backend, now_ms: int) -> int:
    """Delete entries not announced for FORGET_MS (workers that died long ago); returns how many."""
    old = [p.worker for p in await read(backend) if now_ms - p.seen_ms > FORGET_MS]
    if old:
        await backend.redis.hdel(_key(backend), *old)
    return len(old)


def _parse(worker: str, raw: bytes) -> Presence | None:
    try:
        d = json.loads(raw)
        return Presence(worker=worker, host=str(d.get("host", "")), pid=int(d.get("pid", 0)),
                        version=str(d.get("version", "")), namespace=str(d.get("namespace", "")),
                        queue=str(d.get("queue", "")), concurrency=int(d.get("concurrency", 0)),
                        started_ms=int(d.get("started_ms", 0)), seen_ms=int(d.get("seen_ms", 0)))
    except (ValueError, TypeError, AttributeError):
        return None  # not written by a lessor worker: skipped, as the log's readers skip foreign entries


async def read(backend: Backend, cap: int = READ_CAP) -> list[Presence]:
    """Every announced worker (at most ``cap`` parsed): one HGETALL. The hash holds about one
    entry per worker of the last hour (FORGET_MS), so it is as large as the fleet, not the store."""
    raw = await backend.redis.hgetall(_key(backend))
    found = (_parse(k.decode("utf-8", "replace"), v) for k, v in list(raw.items())[:cap])
    return sorted((p for p in found if p is not None), key=lambda p: p.worker)
