"""Living through store outages: which errors are transient, backoff, and one line per outage.

Every long-lived lessor process (worker, reaper, the watcher behind ``wait()``)
must outlive a restart, a failover or a network cut of its server. They all
use the same three pieces:

- ``is_transient(exc)``: the errors that mean "not now" rather than "never":
  a dead or refused connection, a timeout, and the server's own BUSY, LOADING,
  READONLY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN and NOREPLICAS answers.
- ``Backoff``: capped exponential backoff with full jitter (AWS's "full
  jitter"), so a fleet that lost its server does not come back in lockstep.
- ``Outage``: says once when the server is lost and once when it is back, with
  the outage length, and counts both in OpenTelemetry.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import anyio

from redis.exceptions import AskError, AuthenticationError, AuthorizationError, ClusterDownError, ClusterError
from redis.exceptions import RedisClusterException, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lessor import telemetry
from lessor.core.clock import MonotonicClock, SystemMonotonicClock
from lessor.errors import StoreUnavailable

# Server answers that mean the server cannot serve *now*: a replica promoted a
# moment ago, a primary loading its AOF, a script running too long, a cluster
# slot migrating or failing over.
TRANSIENT_REPLIES = ("BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
                     "UNBLOCKED", "ASK", "MOVED", "OOM", "MISCONF")


def is_transient(exc: BaseException) -> bool:
    """True if retrying the same call later may succeed (connection lost, server busy or failing over)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False  # a wrong password or a missing permission does not heal by waiting
    if isinstance(exc, RedisClusterException) and "cannot be connected" in str(exc):
        return True  # no startup node answered: the whole cluster is unreachable for now
    if isinstance(exc, ResponseError) and "used memory > 'maxmemory'" in str(exc):
        return True  # Valkey's OOM answer carries no OOM prefix
    if isinstance(exc, (StoreUnavailable, SlotNotCoveredError, RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError,
                        ClusterError, ClusterDownError, TryAgainError, MovedError, AskError, ReadOnlyError)):
        return True  # redis-py's own classes for a cluster failing over or moving slots
    if isinstance(exc, OSError):  # socket errors below redis-py (ECONNRESET, EPIPE)
        return True
    if isinstance(exc, ResponseError):
        return str(exc).split(" ", 1)[0].upper() in TRANSIENT_REPLIES
    if isinstance(exc, RuntimeError) and "handler is closed" in str(exc):
        return True  # uvloop's word for a transport the peer closed under us (a server killed mid-call)
    if isinstance(exc, AttributeError) and _raised_inside_redis_py(exc):
        return True  # redis-py's asyncio cluster client writing to a connection a dead node closed
    return False


def _raised_inside_redis_py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and f"{os.sep}redis{os.sep}" in last


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * 2^n)]."""

    base_ms: float = 50.0
    cap_ms: float = 2000.0
    rng: random.Random | None = None
    attempt: int = 0

    def next_ms(self) -> float:
        """The delay before the next try (and count this try)."""
        rng = self.rng or random
        ceiling = min(self.cap_ms, self.base_ms * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return max(1.0, rng.uniform(0, ceiling))

    def reset(self) -> None:
        """Back to the shortest delay (after a success)."""
        self.attempt = 0


class Outage:
    """One component's view of its server: up, or down since when. Logs one line per change.

    ``failed(exc)`` on every failed call returns the delay to wait before the
    next try; ``ok()`` after any successful call. Both are cheap when nothing
    changes, so they can sit on hot paths.
    """

    def __init__(self, component: str, url: str = "", *, clock: MonotonicClock | None = None,
                 log: logging.Logger | None = None, backoff: Backoff | None = None) -> None:
        self.component = component
        self.url = url
        self.clock = clock or SystemMonotonicClock()
        self.log = log or logging.getLogger("lessor.outage")
        self.backoff = backoff or Backoff()
        self.down_since_ms: float | None = None
        self.outages = 0
        self.longest_ms = 0.0
        self.last_error = ""

    @property
    def down(self) -> bool:
        return self.down_since_ms is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failed call; returns how long to wait (ms) before trying again."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.down_since_ms is None:
            self.down_since_ms = self.clock.now_ms()
            self.outages += 1
            telemetry.instruments().store_outages.add(1, {"component": self.component})
            where = f" at {self.url}" if self.url else ""
            self.log.warning("%s: lost the server%s (%s); retrying with backoff until it is back",
                             self.component, where, self.last_error)
        return self.backoff.next_ms()

    def mark(self) -> int:
        """Taken just before a call and given back to ``ok(mark)``: which outage the call was sent in."""
        return self.outages

    def ok(self, mark: int | None = None) -> None:
        """Record a successful call; logs the recovery (with the outage length) if we were down.

        ``mark``: the call's ``mark()``. A call sent before the current outage began, whose
        answer came in late, proves nothing about the server now: a worker's completion
        answered just before a crash logged "back after 0.0 s" between two "lost" lines.
        """
        if self.down_since_ms is None or (mark is not None and mark < self.outages):
            return
        length_ms = self.clock.now_ms() - self.down_since_ms
        self.down_since_ms = None
        self.backoff.reset()
        self.longest_ms = max(self.longest_ms, length_ms)
        telemetry.instruments().store_outage_ms.record(length_ms, {"component": self.component})
        self.log.warning("%s: the server is back after an outage of %.1f s", self.component, length_ms / 1000)


async def keep_running(step, interval_ms: int, outage: Outage | None = None) -> None:
    """Call ``step()`` forever, ``interval_ms`` apart, or again at once when it returns True
    (more is due). Transient store faults are waited out through ``outage`` (one log line
    each way); anything else, or any fault without an ``outage``, is raised. A step that
    returns None sent nothing to the server, so it tells the outage nothing (a quiet pass
    must not report a lost server as back)."""
    while True:
        mark = outage.mark() if outage is not None else None
        try:
            more = await step()
            if outage is not None and more is not None:
                outage.ok(mark)
            delay_ms = 0 if more else interval_ms
        except Exception as exc:  # sorted here: transient ones are waited out, the rest are bugs to see
            if outage is None or not is_transient(exc):
                raise
            delay_ms = outage.failed(exc)
        await anyio.sleep(delay_ms / 1000)
