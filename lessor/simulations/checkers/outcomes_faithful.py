"""The log ends each attempt as its task ended: an error is never accepted as a success.

Evidence: the ground truth of what each attempt's task itself produced (a
result, or an error it raised), recorded before the worker decides what to
report, against how the event log ended that attempt's lease. The outcome
policy (scheduler/outcome.py) turns one into the other; this checker holds it
to the task's word:
- an attempt whose task raised is never accepted as ``action_succeeded``
  (its user retry budget is spent, or the run fails, with the error recorded);
- an attempt whose task returned is never recorded as a user error.
Any other ending (expired, released, aborted, timed out) is the lease's
business, not the task's, and is left to the other checkers. Attempts with no
recorded outcome (stopped before their work ended) are not judged.

Runs on the simulator's truth and on a real Worker's ``on_attempt`` records
alike (see ``produced_from_records``).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from lessor.simulations.checkers import Violation
from lessor.simulations.checkers.durable_acks_survive import attempt_endings

NAME = "outcomes_faithful"

_USER_ERROR = ("requeued:user_error", "failed:user_error")


def check(entries, produced: Mapping[tuple[str, int], str]) -> list[Violation]:
    """Violations: an attempt's lease ended in the log contrary to what its task produced.

    ``entries``: (partition, event) pairs in log order. ``produced``: (action ref, token)
    -> ``result`` or ``error``, what that attempt's task returned or raised.
    """
    out = []
    for (ref, token), how in sorted(attempt_endings(entries).items()):
        task = produced.get((ref, token))
        if task == "error" and how == "succeeded":
            out.append(Violation(NAME, ref, f"the task of token {token} raised, but the log accepted "
                                            "that attempt as the action's success"))
        elif task == "result" and how in _USER_ERROR:
            out.append(Violation(NAME, ref, f"the task of token {token} returned a result, but the log "
                                            f"recorded a user error ({how})"))
    return out


def produced_from_records(records: Iterable[dict]) -> dict[tuple[str, int], str]:
    """``produced`` from a Worker's ``on_attempt`` records (the ``end`` ones name the task's outcome)."""
    return {(r["ref"], r["token"]): r["outcome"] for r in records
            if r.get("event") == "end" and r.get("outcome") is not None}
