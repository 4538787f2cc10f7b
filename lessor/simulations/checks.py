"""Run every checker over one simulation's evidence."""

from __future__ import annotations

from dataclasses import dataclass

from lessor.core import events as ev
from lessor.leasing.backend import Backend
from lessor.leasing.replay import verify
from lessor.simulations.checkers import (
    Violation, abort_respected, durable_acks_survive, expiry_respected, fair_share, liveness, no_overlap, no_runaway,
    outcomes_faithful, refusals_recorded, reports_persist, running_released, single_owner, ticks_exactly_once,
    tokens_unique,
)
from lessor.simulations.simulator import SimResult, Simulator
from lessor.simulations.truth import Truth


@dataclass(frozen=True)
class Verdict:
    """All violations of one run, and the overlap time measured."""

    violations: list[Violation]
    overlap_ms: int

    @property
    def ok(self) -> bool:
        return not self.violations


def rolled_back(pairs, truth: Truth) -> tuple[frozenset[str], frozenset[tuple[str, int]]]:
    """What a crash or failover made the server forget: runs whose submit, and (ref, token)
    grants a worker heard, are missing from the final log because their step was rolled back."""
    created = {e.run for _, e in pairs if isinstance(e, ev.RunCreated)}
    leased = {(f"{e.ns}/{e.run}/{e.action}", e.token) for _, e in pairs if isinstance(e, ev.ActionLeased)}
    runs = frozenset(run for run, step in truth.submit_steps.items() if run not in created and truth.lost(step))
    grants = frozenset((g.ref, g.token) for g in truth.grants
                       if (g.ref, g.token) not in leased and truth.lost(g.ran_step))
    return runs, grants


async def check_all(result: SimResult, backend: Backend) -> Verdict:
    """Every checker; replay --verify last (it reads the live projection)."""
    pairs = [(e.partition, e.event) for e in result.entries]
    plan, truth = result.plan, result.truth
    within = not plan.drift_exceeds_bound()
    lost_runs, lost_grants = rolled_back(pairs, truth)
    violations = (
        single_owner.check(pairs)
        + tokens_unique.check(truth)
        + refusals_recorded.check(pairs, truth)
        + no_overlap.check(truth, within, lost_grants)
        + no_runaway.check(pairs, truth, within, not plan.server_clock_goes_back())
        + expiry_respected.check(pairs, truth, plan.config.ttl_ms)
        + abort_respected.check(pairs, truth)
        + reports_persist.check(truth, plan.config.report_timeout_ms)
        + durable_acks_survive.check(pairs, truth)
        + outcomes_faithful.check(pairs, truth.produced)
        + fair_share.check(pairs)   # weights 1; judges queues with two or more namespaces
        + ticks_exactly_once.check(pairs, truth.ticks_due_by_ms)
        + liveness.check(pairs, truth.submitted, result.quiesced_ms, result.liveness_deadline_ms, lost_runs)
    )
    violations += await running_released.check(backend, Simulator.queue, result.quiesced_ms is not None)
    violations += [Violation("replay_verify", d.key, str(d)) for d in await verify(backend)]
    return Verdict(violations, sum(no_overlap.overlap_ms(truth, lost_grants).values()))
