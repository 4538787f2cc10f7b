"""The simulated network and fault schedule: what happens to each message of a worker.

Also the store errors injected under the reapers: a redis client whose
connections fail, as a dropped connection does, while a ``store_errors`` fault
is in force, so the whole real stack above it (redis-py's retry, Backend.call's
StoreUnavailable, the Reaper) meets them.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from lessor.leasing.backend import make_redis
from lessor.simulations.plan import Fault, Plan


class InjectedErrors:
    """A switch the simulator flips at each step: on = every call on a flaky client fails."""

    def __init__(self) -> None:
        self.on = False
        self.failed_calls = 0


def flaky_client(url: str, injected: InjectedErrors) -> aioredis.Redis:
    """A client for ``url`` whose every send fails with a connection error while ``injected.on``."""
    client = make_redis(url)
    base = client.connection_pool.connection_class

    class FlakyConnection(base):  # type: ignore[misc, valid-type]
        async def send_packed_command(self, command, check_health: bool = True) -> None:
            if injected.on:
                injected.failed_calls += 1
                raise RedisConnectionError("simulated store error: connection reset by peer")
            await super().send_packed_command(command, check_health)

    client.connection_pool.connection_class = FlakyConnection
    return client


class FaultSchedule:
    """Answers, for a worker and a true time, which faults are in force (all end at heal)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.heal_ms = plan.heal_ms
        self._by_kind: dict[str, list[Fault]] = {}
        for fault in plan.faults:
            self._by_kind.setdefault(fault.kind, []).append(fault)

    def _active(self, kind: str, worker: int | None, t: int) -> list[Fault]:
        if t >= self.heal_ms:
            return []
        return [f for f in self._by_kind.get(kind, ())
                if (worker is None or f.worker == worker) and f.at_ms <= t < f.at_ms + f.duration_ms]

    def partitioned(self, worker: int, t: int) -> bool:
        return bool(self._active("partition", worker, t))

    def delay_ms(self, worker: int, t: int) -> int:
        return max((f.delay_ms for f in self._active("delay", worker, t)), default=0)

    def reply_delay_ms(self, worker: int, t: int) -> int:
        """How long a reply sent to ``worker`` at ``t`` takes (delay and slow_reply faults)."""
        return self.delay_ms(worker, t) + max((f.delay_ms for f in self._active("slow_reply", worker, t)), default=0)

    def reaper_down(self, t: int) -> bool:
        return bool(self._active("reaper_down", None, t))

    def store_errors(self, t: int) -> bool:
        return bool(self._active("store_errors", None, t))

    def reaper_factor(self, t: int) -> float:
        return max((f.factor for f in self._active("slow_reaper", None, t)), default=1.0)

    def drift_rate(self, worker: int, t: int) -> float:
        """The worker's clock rate at t (the latest drift fault that started; drift outlives heal)."""
        rates = [f for f in self._by_kind.get("drift", ()) if f.worker == worker and f.at_ms <= t]
        return max(rates, key=lambda f: f.at_ms).rate if rates else 1.0
