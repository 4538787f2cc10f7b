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
    end_call: int | None = None  # script calls made before it ended (orders it against them)


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
    heard_ms: int | None = None    # true time it did
    ran_step: int | None = None    # the simulator step in which it ran (orders writes; finds lost ones)
    ran_call: int | None = None    # the script call it was (an index into Truth.calls)

    @property
    def heard_committed(self) -> bool:
        """The worker heard the server accept it (for complete, fail, release: the attempt ended)."""
        return self.heard and self.answer == "OK"


@dataclass
class Grant:
    """A lease grant a worker heard (the acquire's reply reached it)."""

    worker: str
    ref: str
    token: int
    partition: int
    heard_ms: int                  # true time the worker heard it
    ran_step: int                  # the simulator step in which the acquire ran
    ran_ms: int                    # true time the acquire ran


@dataclass
class ReportChain:
    """One report (complete, fail, release) of an attempt, over all its tries with the same token.

    ``outcome``: committed (an OK heard), refused (STALE or UNKNOWN heard), unconfirmed
    (no answer within the report timeout), error (an answer no retry can change),
    crashed (the worker died first), pending (still trying when the simulation ended),
    or whatever else a broken policy calls giving up. The times on the worker's clock
    let a checker judge a give-up against the self-fence deadline and the timeout.
    """

    worker: str
    ref: str
    token: int
    kind: str
    started_ms: int
    tries: int = 0
    outcome: str = "pending"
    ended_ms: int | None = None
    started_worker_ms: float = 0.0            # the worker's clock at the first try
    ended_worker_ms: float | None = None      # the worker's clock when it gave up
    fence_deadline_worker_ms: float | None = None  # the lease's self-fence deadline then (None: not held)


@dataclass
class DataLoss:
    """A fault that rolled the server's data back: writes that ran in steps
    ``after_step < step < at_step`` are gone (the cut is after ``after_step``)."""

    kind: str          # server_crash | failover
    at_ms: int         # true time of the fault
    at_step: int
    after_step: int
    after_ms: int      # true time of the last step that survived

    def lost(self, step: int | None) -> bool:
        """Did a write that ran in ``step`` get lost here?"""
        return step is not None and self.after_step < step < self.at_step


@dataclass(frozen=True)
class Call:
    """One script call the simulator let through to the server, in the order they ran.

    ``stream_lens``: each partition's stream length just before the call, so the events
    it appended are at those positions and after (``checkers/history.py`` maps every
    event of the final log back to the call that wrote it)."""

    step: int
    true_ms: int
    server_ms: int
    stream_lens: tuple[int, ...]


@dataclass(frozen=True)
class Resubmit:
    """A submit sent again with the same idempotency key, and what the server answered."""

    run: str
    call: int          # the script call it was
    step: int
    created: bool      # the server said it created the run (False: it already existed)


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
    grants: list[Grant] = field(default_factory=list)
    chains: list[ReportChain] = field(default_factory=list)
    data_loss: list[DataLoss] = field(default_factory=list)
    durability: str = "memory"
    epoch_ms: int = 0            # the server clock at true time 0
    submit_steps: dict[str, int] = field(default_factory=dict)   # run id -> step its submit ran (acknowledged)
    # (run, true ms, step, asked anything, script call): what the control plane's aborts did
    abort_calls: list[tuple[str, int, int, bool, int]] = field(default_factory=list)
    # (action ref, token) -> what that attempt's task itself produced: "result" or "error"
    # (only attempts whose work ran to its end; what the worker then reported is the log's to say).
    produced: dict[tuple[str, int], str] = field(default_factory=dict)
    # The server time by which every schedule tick must have been handled (fired or skipped):
    # the simulator's final, fault-free schedule pass ran then (None: no schedules).
    ticks_due_by_ms: int | None = None
    results: dict[tuple[str, int], bytes] = field(default_factory=dict)  # the result bytes it returned
    calls: list[Call] = field(default_factory=list)       # every script call, in order
    resets: list[int] = field(default_factory=list)       # calls made before each restart or crash of the
                                                         # server (it came back from its AOF: soft state lost)
    resubmits: list[Resubmit] = field(default_factory=list)
    cache: dict[tuple[int, str], bytes] = field(default_factory=dict)  # (partition, key) -> value at the end
    server_errors: list[tuple[str, int, str]] = field(default_factory=list)  # (what, true ms, error) a
                                                         # script refused with arguments lessor built

    def lost(self, step: int | None) -> DataLoss | None:
        """The data loss that rolled back a write made in ``step`` (None: it survived, or never ran)."""
        return next((d for d in self.data_loss if d.lost(step)), None)

    def failover_after(self, step: int | None) -> bool:
        """True if a failover happened after ``step`` (it may roll back even fsync-acknowledged writes)."""
        return step is not None and any(d.kind == "failover" and d.at_step > step for d in self.data_loss)

    def min_server_time_from(self, true_ms: int, epoch_ms: int) -> int:
        """The lowest reading of the server's clock at ``true_ms`` or later (clock jumps back included)."""
        times = [self.server_time(true_ms, epoch_ms)]
        times += [epoch_ms + at + off for at, off in self.clock_offsets if at > true_ms]
        return min(times)

    def server_time(self, true_ms: int, epoch_ms: int) -> int:
        """The server's clock at a true time (clock jumps included)."""
        offset = 0
        for at, off in self.clock_offsets:
            if at <= true_ms:
                offset = off
        return epoch_ms + true_ms + offset
