"""Simulation speed: scenarios per minute at a fixed size (runs, workers, faults per scenario).

Plans are drawn from a seeded random generator at exactly the requested size
(hypothesis' plans vary in size), then simulated and checked one after the
other, as an exploration does.
"""

from __future__ import annotations

import argparse
import random
import time

from lessor.benchmarks.common import dump_json, print_table
from lessor.simulations.explore import simulation_portal
from lessor.simulations.plan import FAULT_KINDS, Abort, Fault, Plan, Submit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", type=int, default=100)
    p.add_argument("--actions", type=int, default=50, help="runs per scenario (default 50)")
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--faults", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")


def random_plan(rng: random.Random, actions: int, workers: int, faults: int, horizon_ms: int = 8000) -> Plan:
    """A plan of exactly this size: submits in the first half, faults anywhere before heal."""
    kinds = [k for k in FAULT_KINDS if k != "server_restart"]
    submits = tuple(Submit(at_ms=rng.randrange(horizon_ms // 2), work_ms=rng.choice([rng.randint(50, 500),
                                                                                    rng.randint(1500, 6000)]),
                           user_retries=rng.randint(0, 2), system_retries=rng.randint(0, 3),
                           fail_attempts=rng.randint(0, 2)) for _ in range(actions))
    drawn = []
    for _ in range(faults):
        kind = rng.choice(kinds)
        drawn.append(Fault(kind, rng.randrange(horizon_ms), worker=rng.randrange(workers),
                           duration_ms=rng.randint(100, 4500), count=rng.randint(1, 5),
                           delay_ms=rng.randint(1, 4500), delta_ms=rng.randint(-500, 3000),
                           rate=round(rng.uniform(0.95, 1.05), 3), factor=rng.choice([2.0, 5.0])))
    aborts = tuple(Abort(rng.randrange(horizon_ms), rng.randrange(actions)) for _ in range(2))
    return Plan(seed=rng.getrandbits(32), workers=workers, submits=submits,
                faults=tuple(sorted(drawn, key=lambda f: f.at_ms)), aborts=aborts, heal_ms=horizon_ms)


def main(args: argparse.Namespace) -> int:
    """`lessor bench simulate`."""
    rng = random.Random(args.seed)
    plans = [random_plan(rng, args.actions, args.workers, args.faults) for _ in range(args.scenarios)]
    violations = events = 0
    with simulation_portal(args.redis_url) as (run, _):
        started = time.perf_counter()  # clock: benchmark timing only
        for i, plan in enumerate(plans):
            outcome = run(plan)
            violations += len(outcome.verdict.violations)
            events += outcome.result.stats["events"]
            if not outcome.verdict.ok:  # a benchmark that finds a bug says so, with the plan to replay
                path = f"lessor-bench-plan-{args.seed}-{i}.json"
                with open(path, "w") as f:
                    f.write(plan.to_json())
                for v in outcome.verdict.violations:
                    print(f"violation in scenario {i}: {v} (replay: lessor simulate --replay {path})")
        seconds = time.perf_counter() - started  # clock: benchmark timing only
    out = {"scenarios": args.scenarios, "actions_per_scenario": args.actions, "workers": args.workers,
           "faults_per_scenario": args.faults, "seconds": round(seconds, 1),
           "scenarios_per_min": round(args.scenarios / seconds * 60, 1), "events_per_scenario": events // args.scenarios,
           "violations": violations}
    if args.json:
        dump_json(out)
    else:
        print_table("simulation speed (simulate + all checkers, one scenario after another)", [out],
                    [("scenarios", "scenarios"), ("actions_per_scenario", "runs each"), ("workers", "workers"),
                     ("faults_per_scenario", "faults each"), ("events_per_scenario", "events each"),
                     ("seconds", "seconds"), ("scenarios_per_min", "scenarios/min"), ("violations", "violations")])
    return 0 if violations == 0 else 1
