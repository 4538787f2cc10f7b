"""Ground truth: what each simulated worker actually did, in true (simulator) time.

The checkers compare it with the event log: the log says what the system
*accepted*; the truth says what really *ran* and what was really *sent*.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Execution:
    """One stretch of a worker computing an attempt (pauses split it into several)."""

    worker: str
    ref: str
    token: int
    start_ms: int
    end_ms: int | None = None
    start_server_ms: int | None = None  # the server's clock at start_ms
    end_server_ms: int | None = None  # the server's clock at end_ms (clock jumps included)
    ended: str = ""          # completed | self_fenced | stale | aborted | unknown | crashed | paused


@dataclass
class Report:
    """One write a worker sent (renew, complete, fail, release) and what became of it."""

    worker: str
    ref: str
    token: int
    kind: str
    sent_ms: int
    server_ms: int | None = None   # server clock when it ran (None: never reached the server)
    ran_ms: int | None = None      # true time when it ran
    answer: str = ""               # OK, RESUMED, ABORTED, STALE, UNKNOWN (what the server said)
    heard: bool = False            # did the worker get the answer


@dataclass
class Truth:
    """Everything the simulator saw happen."""

    executions: list[Execution] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)     # run ids, in order
    aborted_at_ms: dict[str, int] = field(default_factory=dict)  # run id -> true ms of the abort
    heal_ms: int = 0
    end_ms: int = 0
    clock_offsets: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])  # (true ms, server offset ms)

    def server_time(self, true_ms: int, epoch_ms: int) -> int:
        """The server's clock at a true time (clock jumps included)."""
        offset = 0
        for at, off in self.clock_offsets:
            if at <= true_ms:
                offset = off
        return epoch_ms + true_ms + offset
