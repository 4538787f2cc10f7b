"""Run every checker over one simulation's evidence."""

from __future__ import annotations

from dataclasses import dataclass

from lessor.core import events as ev
from lessor.errors import LessorError
from lessor.leasing.backend import Backend
from lessor.leasing.replay import verify
from lessor.simulations.checkers import (
    Violation, abort_respected, cache_faithful, current_token, deadlines_by_rule, durable_acks_survive,
    expiry_respected, fair_share, history, liveness, no_overlap, no_runaway, no_server_errors, outcomes_faithful,
    ready_respected, refusals_recorded, reports_persist, retry_budgets, running_released, single_owner,
    submits_idempotent, ticks_exactly_once, tokens_unique, writes_within_lease,
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


def check_result(result: SimResult, partitions: int) -> list[Violation]:
    """Every checker that reads the evidence alone (the log, the truth, the plan)."""
    pairs = [(e.partition, e.event) for e in result.entries]
    plan, truth = result.plan, result.truth
    lost_runs, lost_grants = rolled_back(pairs, truth)
    past = history.build(pairs, truth, partitions)
    return (
        [Violation("history", "the log", why) for why in past.misplaced()[:3]]
        + single_owner.check(pairs)
        + current_token.check(past)
        + writes_within_lease.check(past)
        + deadlines_by_rule.check(pairs)
        + tokens_unique.check(truth)
        + refusals_recorded.check(pairs, truth)
        + no_overlap.check(past, plan, lost_grants)
        + no_runaway.check(past, plan)
        + expiry_respected.check(pairs, truth, plan.config.ttl_ms)
        + abort_respected.check(past)
        + retry_budgets.check(pairs)
        + ready_respected.check(past)
        + reports_persist.check(truth, plan.config.report_timeout_ms)
        + durable_acks_survive.check(pairs, truth)
        + outcomes_faithful.check(pairs, truth.produced)
        + cache_faithful.check(pairs, truth.cache, truth.results)
        + submits_idempotent.check(past)
        + no_server_errors.check(truth)
        + fair_share.check(pairs, {(Simulator.queue, ns): w for ns, w in plan.namespaces})
        + ticks_exactly_once.check(pairs, truth.ticks_due_by_ms)
        + liveness.check(pairs, truth.submitted, result.quiesced_ms, result.liveness_deadline_ms, lost_runs)
    )


async def check_all(result: SimResult, backend: Backend) -> Verdict:
    """Every checker; then the live state: running counts, and replay --verify last (it reads the
    live projection)."""
    violations = check_result(result, backend.partitions)
    violations += await running_released.check(backend, Simulator.queue, result.quiesced_ms is not None)
    try:
        violations += [Violation("replay_verify", d.key, str(d)) for d in await verify(backend)]
    except LessorError as exc:  # a log the fold refuses (an illegal transition): itself a violation
        violations.append(Violation("replay_verify", "the log", f"does not fold: {type(exc).__name__}: {exc}"))
    _, lost_grants = rolled_back([(e.partition, e.event) for e in result.entries], result.truth)
    return Verdict(violations, sum(no_overlap.overlap_ms(result.truth, lost_grants).values()))
