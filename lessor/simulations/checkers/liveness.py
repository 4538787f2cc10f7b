"""Progress (guarantee 3): after heal every run finishes within the bound; nothing is lost."""

from __future__ import annotations

from lessor.core import events as ev
from lessor.simulations.checkers import Violation

NAME = "liveness"


def check(entries, submitted: list[str], quiesced_ms: int | None, deadline_ms: int,
          lost: frozenset[str] | set[str] = frozenset()) -> list[Violation]:
    """Violations: a submitted run missing from the log, or not finished by the deadline.

    ``lost``: runs whose submit a crash or failover rolled back (memory durability,
    or a failover): missing from the log with a stated reason; durable_acks_survive
    judges whether the durability mode allowed that.
    """
    created = {e.run for _, e in entries if isinstance(e, ev.RunCreated)}
    completed = {e.run for _, e in entries if isinstance(e, ev.RunCompleted)}
    out = [Violation(NAME, run, "submitted (acknowledged) but not in the log") for run in submitted
           if run not in created and run not in lost]
    if quiesced_ms is None:
        out += [Violation(NAME, run, f"not finished by the liveness deadline (t={deadline_ms} ms)")
                for run in submitted if run in created and run not in completed]
    return out
