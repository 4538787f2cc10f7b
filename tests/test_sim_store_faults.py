"""Store faults in the deterministic simulation: crashes that lose the unsynced AOF tail,
failovers to a lagging replica, reaper crashes, store errors under the reapers.

The real system passes them; each store-fault switch (breakage.py) is caught by a
hand-written plan aimed at its mechanism (fast, no search); plans with store faults
replay byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from lessor.simulations.breakage import Breakage, Switch
from lessor.simulations.explore import explore, simulation_portal
from lessor.simulations.plan import Abort, Config, Fault, Plan, Submit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every store fault, twice where it matters, on a small busy workload.
STORE_PLAN = Plan(
    seed=5, workers=3, heal_ms=6000,
    submits=tuple(Submit(at_ms=120 * i, work_ms=200 + 350 * (i % 4), user_retries=1, fail_attempts=i % 4 == 1)
                  for i in range(10)),
    faults=(Fault("server_crash", 700), Fault("partition", 900, worker=1, duration_ms=700),
            Fault("failover", 1900, lag_ms=700), Fault("lost_reply", 2100, worker=0, count=2),
            Fault("store_errors", 2300, duration_ms=900), Fault("reaper_crash", 2600, duration_ms=1200),
            Fault("server_restart", 3300), Fault("failover", 4000, lag_ms=300), Fault("server_crash", 4600)),
    aborts=(Abort(1500, 3),),
)

# One plan per switch, aimed at the mechanism it breaks, and the checkers that must say so.
SWITCH_PLANS = [
    # w0 finishes inside a partition: its completion gets no answer. The real worker sends it
    # again with the same token until the lease's self-fence deadline; the broken one drops it.
    (Switch.REPORT_GIVES_UP, Plan(seed=1, workers=2, heal_ms=5000, submits=(Submit(0, 1000),),
                                  faults=(Fault("partition", 950, worker=0, duration_ms=600),)),
     {"reports_persist"}),
    # Every reaper (the dedicated one, each worker's passes) meets store errors. A failed
    # attempt's retry waits in backoff, which only a reaper ends: nothing may strand it.
    (Switch.REAPER_DIES, Plan(seed=1, workers=2, heal_ms=5000,
                              submits=(Submit(0, 50, user_retries=1, fail_attempts=1),),
                              faults=(Fault("store_errors", 0, duration_ms=1000),)),
     {"liveness"}),
    # A replica 1.8 s behind is promoted: the renewals of that window are gone, and the
    # lease must get a full ttl back before anything may expire it.
    (Switch.NO_EPOCH_EXTENSION, Plan(seed=1, workers=2, heal_ms=6000, submits=(Submit(0, 4000),),
                                     faults=(Fault("failover", 2500, lag_ms=1800),)),
     {"expiry_respected"}),
    # A restart makes the token counter jump ahead of its clock floor (the grant at 200 ms
    # stores it); then a promotion of the same process (same run_id, new master_replid) from
    # 340 ms loses the grants of 350 ms: their tokens must not be issued again.
    (Switch.TOKEN_EPOCH_RUN_ID_ONLY, Plan(seed=1, workers=2, heal_ms=5000,
                                          submits=(Submit(0, 100), Submit(200, 100), Submit(340, 300), Submit(345, 300)),
                                          faults=(Fault("server_restart", 100), Fault("failover", 700, lag_ms=360))),
     {"tokens_unique"}),
    # fsync claimed but no WAITAOF sent: a crash cuts the AOF back to the last everysec sync
    # and takes acknowledged grants and completions with it.
    (Switch.SKIP_DURABILITY_WAIT, Plan(seed=1, workers=2, heal_ms=5000, config=Config(durability="fsync"),
                                       submits=(Submit(600, 50), Submit(700, 50), Submit(800, 50)),
                                       faults=(Fault("server_crash", 900),)),
     {"durable_acks_survive"}),
]


@pytest.fixture(scope="module")
def sim():
    with simulation_portal() as (run, _):
        yield run


@pytest.mark.parametrize("durability", ["memory", "fsync"])
def test_store_fault_plan_replays_byte_for_byte_and_passes(sim, durability):
    plan = dataclasses.replace(STORE_PLAN, config=Config(durability=durability))
    first, second = sim(plan), sim(plan)
    assert first.verdict.ok, [str(v) for v in first.verdict.violations]
    stats = first.result.stats
    # Both crashes and both failovers rolled data back; the reapers met (and absorbed) errors.
    assert stats["data_losses"] == 4 and stats["store_errors"] > 0 and stats["failovers"] > 0, stats
    assert first.result.raw == second.result.raw


def test_the_real_system_passes_store_fault_examples():
    found = explore(12, seed=3, store_faults=True, max_workers=3, max_runs=8, max_faults=5)
    assert found.shrunk is None, [str(v) for v in found.shrunk.verdict.violations]
    assert found.examples == 12 and found.totals["data_losses"] > 0


@pytest.mark.parametrize("switch, plan, checkers", SWITCH_PLANS,
                         ids=[c[0].value for c in SWITCH_PLANS])
def test_each_store_fault_switch_is_caught_by_a_targeted_plan(sim, switch, plan, checkers):
    broken = sim(plan, Breakage(switch))
    caught_by = {v.checker for v in broken.verdict.violations}
    assert caught_by & checkers, (switch.value, [str(v) for v in broken.verdict.violations])
    real = sim(plan)
    assert real.verdict.ok, [str(v) for v in real.verdict.violations]


def test_store_fault_plans_round_trip_through_json():
    assert Plan.from_json(STORE_PLAN.to_json()) == STORE_PLAN
    for case in SWITCH_PLANS:
        plan = case[1]
        assert Plan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="durability"):
        Config(durability="sometimes")
    with pytest.raises(ValueError, match="must be >= 0"):
        Fault("failover", 10, lag_ms=-1)


def test_a_switch_plan_replays_through_the_test_only_entry_point(tmp_path):
    switch, plan, checkers = SWITCH_PLANS[0]
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"}
    caught = subprocess.run([sys.executable, "-m", "lessor.simulations.catch", switch.value, "--replay", str(path),
                             "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert caught.returncode == 1, caught.stderr
    assert any(c in v for v in json.loads(caught.stdout)["violations"] for c in checkers), caught.stdout
    real = subprocess.run([sys.executable, "-m", "lessor", "simulate", "--replay", str(path), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert real.returncode == 0 and json.loads(real.stdout)["violations"] == [], real.stdout
