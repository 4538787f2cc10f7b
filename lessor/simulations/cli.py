"""`lessor simulate`: explore with hypothesis, or replay one plan exactly."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lessor.simulations.breakage import Breakage
from lessor.simulations.plan import DURABILITY_MODES, Plan

if TYPE_CHECKING:   # explore imports hypothesis (half a second): only `lessor simulate` needs it
    from lessor.simulations.explore import Exploration, Outcome


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--examples", type=int, default=100, help="plans to generate (default 100)")
    p.add_argument("--seed", type=int, help="hypothesis seed (same seed = same plans)")
    p.add_argument("--workers", type=int, default=5, help="at most this many workers per plan (default 5)")
    p.add_argument("--actions", type=int, default=50, help="at most this many runs (root actions) per plan (default 50)")
    p.add_argument("--faults", type=int, default=10, help="at most this many faults per plan (default 10)")
    p.add_argument("--store-faults", action="store_true",
                   help="the store fails too: crashes that lose the unsynced AOF tail, failovers to a lagging "
                        "replica, reaper crashes, store errors; each plan draws its durability (memory or fsync)")
    p.add_argument("--durability", choices=DURABILITY_MODES,
                   help="every plan uses this durability mode (default memory; with --store-faults drawn per plan)")
    p.add_argument("--shrink-runs", type=int, default=300, help="plans run while shrinking a failure (default 300)")
    p.add_argument("--save", metavar="PATH", help="where to save a failing plan (default lessor-plan-SEED.json)")
    p.add_argument("--save-plan", metavar="PATH",
                   help="always write the plan it ran here: the shrunk failing plan after a violation, else the "
                        "last plan explored (with --examples 1, the one plan); replay it with --replay PATH")
    p.add_argument("--replay", metavar="PLAN_JSON", help="run this plan once, exactly, and check it")
    p.add_argument("--timeline", metavar="SVG", help="with --replay: draw the run's timeline")
    p.add_argument("--redis-url", metavar="URL", help="server to use (default: a private embedded one, "
                                                        "which plans may restart)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")


API_FIGURES = ("children", "child_submits_refused", "cached_results", "cache_hits", "cached_completions_refused",
               "idempotent_resubmits", "aborts", "subtree_aborts")


def summary_rows(found: Exploration) -> dict:
    """The exploration's figures as one flat dict."""
    per_min = found.examples / found.seconds * 60 if found.seconds else 0.0
    q = found.quiesce_ms
    return {
        "examples": found.examples, "runs_incl_shrinking": found.runs, "seconds": round(found.seconds, 1),
        "scenarios_per_min": round(per_min, 1), "actions": found.totals.get("runs", 0),
        "attempts": found.totals.get("attempts", 0), "failovers": found.totals.get("failovers", 0),
        "resumed_in_grace": found.totals.get("resumed_in_grace", 0),
        "stale_reports_refused": found.totals.get("stale_reports_refused", 0),
        "store_data_losses": found.totals.get("data_losses", 0),
        "reports_retried": found.totals.get("report_retries", 0),
        "reports_unconfirmed": found.totals.get("unconfirmed_reports", 0),
        "store_errors_injected": found.totals.get("store_errors", 0),
        "schedule_ticks_fired": found.totals.get("schedule_ticks", 0),
        "schedule_ticks_skipped_by_policy": found.totals.get("schedule_ticks_skipped", 0),
        "stale_ticks_refused": found.totals.get("stale_ticks_refused", 0),
        # The whole API in the workload: a zero here is a part of it no plan exercised.
        **{key: found.totals.get(key, 0) for key in API_FIGURES},
        # Fair share: plans whose runs spread over several namespaces, and the leases fair_share
        # judged (taken while two namespaces were backlogged). A zero is a blind spot.
        "plans_with_several_namespaces": found.totals.get("several_namespaces", 0),
        "fair_share_leases_judged": found.totals.get("fair_share_judged", 0),
        "overlap_ms_allowed_by_clock_faults": found.overlap_ms,
        "time_to_quiesce_after_heal_ms_median": statistics.median(q) if q else None,
        "time_to_quiesce_after_heal_ms_max": max(q) if q else None,
        "violation": found.shrunk is not None, "first_failure_at_example": found.first_failure_at or "-",
    }


