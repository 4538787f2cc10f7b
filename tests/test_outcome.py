"""The outcome policy, defined once: its table, the lease-dropping token check, and a mutant of it
caught in the real Worker (here) and in the simulated one (here through the test-only entry point,
and in test_simulations.py's switch cases)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import os
import subprocess
import sys

import anyio
import pytest

import lessor
from lessor.core.clock import ManualClock
from lessor.errors import ConfigError, StaleToken, StoreUnavailable, UnknownAction
from lessor.leasing.client import LeaseClient
from lessor.leasing.eventlog import EventLog
from lessor.leasing.keeper import FenceReason, LeaseKeeper
from lessor.scheduler.outcome import (
    MAX_RETRY_GAP_MS, POLICY, Call, Ending, Kind, Outcome, decide_report, decide_retry, duplicate_lease, end_attempt,
    retry_gap_ms,
)
from lessor.scheduler.registry import Children, Context, Registry, TaskContext
from lessor.scheduler.submit import Retries, submit_run
from lessor.scheduler.worker import Worker, WorkerConfig
from lessor.simulations.breakage import Breakage, Switch
from lessor.simulations.checkers import outcomes_faithful
from lessor.simulations.simulator import Simulator
from lessor.simulations.simworker import Simulation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "proj/development"
OUTCOMES = [None, Outcome(result=b"\xa2ok"), Outcome(error="RuntimeError: no", retryable=False)]


def test_every_ending_has_exactly_one_report_and_every_kind_is_reachable():
    seen = set()
    for fenced, shutting_down, produced in itertools.product([None, *FenceReason], [False, True], OUTCOMES):
        report = decide_report(Ending(fenced, shutting_down, produced))
        seen.add(report.kind)
        if fenced is FenceReason.ABORTED:  # an abort is confirmed, whatever the task did
            assert (report.kind, report.call) == (Kind.ABORTED, Call.RELEASE)
        elif fenced is not None:           # any other fence: nothing more is sent with the token
            assert (report.kind, report.call, report.args) == (Kind.DROPPED, Call.NONE, ())
        elif shutting_down or produced is None:
            assert (report.kind, report.call) == (Kind.RELEASED, Call.RELEASE)
        elif produced.error is None:
            assert (report.kind, report.call, report.args) == (Kind.SUCCEEDED, Call.COMPLETE, (b"\xa2ok",))
        else:
            assert (report.kind, report.call, report.args) == (Kind.FAILED, Call.FAIL, ("RuntimeError: no", False))
    assert seen == set(Kind)
    assert duplicate_lease().call is Call.RELEASE


def test_the_retry_decision_and_its_gap():
    assert decide_retry(StaleToken("stale"), 1000) == "refused"
    assert decide_retry(UnknownAction("gone"), 1000) == "refused"
    assert decide_retry(ConfigError("bad"), 1000) == "error"
    assert decide_retry(StoreUnavailable("down"), 1000) == "retry"
    assert decide_retry(StoreUnavailable("down"), 0) == "unconfirmed"
    assert retry_gap_ms(5000, 120) == 120 and retry_gap_ms(5000, 9000) == MAX_RETRY_GAP_MS
    assert retry_gap_ms(30, 9000) == 30 and retry_gap_ms(30, -5) == 0


def test_the_policy_switches_replace_one_decision_each():
    assert Breakage().policy() is POLICY
    gives_up = Breakage(Switch.REPORT_GIVES_UP).policy()
    assert gives_up.retry(StoreUnavailable("down"), 1000) == "dropped" and gives_up.report is POLICY.report
    lying = Breakage(Switch.ERROR_REPORTED_AS_SUCCESS).policy()
    assert lying.report(Ending(outcome=OUTCOMES[2])).kind is Kind.SUCCEEDED and lying.retry is POLICY.retry


def _members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)


def _imports(path: str) -> set[str]:
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_narrow_interfaces_are_met_and_break_the_import_cycles():
    # Each side names only the Protocol: registry never imports the worker, simworker never the simulator.
    assert "lessor.scheduler.worker" not in _imports("lessor/scheduler/registry.py")
    assert "lessor.simulations.simulator" not in _imports("lessor/simulations/simworker.py")
    missing = {n for n in _members(Children) if not hasattr(Worker, n)}
    assert not missing, f"Worker lacks {missing} of registry.Children"
    sim_attrs = {n for n in _members(Simulation) if not hasattr(Simulator, n)}
    # Instance attributes set in __init__ (plan, faults, ...): present on a Simulator's __init__ source.
    init = inspect.getsource(Simulator.__init__)
    assert not {n for n in sim_attrs if f"self.{n} " not in init and f"self.{n}," not in init}, sim_attrs
    assert {n for n in _members(Context) if not hasattr(TaskContext, n)} <= {"namespace", "run_id", "action_id",
                                                                               "attempt", "token", "worker_id"}
    assert set(Context.__annotations__) <= {f.name for f in dataclasses.fields(TaskContext)}


@pytest.mark.anyio
async def test_an_attempt_ending_late_cannot_drop_a_newer_lease_of_its_action(backend):
    await submit_run(backend, "t", namespace=NS, run_id="r1")
    client = LeaseClient(backend, "w1")
    (lease,) = await client.acquire(NS, "default", 1)
    keeper = LeaseKeeper(client, ManualClock())
    keeper.hold(lease, None, 0)
    running = {lease.ref: lease.token}
    assert not end_attempt(keeper, running, lease.ref, lease.token - 1, lambda token: token)  # an older attempt
    assert lease.ref in keeper.held and lease.ref in running
    assert end_attempt(keeper, running, lease.ref, lease.token, lambda token: token)
    assert lease.ref not in keeper.held and running == {}


@pytest.mark.anyio
@pytest.mark.parametrize("switch", [None, Switch.ERROR_REPORTED_AS_SUCCESS], ids=["real", "broken"])
async def test_the_real_worker_reports_what_its_task_produced_and_the_mutant_is_caught(flushed, switch):
    """A task raises on its first attempt and returns on its second. The real Worker records the
    error and retries; with the switch it commits the error as the run's success. The checker the
    simulations run judges the Worker's own evidence (its ``on_attempt`` records) against the log."""
    registry = Registry()

    @registry.task
    async def once_wrong(ctx):
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails on purpose")
        return "right"

    records: list[dict] = []
    async with lessor.connect(flushed) as client:
        worker = Worker(client.backend, registry, WorkerConfig(worker_id="w-outcome", reap_interval_ms=50),
                        on_attempt=records.append, policy=Breakage(switch).policy())
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            run = await client.submit_run("once_wrong", retries=Retries(user=1, backoff_ms=10))
            info = await run.wait(timeout_s=60)
            worker.stop()
        entries = [(e.partition, e.event) for e in await EventLog(client.backend).read_all()]
    violations = outcomes_faithful.check(entries, outcomes_faithful.produced_from_records(records))
    produced = outcomes_faithful.produced_from_records(records)
    assert sorted(produced.values()) == (["error", "result"] if switch is None else ["error"])
    if switch is None:
        assert violations == [] and info.phase.value == "succeeded" and info.result == "right"
        assert worker.statistics().failed == 1 and worker.statistics().succeeded == 1
    else:
        assert [v.checker for v in violations] == ["outcomes_faithful"], violations
        assert "raised, but the log accepted" in violations[0].detail
        assert info.phase.value == "succeeded" and info.result is None   # what the mutant did


def test_the_simulated_worker_runs_the_same_mutant_and_an_exploration_catches_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"}
    path = tmp_path / "plan.json"
    args = ["--examples", "30", "--seed", "1", "--workers", "3", "--actions", "6", "--faults", "4",
            "--shrink-runs", "20", "--save", str(path), "--json"]
    caught = subprocess.run([sys.executable, "-m", "lessor.simulations.catch", Switch.ERROR_REPORTED_AS_SUCCESS.value,
                             *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert caught.returncode == 1, caught.stderr
    out = json.loads(caught.stdout)
    assert any("[outcomes_faithful]" in v for v in out["violations"]), out["violations"]
    print(f"\n{Switch.ERROR_REPORTED_AS_SUCCESS.value}: caught at example {out['first_failure_at_example']} "
          f"(seed 1); shrunk plan: {len(out['shrunk_plan']['submits'])} runs")
    real = subprocess.run([sys.executable, "-m", "lessor", "simulate", "--replay", str(path), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert real.returncode == 0 and json.loads(real.stdout)["violations"] == [], real.stdout
