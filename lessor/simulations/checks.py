"""Run every checker over one simulation's evidence."""

from __future__ import annotations

from dataclasses import dataclass

from lessor.leasing.backend import Backend
from lessor.leasing.replay import verify
from lessor.simulations.checkers import (
    Violation, abort_respected, expiry_respected, liveness, no_overlap, no_runaway, refusals_recorded,
    single_owner,
)
from lessor.simulations.simulator import SimResult


@dataclass(frozen=True)
class Verdict:
    """All violations of one run, and the overlap time measured."""

    violations: list[Violation]
    overlap_ms: int

    @property
    def ok(self) -> bool:
        return not self.violations


async def check_all(result: SimResult, backend: Backend) -> Verdict:
    """Every checker; replay --verify last (it reads the live projection)."""
    pairs = [(e.partition, e.event) for e in result.entries]
    plan = result.plan
    within = not plan.drift_exceeds_bound()
    violations = (
        single_owner.check(pairs)
        + refusals_recorded.check(pairs, result.truth)
        + no_overlap.check(result.truth, within)
        + no_runaway.check(pairs, result.truth, within, not plan.server_clock_goes_back())
        + expiry_respected.check(pairs, result.truth, plan.config.ttl_ms)
        + abort_respected.check(pairs, result.truth)
        + liveness.check(pairs, result.truth.submitted, result.quiesced_ms, result.liveness_deadline_ms)
    )
    violations += [Violation("replay_verify", d.key, str(d)) for d in await verify(backend)]
    return Verdict(violations, sum(no_overlap.overlap_ms(result.truth).values()))
