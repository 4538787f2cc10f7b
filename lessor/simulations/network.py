"""The simulated network and fault schedule: what happens to each message of a worker."""

from __future__ import annotations

from lessor.simulations.plan import Fault, Plan


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

    def reaper_down(self, t: int) -> bool:
        return bool(self._active("reaper_down", None, t))

    def reaper_factor(self, t: int) -> float:
        return max((f.factor for f in self._active("slow_reaper", None, t)), default=1.0)

    def drift_rate(self, worker: int, t: int) -> float:
        """The worker's clock rate at t (the latest drift fault that started; drift outlives heal)."""
        rates = [f for f in self._by_kind.get("drift", ()) if f.worker == worker and f.at_ms <= t]
        return max(rates, key=lambda f: f.at_ms).rate if rates else 1.0
