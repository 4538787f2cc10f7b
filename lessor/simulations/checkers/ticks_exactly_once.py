"""Each tick of each schedule fired exactly once, or was skipped only as its catch-up policy
allows; and no deposed ticker's write was accepted.

Evidence: the event log alone. ``schedule_created`` names the cron, the time zone, the
start and the policy, so the ticks that were due can be computed again here (with the
same cron evaluator). Walking a schedule's events in log order:

* every ``schedule_ticked`` is a tick of the cron, later than the last one handled
  (a tick at or before it is a second fire), and nothing due between them was left out;
* a ``schedule_skipped`` covers exactly the due ticks it names, and only under
  ``latest`` or ``none`` (``all`` skips nothing);
* a ``schedule_resumed`` moves the start past the pause (its ticks never fire);
* with ``due_by_ms``, every tick due by then was handled (none was lost at the end).

Fencing: per partition, the ticker tokens of accepted writes (ticks and skips) never
go down in log order, and none is below a token that a refusal
(``schedule_tick_rejected``) named as current before it. A deposed ticker's write that
was accepted shows up as exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lessor.core import events as ev
from lessor.scheduler.schedules import ticks_between   # the same cron evaluator as the tickers
from lessor.simulations.checkers import Violation

NAME = "ticks_exactly_once"


@dataclass
class TickCount:
    """What the log shows for one schedule (and in total): ticks fired, skipped, refused."""

    fired: int = 0
    skipped: int = 0
    rejected: int = 0
    runs: set = field(default_factory=set)


@dataclass
class _Schedule:
    created: ev.ScheduleCreated
    after_ms: int             # the last tick handled (or the start, or a resume)
    count: TickCount = field(default_factory=TickCount)
    stopped: bool = False     # paused or deleted: nothing more is due


def _ticks(s: _Schedule, after_ms: int, until_ms: int) -> list[int]:
    return ticks_between(s.created.cron, s.created.timezone, after_ms, until_ms, 1_000_000)


def check(pairs, due_by_ms: int | None = None, counts: dict | None = None) -> list[Violation]:
    """Violations over ``pairs`` ((partition, event) in log order). ``due_by_ms``: every tick
    due by then must have been handled. ``counts``, if given, gets a TickCount per schedule."""
    out: list[Violation] = []
    schedules: dict[str, _Schedule] = {}
    current: dict[int, tuple[int, str]] = {}    # partition -> (highest current token seen, where)

    def fenced(partition: int, token: int, ref: str, what: str) -> None:
        best = current.get(partition)
        if best is not None and token < best[0]:
            out.append(Violation(NAME, ref, f"{what} was accepted with ticker token {token}, but token "
                                            f"{best[0]} was current before it ({best[1]}): a deposed "
                                            "ticker's write"))
        if best is None or token > best[0]:
            current[partition] = (token, what)

    for partition, e in pairs:
        if not isinstance(e, ev.ScheduleEvent):
            continue
        ref = f"{e.ns}/{e.schedule}"
        if isinstance(e, ev.ScheduleCreated):
            schedules[ref] = _Schedule(e, e.start_ms)
            continue
        s = schedules.get(ref)
        if s is None:
            out.append(Violation(NAME, ref, f"{type(e).__name__} of a schedule the log never created"))
            continue
        if isinstance(e, ev.ScheduleTicked):
            fenced(partition, e.token, ref, f"tick {e.tick_ms} by {e.worker}")
            s.count.fired += 1
            if e.run in s.count.runs:
                out.append(Violation(NAME, ref, f"run {e.run} started by two ticks"))
            s.count.runs.add(e.run)
            if e.tick_ms <= s.after_ms:
                out.append(Violation(NAME, ref, f"tick {e.tick_ms} fired again (by {e.worker}, token {e.token}): "
                                                f"ticks up to {s.after_ms} were handled already"))
                continue
            due = _ticks(s, s.after_ms, e.tick_ms)
            if not due or due[-1] != e.tick_ms:
                out.append(Violation(NAME, ref, f"tick {e.tick_ms} fired, but the cron has no tick then"))
            missed = [t for t in due if t != e.tick_ms]
            if missed:
                out.append(Violation(NAME, ref, f"{len(missed)} due ticks ({missed[0]}..{missed[-1]}) neither "
                                                f"fired nor skipped before tick {e.tick_ms}"))
            s.after_ms = e.tick_ms
        elif isinstance(e, ev.ScheduleSkipped):
            fenced(partition, e.token, ref, f"skip of {e.from_ms}..{e.to_ms} by {e.worker}")
            s.count.skipped += e.count
            if s.created.catchup == "all":
                out.append(Violation(NAME, ref, f"{e.count} ticks skipped ({e.from_ms}..{e.to_ms}) under "
                                                "catchup all, which fires every missed tick"))
            due = _ticks(s, s.after_ms, e.to_ms)
            if e.from_ms <= s.after_ms or due != _ticks(s, e.from_ms - 1, e.to_ms) or len(due) != e.count:
                out.append(Violation(NAME, ref, f"skip of {e.count} ticks {e.from_ms}..{e.to_ms} does not match "
                                                f"the {len(due)} due after {s.after_ms}"))
            s.after_ms = max(s.after_ms, e.to_ms)
        elif isinstance(e, ev.ScheduleTickRejected):
            s.count.rejected += 1
            if e.token == e.current_token:
                out.append(Violation(NAME, ref, f"tick {e.tick_ms} refused with the current token {e.token}"))
            best = current.get(partition)
            if best is None or e.current_token > best[0]:
                current[partition] = (e.current_token, f"named current when {e.worker}'s tick was refused")
        elif isinstance(e, ev.ScheduleResumed):
            s.after_ms, s.stopped = max(s.after_ms, e.from_ms), False
        elif isinstance(e, (ev.SchedulePaused, ev.ScheduleDeleted)):
            s.stopped = True
    for ref, s in schedules.items():
        if due_by_ms is not None and not s.stopped:
            left = _ticks(s, s.after_ms, due_by_ms)
            if left:
                out.append(Violation(NAME, ref, f"{len(left)} ticks due by {due_by_ms} never handled "
                                                f"(first {left[0]})"))
        if counts is not None:
            counts[ref] = s.count
    return out