def print_summary(console: Console, rows: dict) -> None:
    from rich.table import Table

    table = Table(title="simulation summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        text = ("yes" if value else "no") if isinstance(value, bool) else "" if value is None else \
            f"{value:,}" if isinstance(value, int) else str(value)
        table.add_row(key.replace("_", " "), text)
    console.print(table)


def report_failure(console: Console, outcome: Outcome, path: str, replay_command: str = "lessor simulate") -> None:
    console.print(f"[bold red]violation[/bold red] (shrunk to {len(outcome.plan.submits)} runs, "
                  f"{len(outcome.plan.faults)} faults):")
    for v in outcome.verdict.violations:
        console.print(f"  {v}", markup=False)
    with open(path, "w") as f:
        f.write(outcome.plan.to_json())
    console.print(outcome.plan.to_json(), markup=False, highlight=False)
    console.print(f"saved to {path}; replay it exactly with:\n  {replay_command} --replay {path} "
                  "--timeline timeline.svg", markup=False)


def run_explore(args: argparse.Namespace, breakage: Breakage = Breakage(),
                replay_command: str = "lessor simulate") -> int:
    from lessor.simulations.explore import explore

    console = Console(stderr=args.json)
    with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[note]}"), console=console, disable=args.json) as progress:
        task = progress.add_task("sim", total=args.examples, note="")
        last: list[Outcome] = []

        def on_example(found: Exploration, outcome: Outcome) -> None:
            last[:] = [outcome]
            progress.update(task, completed=found.examples,
                            note="" if outcome.verdict.ok else "violation found: shrinking…")

        found = explore(args.examples, seed=args.seed, url=args.redis_url, shrink_runs=args.shrink_runs,
                        breakage=breakage, on_example=on_example, max_workers=max(2, args.workers),
                        max_runs=max(1, args.actions), max_faults=max(0, args.faults),
                        store_faults=getattr(args, "store_faults", False), durability=getattr(args, "durability", None))
    rows = summary_rows(found)
    save_plan = getattr(args, "save_plan", None)
    if save_plan:
        ran = found.shrunk or (last[0] if last else None)
        if ran is not None:  # hypothesis always runs at least one example; guard anyway
            with open(save_plan, "w") as f:
                f.write(ran.plan.to_json())
            Console(stderr=True).print(f"plan written to {save_plan} ("
                                       + ("the shrunk failing plan" if found.shrunk else "the last plan explored")
                                       + f"); replay it exactly with: {replay_command} --replay {save_plan}",
                                       markup=False, highlight=False, soft_wrap=True)
    if args.json:
        print(json.dumps(rows | ({"shrunk_plan": json.loads(found.shrunk.plan.to_json()),
                                  "violations": [str(v) for v in found.shrunk.verdict.violations]}
                                 if found.shrunk else {})))
    else:
        print_summary(console, rows)
    if found.shrunk:
        path = save_plan or args.save or f"lessor-plan-{args.seed if args.seed is not None else 'random'}.json"
        report_failure(Console(stderr=True) if args.json else console, found.shrunk, path, replay_command)
        return 1
    return 0


def run_replay(args: argparse.Namespace, breakage: Breakage = Breakage()) -> int:
    from lessor.simulations.explore import simulation_portal

    console = Console()
    if not os.path.exists(args.replay):
        raise ValueError(f"no plan file {args.replay!r}: pass the path `lessor simulate` saved")
    with open(args.replay) as f:
        plan = Plan.from_json(f.read())
    with simulation_portal(args.redis_url) as (run, _):
        outcome = run(plan, breakage)
    if args.timeline:
        from lessor.simulations.timeline import write_timeline

        write_timeline(outcome.result, args.timeline)
    if args.json:
        print(json.dumps({"stats": outcome.result.stats, "overlap_ms": outcome.verdict.overlap_ms,
                          "quiesced_ms": outcome.result.quiesced_ms,
                          "violations": [str(v) for v in outcome.verdict.violations]}))
    else:
        console.print(f"replayed {args.replay}: " + ", ".join(f"{k}={v}" for k, v in outcome.result.stats.items()),
                      markup=False)
        for v in outcome.verdict.violations:
            console.print(f"  {v}", style="red", markup=False)
        console.print("all checkers passed" if outcome.verdict.ok else f"{len(outcome.verdict.violations)} violations",
                      style="green" if outcome.verdict.ok else "bold red")
        if args.timeline:
            console.print(f"timeline written to {args.timeline}", markup=False)
    return 0 if outcome.verdict.ok else 1


def main(args: argparse.Namespace) -> int:
    """Entry of `lessor simulate`."""
    if args.redis_url and "+cluster://" in args.redis_url:
        from lessor.errors import ConfigError

        # The virtual clock is one key; every script reads it, and on a cluster a script may
        # only touch its own partition's slot. Simulations need one server.
        raise ConfigError("lessor simulate runs on one server (its virtual clock is a single key no "
                          "partition's script could read on a cluster): drop --redis-url, or give a redis:// URL")
    if args.replay:
        return run_replay(args)
    if args.examples < 1:
        raise ValueError("--examples must be >= 1")
    if args.timeline:
        raise ValueError("--timeline draws one replayed plan: use it with --replay PLAN_JSON")
    return run_explore(args)
