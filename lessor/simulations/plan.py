"""A simulation plan: the workload, the faults, the configuration. Data, JSON-serialisable.

Times are virtual milliseconds from the start of the run. Faults happen only
in the safety phase (before ``heal_ms``); after it the network is healed, every
worker is up and the reaper runs, and every run must finish (liveness).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from lessor.core.ids import check_namespace

DEFAULT_NAMESPACE = "sim/development"   # every run's namespace unless the plan spreads them
# The namespaces a plan may spread its runs over, with the weights drawn for them (strategies.plans).
FAIR_NAMESPACES = ("sim/development", "sim/batch", "sim/urgent")

FAULT_KINDS = (
    "partition",       # worker: requests dropped both ways, for duration_ms
    "lost_reply",      # worker: the next `count` requests run, their replies are lost
    "delay",           # worker: each message takes delay_ms each way (reorders against others)
    "slow_reply",      # worker: each reply to it takes delay_ms (its requests are not delayed)
    "pause",           # worker: stop-the-world (GC pause, SIGSTOP) for duration_ms
    "crash",           # worker: memory lost; it restarts (new id) after duration_ms
    "clock_jump",      # server: its clock jumps by delta_ms (may be negative)
    "drift",           # worker: its monotonic clock runs at `rate` from `at_ms` on
    "server_restart",  # server: killed and restarted from its AOF (script cache lost)
    "slow_reaper",     # reaper: its interval is multiplied by `factor` for duration_ms
    "reaper_down",     # reaper: no passes for duration_ms
    # Store faults (``strategies.plans(store_faults=True)``, ``lessor simulate --store-faults``):
    "server_crash",    # server: SIGKILL, restarted from its AOF cut back to a seeded point after the
                       # last modelled fsync (the unsynced tail is lost; new run_id)
    "failover",        # server: a lagging replica is promoted: the data rolls back to what it was
                       # lag_ms earlier, new master_replid, same run_id (demote-then-re-promote)
    "reaper_crash",    # reaper: the reaper process dies; a new one starts after duration_ms
    "store_errors",    # reapers: for duration_ms every call of the reaper and of the workers'
                       # reaper passes fails with a connection error
)

# Faults of the system as a whole: their ``worker`` field means nothing.
SYSTEM_FAULT_KINDS = frozenset({"clock_jump", "server_restart", "slow_reaper", "reaper_down", "server_crash",
                                "failover", "reaper_crash", "store_errors"})
# Faults that lose acknowledged writes (a rollback of the server's data).
DATA_LOSS_KINDS = frozenset({"server_crash", "failover"})
DURABILITY_MODES = ("memory", "fsync")


def drift_within(rate: float, bound: float) -> bool:
    """True if a clock rate is within ``bound`` of 1, the bound itself included (rates are
    written to the thousandth: ``abs(0.95 - 1.0)`` is 0.05000000000000004 in floating point)."""
    return round(abs(rate - 1.0), 9) <= round(bound, 9)


@dataclass(frozen=True)
class Fault:
    """One fault. Which fields matter depends on ``kind`` (see FAULT_KINDS)."""

    kind: str
    at_ms: int
    worker: int = 0
    duration_ms: int = 0
    count: int = 1
    delay_ms: int = 0
    delta_ms: int = 0
    rate: float = 1.0
    factor: float = 1.0
    lag_ms: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.at_ms < 0 or self.duration_ms < 0 or self.lag_ms < 0:
            raise ValueError(f"fault times must be >= 0: {self}")


@dataclass(frozen=True)
class Submit:
    """The control plane submits a run at ``at_ms``; its task runs for ``work_ms`` of CPU.

    The rest of the API, each off by default: the task submits ``children`` child actions
    (fenced by its token, ``ctx.submit``) of ``child_work_ms`` each, and with
    ``awaits_children`` waits for them (``ctx.call``) and raises if one did not succeed;
    runs of one ``cache`` group share a cache key (the first to succeed fills the cache,
    later submits hit it); with ``resubmit_ms`` the run is submitted with an idempotency
    key and the same request is sent again then.
    """

    at_ms: int
    work_ms: int
    user_retries: int = 0
    system_retries: int = 3
    fail_attempts: int = 0   # the first N attempts raise (a user error)
    children: int = 0
    child_work_ms: int = 100
    awaits_children: bool = False
    cache: int | None = None
    resubmit_ms: int | None = None

    def __post_init__(self) -> None:
        if self.children < 0 or self.child_work_ms < 0 or (self.resubmit_ms is not None and self.resubmit_ms < 0):
            raise ValueError(f"children, child_work_ms and resubmit_ms must be >= 0: {self}")


@dataclass(frozen=True)
class Abort:
    """The control plane aborts the run submitted as ``submits[run]`` at ``at_ms``."""

    at_ms: int
    run: int


@dataclass(frozen=True)
class Config:
    """Lease and system settings of a simulation."""

    ttl_ms: int = 1000
    grace_ms: int = 500
    heartbeat_ms: int = 300
    margin_ms: int = 150
    reaper_interval_ms: int = 100
    poll_ms: int = 50
    concurrency: int = 4
    backoff_ms: int = 100
    drift_bound: float = 0.05      # |rate - 1| up to this is "bounded drift" (guarantee 2 holds)
    rpc_timeout_ms: int = 300      # a worker gives up on a reply after this (its heartbeat interval)
    worker_reap_ms: int = 500      # each worker's reaper pass interval (shared throttle), as Worker(reap=True)
    report_timeout_ms: int = 2000  # an unanswered report is sent again for this long (WorkerConfig.report_timeout_s
                                   # is 60 s for a 30 s ttl: the same ratio)
    durability: str = "memory"     # the backend's durability mode: memory or fsync (leasing/durability.py)
    schedules: int = 3             # every-second schedules ticked by the workers (catch-up all, latest, none)

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_MODES)}, got {self.durability!r}")
        if not 0 <= self.schedules <= 3:
            raise ValueError(f"schedules must be within 0..3 (one per catch-up policy), got {self.schedules}")
        if self.worker_reap_ms <= 0 or self.report_timeout_ms < 0:
            raise ValueError(f"worker_reap_ms must be > 0 and report_timeout_ms >= 0, got {self.worker_reap_ms} "
                             f"and {self.report_timeout_ms}")


@dataclass(frozen=True)
class Plan:
    """Everything one simulation run needs; same plan + same seed = same event log."""

    seed: int
    workers: int
    submits: tuple[Submit, ...]
    faults: tuple[Fault, ...] = ()
    aborts: tuple[Abort, ...] = ()
    heal_ms: int = 10_000
    config: Config = field(default_factory=Config)
    # (namespace, weight) pairs: run i goes to namespaces[i % len]; with two or more, every
    # simulated worker takes the queue by fair share ('*') and the weights are set on it first.
    namespaces: tuple[tuple[str, float], ...] = ((DEFAULT_NAMESPACE, 1.0),)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("a plan needs at least one worker")
        if not self.namespaces or len({ns for ns, _ in self.namespaces}) != len(self.namespaces):
            raise ValueError(f"a plan needs one or more distinct namespaces, got {self.namespaces!r}; "
                             f"leave the field out for the default ({DEFAULT_NAMESPACE!r}, weight 1)")
        for ns, weight in self.namespaces:
            check_namespace(ns)
            if not weight > 0:
                raise ValueError(f"namespace {ns!r} has weight {weight}; a fair-share weight must be > 0")
        for fault in self.faults:
            if fault.kind not in SYSTEM_FAULT_KINDS and not 0 <= fault.worker < self.workers:
                raise ValueError(f"fault names worker {fault.worker}, the plan has {self.workers}")
        for abort in self.aborts:
            if not 0 <= abort.run < len(self.submits):
                raise ValueError(f"abort names run {abort.run}, the plan submits {len(self.submits)}")

    def to_json(self) -> str:
        """The plan as JSON (``from_json`` reads it back)."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """Read a plan written by ``to_json``; ValueError naming what is wrong."""
        try:
            raw = json.loads(text)
            return cls(
                seed=int(raw["seed"]), workers=int(raw["workers"]),
                submits=tuple(Submit(**s) for s in raw["submits"]),
                faults=tuple(Fault(**f) for f in raw.get("faults", ())),
                aborts=tuple(Abort(**a) for a in raw.get("aborts", ())),
                heal_ms=int(raw.get("heal_ms", 10_000)),
                namespaces=tuple((str(ns), float(w)) for ns, w in
                                 raw.get("namespaces", ((DEFAULT_NAMESPACE, 1.0),))),
                config=Config(**{k: v for k, v in raw.get("config", {}).items()
                                 if k in {f.name for f in fields(Config)}}),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a lessor simulation plan: {exc}") from None

    def namespace_of(self, run: int) -> str:
        """The namespace of the run submitted as ``submits[run]``."""
        return self.namespaces[run % len(self.namespaces)][0]

    def several_namespaces(self) -> bool:
        """True if the runs spread over two or more namespaces (fair share has something to share)."""
        return len(self.namespaces) > 1

    def loses_data(self) -> bool:
        """True if a fault may roll back acknowledged writes (server_crash, failover)."""
        return any(f.kind in DATA_LOSS_KINDS and f.at_ms < self.heal_ms for f in self.faults)

    def server_clock_goes_back(self) -> bool:
        """True if a clock jump moves the server's clock backwards (server times then stop being ordered)."""
        return any(f.kind == "clock_jump" and f.delta_ms < 0 and f.at_ms < self.heal_ms for f in self.faults)

    def drift_exceeds_bound(self) -> bool:
        """True if the plan breaks guarantee 2's premise of bounded clock drift.

        That is: a worker's clock rate off by more than ``config.drift_bound``, or
        the server's clock jumping forward by more than the self-fencing margin
        (leases then expire before the worker's own count says they could).
        """
        return any((f.kind == "drift" and not drift_within(f.rate, self.config.drift_bound))
                   or (f.kind == "clock_jump" and f.delta_ms > self.config.margin_ms and f.at_ms < self.heal_ms)
                   for f in self.faults)
