"""The outcome policy: what an attempt's ending is reported as, and what a report does after a try.

One definition, driven by the worker (``lessor/scheduler/worker.py``) and by
the simulator's worker (``lessor/simulations/simworker.py``), so what the
simulations prove is the policy that runs (Temporal's activation core: one
pure policy that the worker and the replayer both drive).

Pure: no I/O and no clock. The callers measure time and pass it in, make the
calls the decisions name, and count what the server confirmed.

    report = decide_report(Ending(fenced=None, shutting_down=False, outcome=Outcome(result=b"...")))
    # Report(kind="succeeded", call=Call.COMPLETE, args=(b"...",))
    decide_retry(StoreUnavailable("down"), left_ms=1200)   # "retry", with the same token

``end_attempt`` is the one place an attempt lets go of its lease: it touches
only the two in-memory tables it is given.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, MutableMapping, TypeVar

from lessor.core.limits import clip_text, tail_text
from lessor.errors import StaleToken, UnknownAction
from lessor.leasing.keeper import FenceReason, LeaseKeeper
from lessor.leasing.outage import is_transient

ABORTED_REASON = "aborted: work cancelled"
SHUTDOWN_REASON = "worker shutting down"
DUPLICATE_REASON = "an earlier attempt is still stopping on this worker"
# At most this long between two tries of one report: a report that lands soon after the server
# is back finds its lease extended (a new epoch), one that lands late may find it reaped.
MAX_RETRY_GAP_MS = 500


@dataclass(frozen=True)
class Outcome:
    """What the task itself produced: a result to commit, or an error to record."""

    result: bytes | None = None
    error: str | None = None
    retryable: bool = True
    traceback: str | None = None   # the task's, when it raised (the report keeps its tail)


class Call(str, enum.Enum):
    """Which fenced write a report makes (``NONE``: nothing is sent with that token)."""

    COMPLETE = "complete"
    FAIL = "fail"
    RELEASE = "release"
    NONE = "none"


class Kind(str, enum.Enum):
    """What a report counts as once the server confirms it (``DROPPED``: counted at once, nothing sent)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RELEASED = "released"
    ABORTED = "aborted"
    DROPPED = "dropped"


@dataclass(frozen=True)
class Ending:
    """How an attempt ended locally: everything the report decision reads.

    ``fenced``: why the keeper stopped the lease (None: still usable).
    ``shutting_down``: the worker is stopping and cancelled this attempt.
    ``outcome``: what the task produced (None: nothing, it was cancelled).
    """

    fenced: FenceReason | None = None
    shutting_down: bool = False
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Report:
    """The report to make: what it counts as, which fenced write, and that write's arguments
    after the lease (``complete(lease, result)``, ``fail(lease, error, retryable, traceback)``,
    ``release(lease, reason)``)."""

    kind: Kind
    call: Call
    args: tuple = ()


def decide_report(ending: Ending) -> Report:
    """The report for an attempt that ended as ``ending``.

    An abort is confirmed with a release (so the action becomes aborted now, not after
    ttl + grace). Any other fence drops the result and sends nothing: the token may be
    reaped already, and a worker that self-fenced promised to stop using it. A worker
    shutting down, or an attempt with nothing to report, gives the lease back so it fails
    over at once. Otherwise the task's result is committed, or its error recorded (the
    text clipped to what a fenced write carries). Never raises.
    """
    if ending.fenced is FenceReason.ABORTED:
        return Report(Kind.ABORTED, Call.RELEASE, (ABORTED_REASON,))
    if ending.fenced is not None:
        return Report(Kind.DROPPED, Call.NONE)
    if ending.shutting_down or ending.outcome is None:
        return Report(Kind.RELEASED, Call.RELEASE, (SHUTDOWN_REASON,))
    if ending.outcome.error is None:
        return Report(Kind.SUCCEEDED, Call.COMPLETE, (ending.outcome.result or b"",))
    tb = ending.outcome.traceback  # its tail: the raising frame and the exception are at the end
    return Report(Kind.FAILED, Call.FAIL, (clip_text(ending.outcome.error), ending.outcome.retryable)
                  + ((tail_text(tb),) if tb else ()))


def duplicate_lease() -> Report:
    """The report for a lease granted while an earlier attempt of the same action still stops
    here: give it back at once rather than run the action twice on one worker."""
    return Report(Kind.RELEASED, Call.RELEASE, (DUPLICATE_REASON,))


def decide_retry(error: BaseException, left_ms: float) -> str:
    """What a report does after a try that raised ``error``, with ``left_ms`` of its report timeout left.

    Returns ``refused`` (the server answered: this token's write will never be accepted,
    StaleToken or UnknownAction), ``error`` (an answer no retry can change), ``retry``
    (no answer: send it again with the same token, which every lessor write accepts as a
    repeat) or, once the timeout is spent, ``unconfirmed`` (the server may or may not have
    it). Retrying past the lease's self-fence deadline is safe: a reaped lease refuses the
    token, and one a new epoch extended commits it, so finished work is not run again.
    """
    if isinstance(error, (StaleToken, UnknownAction)):
        return "refused"
    if not is_transient(error):
        return "error"
    if left_ms <= 0:
        return "unconfirmed"
    return "retry"


def retry_gap_ms(backoff_ms: float, left_ms: float) -> float:
    """How long to wait before the next try: the outage backoff, never past the timeout,
    never more than MAX_RETRY_GAP_MS."""
    return max(0.0, min(backoff_ms, left_ms, MAX_RETRY_GAP_MS))


@dataclass(frozen=True)
class Policy:
    """The two decisions, bundled so that one test-only switch (simulations/breakage.py) can
    replace one of them for the worker and the simulated worker alike."""

    report: Callable[[Ending], Report] = decide_report
    retry: Callable[[BaseException, float], str] = decide_retry


POLICY = Policy()

T = TypeVar("T")


def end_attempt(keeper: LeaseKeeper, running: MutableMapping[str, T], ref: str, token: int,
                token_of: Callable[[T], int]) -> bool:
    """Let go of the lease of attempt ``(ref, token)``: the keeper stops holding it and ``running``
    forgets it, each only if what it holds is that token's.

    The token check is why this exists: an old attempt that ends late must not drop a newer
    lease of the same action (granted to this worker meanwhile), or that one would go
    unrenewed. Returns True if ``running`` held this attempt.
    """
    keeper.drop(ref, token)
    entry = running.get(ref)
    if entry is None or token_of(entry) != token:
        return False
    del running[ref]
    return True
