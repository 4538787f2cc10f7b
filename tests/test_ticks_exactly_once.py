"""The ticks_exactly_once checker on hand-made logs: each way of breaking the guarantee is named.

(The simulator shows it catching a broken tick.lua: tests/test_simulations.py, tick_unfenced.)
"""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import ticks_exactly_once

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
