"""The ticks_exactly_once checker on hand-made logs: each way of breaking the guarantee is named.

The simulator, on a plan that pauses the ticker lease holder past its grace, records the deposed
ticker's write as refused, and catches tick_unfenced on the same plan (the exploration catches
it too: tests/test_simulations.py).
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.breakage import Breakage, Switch
from lessor.simulations.checkers import ticks_exactly_once
from lessor.simulations.checkers.ticks_exactly_once import NAME
from lessor.simulations.explore import simulation_portal
from lessor.simulations.plan import Fault, Plan, Submit

NS, MIN = "proj/development", 60_000
START = 1_767_225_600_000     # 2026-01-01T00:00Z, a whole minute


def created(catchup="all") -> tuple:
    return 0, ev.ScheduleCreated(ns=NS, schedule="s", task="t", queue="q", cron="* * * * *", timezone="UTC",
                                 catchup=catchup, start_ms=START)


def ticked(n: int, token: int = 1, worker: str = "a") -> tuple:
    return 0, ev.ScheduleTicked(ns=NS, schedule="s", run=f"r{n}", tick_ms=START + n * MIN, token=token,
                                worker=worker)


def skipped(first: int, last: int, token: int = 1) -> tuple:
    return 0, ev.ScheduleSkipped(ns=NS, schedule="s", from_ms=START + first * MIN, to_ms=START + last * MIN,
                                 count=last - first + 1, reason="catch-up policy", token=token, worker="a")


def rejected(n: int, token: int, current: int) -> tuple:
    return 0, ev.ScheduleTickRejected(ns=NS, schedule="s", tick_ms=START + n * MIN, token=token, worker="old",
                                      current_token=current)


def problems(pairs, due_by=None) -> list[str]:
    return [v.detail for v in ticks_exactly_once.check(pairs, due_by)]


def test_a_clean_log_passes_and_counts():
    counts: dict = {}
    log = [created("latest"), ticked(1), skipped(2, 4, token=2), ticked(5, token=2), rejected(6, 1, 2), ticked(6, 3)]
    assert ticks_exactly_once.check(log, START + 6 * MIN, counts) == []
    c = counts[f"{NS}/s"]
    assert (c.fired, c.skipped, c.rejected) == (3, 3, 1)


def test_each_breach_is_named():
    assert any("fired again" in p for p in problems([created(), ticked(1), ticked(2), ticked(2)]))
    assert any("neither fired nor skipped" in p for p in problems([created(), ticked(1), ticked(4)]))
    assert any("under catchup all" in p for p in problems([created("all"), skipped(1, 2), ticked(3)]))
    assert any("a deposed ticker's write" in p for p in problems([created(), ticked(1, token=5), ticked(2, 4)]))
    assert any("a deposed ticker's write" in p
               for p in problems([created(), ticked(1, token=4), rejected(2, 4, 6), ticked(2, 4)]))
    assert any("never handled" in p for p in problems([created(), ticked(1)], due_by=START + 3 * MIN))
    assert any("no tick then" in p for p in problems([created(), (0, ev.ScheduleTicked(
        ns=NS, schedule="s", run="x", tick_ms=START + 90_000, token=1, worker="a"))]))


def holder_paused_plan():
    """The ticker lease holder (w0 ticks first) paused past its ttl + grace: w1 takes the lease,
    and w0, resumed, sends a due tick with its old token."""
    return Plan(seed=1, workers=2, submits=(Submit(0, 10),), faults=(Fault("pause", 2000, worker=0, duration_ms=4000),))


def test_in_the_simulator_a_deposed_ticker_is_refused_and_without_the_fence_caught():
    with simulation_portal() as (run, _):
        real = run(holder_paused_plan())
        broken = run(holder_paused_plan(), Breakage(Switch.TICK_UNFENCED))
    stats = real.result.stats
    assert real.verdict.ok, [str(v) for v in real.verdict.violations]
    assert stats["stale_ticks_refused"] > 0 and stats["schedule_ticks"] > 0, stats
    assert {v.checker for v in broken.verdict.violations} == {NAME}, [str(v) for v in broken.verdict.violations]
