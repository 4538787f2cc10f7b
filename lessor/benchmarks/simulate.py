"""Simulation speed: scenarios per minute at a fixed size (runs, workers, faults per scenario).

Plans are drawn from a seeded random generator at exactly the requested size
(hypothesis' plans vary in size), then simulated and checked one after the
other, as an exploration does. Two workloads, alternating scenario by scenario
in the same run (the machine is shared, so only their ratio is comparable):
``plain`` (runs with retries and failures only) is the baseline; ``api`` is
the workload `lessor simulate` draws: children (some awaited), cache groups,
idempotent resubmits, aborts.
"""

from __future__ import annotations

import argparse
import random
import time

from lessor.benchmarks.common import dump_json, print_table
from lessor.simulations.plan import FAULT_KINDS, Abort, Fault, Plan, Submit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", type=int, default=100)
    p.add_argument("--actions", type=int, default=50, help="runs per scenario (default 50)")
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--faults", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workload", choices=("both", "api", "plain"), default="both",
                   help="api: children, caches, resubmits (as lessor simulate); plain: the baseline; "
                        "both (default): alternate them and print the ratio")
    p.add_argument("--json", action="store_true")


def random_plan(rng: random.Random, actions: int, workers: int, faults: int, horizon_ms: int = 8000,
                api: bool = False) -> Plan:
    """A plan of exactly this size: submits in the first half, faults anywhere before heal; with
    ``api``, its runs also use children, cache groups and resubmits (as the strategies draw them)."""
    kinds = [k for k in FAULT_KINDS if k != "server_restart"]
    submits = tuple(Submit(at_ms=rng.randrange(horizon_ms // 2), work_ms=rng.choice([rng.randint(50, 500),
                                                                                    rng.randint(1500, 6000)]),
                           user_retries=rng.randint(0, 2), system_retries=rng.randint(0, 3),
                           fail_attempts=rng.randint(0, 2), **(_api_fields(rng, horizon_ms) if api else {}))
                    for _ in range(actions))
    if api:
        from lessor.simulations.strategies import _bound_awaiting   # (hypothesis: imported when used)

        submits = _bound_awaiting(list(submits))
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


def _api_fields(rng: random.Random, horizon_ms: int) -> dict:
    return {"children": rng.choice([0, 0, 1, 2]), "child_work_ms": rng.randint(20, 400),
            "awaits_children": rng.random() < 0.5, "cache": rng.choice([None, None, None, 0, 1]),
            "resubmit_ms": rng.randrange(horizon_ms) if rng.random() < 0.25 else None}


def main(args: argparse.Namespace) -> int:
    """`lessor bench simulate`."""
    from lessor.simulations.explore import simulation_portal   # (hypothesis: imported when used)

    workloads = ("plain", "api") if args.workload == "both" else (args.workload,)
    plans = {w: [random_plan(random.Random(f"{args.seed}:{n}"), args.actions, args.workers, args.faults,
                             api=w == "api") for n in range(args.scenarios)] for w in workloads}
    totals = {w: {"seconds": 0.0, "events": 0, "violations": 0} for w in workloads}
    with simulation_portal(args.redis_url) as (run, _):
        for i in range(args.scenarios):
            for w in workloads:  # alternating: both meet the same load on a shared machine
                plan = plans[w][i]
                started = time.perf_counter()  # clock: benchmark timing only
                outcome = run(plan)
                totals[w]["seconds"] += time.perf_counter() - started  # clock: benchmark timing only
                totals[w]["violations"] += len(outcome.verdict.violations)
                totals[w]["events"] += outcome.result.stats["events"]
                if not outcome.verdict.ok:  # a benchmark that finds a bug says so, with the plan to replay
                    path = f"lessor-bench-plan-{args.seed}-{w}-{i}.json"
                    with open(path, "w") as f:
                        f.write(plan.to_json())
                    for v in outcome.verdict.violations:
                        print(f"violation in {w} scenario {i}: {v} (replay: lessor simulate --replay {path})")
    rows = [{"workload": w, "scenarios": args.scenarios, "actions_per_scenario": args.actions,
             "workers": args.workers, "faults_per_scenario": args.faults, "seconds": round(t["seconds"], 1),
             "scenarios_per_min": round(args.scenarios / t["seconds"] * 60, 1),
             "events_per_scenario": t["events"] // args.scenarios, "violations": t["violations"]}
            for w, t in totals.items()]
    if len(rows) == 2:  # the api workload's speed as a ratio of the plain one, same run
        rows[1]["ratio_to_plain"] = round(rows[1]["scenarios_per_min"] / rows[0]["scenarios_per_min"], 2)
    if args.json:
        dump_json(rows)
    else:
        print_table("simulation speed (simulate + all checkers, one scenario after another)", rows,
                    [("workload", "workload"), ("scenarios", "scenarios"), ("actions_per_scenario", "runs each"),
                     ("workers", "workers"), ("faults_per_scenario", "faults each"),
                     ("events_per_scenario", "events each"), ("seconds", "seconds"),
                     ("scenarios_per_min", "scenarios/min"), ("ratio_to_plain", "x plain"),
                     ("violations", "violations")])
    return 0 if all(t["violations"] == 0 for t in totals.values()) else 1
