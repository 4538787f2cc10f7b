"""Deterministic simulation: determinism, the real system passing, each broken switch caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lessor.simulations.breakage import Breakage, Switch
from lessor.simulations.explore import explore, simulation_portal
from lessor.simulations.plan import Abort, Fault, Plan, Submit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUSY_PLAN = Plan(
    seed=7, workers=3, heal_ms=6000,
    submits=tuple(Submit(at_ms=150 * i, work_ms=300 + 400 * (i % 5), user_retries=1, fail_attempts=i % 3 == 0)
                  for i in range(12)),
    faults=(Fault("partition", 200, worker=0, duration_ms=2500), Fault("pause", 400, worker=1, duration_ms=2200),
            Fault("delay", 100, worker=2, duration_ms=1500, delay_ms=2500), Fault("lost_reply", 900, worker=2, count=2),
            Fault("crash", 1700, worker=2, duration_ms=400), Fault("clock_jump", 2500, delta_ms=3000),
            Fault("server_restart", 3000), Fault("reaper_down", 3100, duration_ms=800),
            Fault("slow_reaper", 4000, duration_ms=1000, factor=5.0), Fault("drift", 0, worker=1, rate=1.02)),
    aborts=(Abort(1200, 4),),
)


# A completion delayed in the network past the lease's expiry. The worker sends it again with the
# same token once the delay ends, which commits it; its renewal that arrives late is refused.
LATE_PACKET_PLAN = Plan(seed=3, workers=2, heal_ms=5000, submits=(Submit(0, 2000),),
                        faults=(Fault("delay", 1950, worker=0, duration_ms=500, delay_ms=2500),))


@pytest.fixture(scope="module")
def sim():
    with simulation_portal() as (run, server):
        yield run


def test_same_plan_same_event_log_byte_for_byte(sim):
    first = sim(BUSY_PLAN)
    second = sim(BUSY_PLAN)
    assert first.result.raw == second.result.raw
    assert len(first.result.raw) > 80
    stats = first.result.stats
    assert stats["lease_expired"] > 0 and stats["failovers"] > 0, stats
    assert first.verdict.ok, [str(v) for v in first.verdict.violations]
    late = sim(LATE_PACKET_PLAN)
    assert late.result.raw == sim(LATE_PACKET_PLAN).result.raw
    assert late.result.stats["stale_reports_refused"] > 0 and late.verdict.ok
    other_seed = sim(Plan(**{**BUSY_PLAN.__dict__, "seed": 8}))
    assert other_seed.verdict.ok


def test_plans_round_trip_through_json_and_bad_plans_are_named():
    assert Plan.from_json(BUSY_PLAN.to_json()) == BUSY_PLAN
    with pytest.raises(ValueError, match="not a lessor simulation plan"):
        Plan.from_json('{"workers": 2}')
    with pytest.raises(ValueError, match="unknown fault kind 'meteor'"):
        Fault("meteor", 0)
    with pytest.raises(ValueError, match="names worker 5"):
        Plan(seed=1, workers=2, submits=(Submit(0, 10),), faults=(Fault("pause", 0, worker=5),))


def test_the_real_system_passes_a_bounded_exploration():
    found = explore(25, seed=11, max_workers=4, max_runs=12, max_faults=8)
    assert found.shrunk is None, [str(v) for v in found.shrunk.verdict.violations]
    assert found.examples == 25 and found.totals["attempts"] > found.totals["runs"]


# Each switch breaks one mechanism; the fault profile aims the search at it.
SWITCH_CASES = [
    (Switch.SKIP_TOKEN_CHECK, ("delay", "partition", "clock_jump"), {"single_owner"}),
    (Switch.SKIP_SELF_FENCING, ("partition",), {"no_runaway", "no_overlap"}),
    (Switch.REAPER_IGNORES_GRACE, ("partition", "pause"), {"expiry_respected", "no_runaway", "no_overlap"}),
    (Switch.REAPER_DOUBLE_EXPIRES, None, {"expiry_respected", "no_runaway", "no_overlap"}),
    (Switch.RENEW_IGNORES_ABORT, None, {"abort_respected"}),
    # The outcome policy the real Worker shares (tests/test_outcome.py catches it there too).
    (Switch.ERROR_REPORTED_AS_SUCCESS, None, {"outcomes_faithful"}),
    # Schedules: a tick.lua without its ticker fence and last-tick guard fires ticks twice.
    (Switch.TICK_UNFENCED, ("pause", "partition"), {"ticks_exactly_once"}),
]


@pytest.mark.parametrize("switch, kinds, checkers", SWITCH_CASES, ids=[c[0].value for c in SWITCH_CASES])
def test_each_broken_switch_is_caught_with_a_shrunk_plan(switch, kinds, checkers, sim):
    found = explore(150, seed=1, breakage=Breakage(switch), shrink_runs=40, max_workers=3, max_runs=8,
                    max_faults=5, fault_kinds=kinds)
    assert found.shrunk is not None, f"{switch.value} was not caught in {found.examples} examples"
    caught_by = {v.checker for v in found.shrunk.verdict.violations}
    assert caught_by & checkers, caught_by
    print(f"\n{switch.value}: caught at example {found.first_failure_at}; shrunk plan: "
          f"{len(found.shrunk.plan.submits)} runs, {len(found.shrunk.plan.faults)} faults")
    # The shrunk plan replays exactly: still failing with the switch, passing without it.
    assert not sim(found.shrunk.plan, Breakage(switch)).verdict.ok
    assert sim(found.shrunk.plan).verdict.ok


def test_replay_command_and_timeline(tmp_path):
    plan_path, svg_path = tmp_path / "plan.json", tmp_path / "timeline.svg"
    plan_path.write_text(BUSY_PLAN.to_json())
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "lessor", "simulate", "--replay", str(plan_path), "--timeline",
                           str(svg_path), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["violations"] == [] and out["stats"]["lease_expired"] > 0
    svg = svg_path.read_text()
    assert svg.startswith("<svg") and "grace" in svg and "refused" in svg and "heal" in svg
    bad = subprocess.run([sys.executable, "-m", "lessor", "simulate", "--replay", str(tmp_path / "nope.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "no plan file" in bad.stderr


def test_live_chaos_runs_real_workers_through_faults_and_passes_the_checkers():
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "lessor", "chaos", "--duration", "8", "--seed", "2", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["violations"] == [], out
    assert out["runs"] > 10 and out["runs_succeeded"] > 0 and sum(out["faults"].values()) >= 2, out
    assert out["quiesce_after_heal_s"] is not None


def test_save_plan_writes_the_plan_it_ran_without_a_violation_and_it_replays(tmp_path):
    plan_path = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "lessor", "simulate", "--examples", "1", "--seed", "3",
                           "--save-plan", str(plan_path), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["violation"] is False
    assert "the last plan explored" in proc.stderr and str(plan_path) in proc.stderr
    plan = Plan.from_json(plan_path.read_text())
    replayed = subprocess.run([sys.executable, "-m", "lessor", "simulate", "--replay", str(plan_path), "--json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert replayed.returncode == 0, replayed.stderr
    out = json.loads(replayed.stdout)
    assert out["violations"] == [] and out["stats"]["runs"] == len(plan.submits)
