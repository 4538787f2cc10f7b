"""Hypothesis strategies over simulation plans: workloads and fault schedules.

Shrinking works on the plan's parts: fewer runs, fewer faults, shorter
durations, smaller numbers, so a failure ends as a small plan a person can read.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from lessor.simulations.plan import DURABILITY_MODES, Abort, Config, Fault, Plan, Submit

# Weighted by repetition: the faults that move ownership come up most. The
# order matters for shrinking too: hypothesis shrinks toward the first kind.
WORKER_FAULTS = ("partition", "partition", "partition", "pause", "pause", "delay", "delay", "crash", "crash",
                 "lost_reply", "drift")
SYSTEM_FAULTS = ("clock_jump", "clock_jump", "slow_reaper", "reaper_down")
# The store fails (``store_faults=True``). Restarts stay in: a token bug that only shows
# once the counter is ahead of its time floor needs an earlier epoch jump.
STORE_FAULTS = ("server_crash", "server_crash", "failover", "failover", "failover", "store_errors", "store_errors",
                "reaper_crash", "server_restart")
# Of those, the ones that need a server of our own (restarted, cut back, failed over).
SERVER_FAULTS = frozenset({"server_crash", "failover", "server_restart"})


def submits(max_runs: int, horizon_ms: int) -> st.SearchStrategy:
    one = st.builds(
        Submit,
        at_ms=st.integers(0, horizon_ms // 2),
        work_ms=st.one_of(st.integers(50, 500), st.integers(1500, 6000)),  # short tasks, and ones that outlive a lease
        user_retries=st.integers(0, 2),
        system_retries=st.integers(0, 3),
        fail_attempts=st.integers(0, 2),
    )
    return st.lists(one, min_size=1, max_size=max_runs).map(tuple)


@st.composite
def fault(draw, workers: int, horizon_ms: int, config: Config, kinds: tuple[str, ...], drift_within_bound: bool):
    kind = draw(st.sampled_from(kinds))
    at = draw(st.integers(0, horizon_ms))
    worker = draw(st.integers(0, workers - 1))
    window = config.ttl_ms + config.grace_ms
    # Half the outages outlast the lease window (so leases expire and fail over).
    long_ms = st.one_of(st.integers(100, window), st.integers(window, 3 * window))
    if kind in ("partition", "pause", "reaper_down", "slow_reaper"):
        return Fault(kind, at, worker=worker, duration_ms=draw(long_ms),
                     factor=draw(st.sampled_from([2.0, 5.0, 20.0])) if kind == "slow_reaper" else 1.0)
    if kind == "crash":
        return Fault(kind, at, worker=worker, duration_ms=draw(st.integers(0, 2000)))
    if kind == "lost_reply":
        return Fault(kind, at, worker=worker, count=draw(st.integers(1, 5)))
    if kind == "delay":
        # Up to three lease windows: the worker gives up after rpc_timeout_ms, but the
        # network may still deliver the message later (a delayed packet).
        return Fault(kind, at, worker=worker, duration_ms=draw(long_ms), delay_ms=draw(st.integers(1, 3 * window)))
    if kind == "drift":
        bound = config.drift_bound if drift_within_bound else 0.5
        return Fault(kind, at, worker=worker, rate=round(draw(st.floats(1 - bound, 1 + bound)), 3))
    if kind == "clock_jump":
        return Fault(kind, at, delta_ms=draw(st.integers(-500, 3000)))
    if kind in ("reaper_crash", "store_errors"):
        return Fault(kind, at, duration_ms=draw(long_ms))
    if kind == "failover":
        # The replica's lag: up to two lease windows (renewals, grants and reports lost).
        return Fault(kind, at, lag_ms=draw(st.integers(0, 2 * window)))
    return Fault(kind, at)  # server_restart, server_crash


@st.composite
def plans(draw, *, max_workers: int = 5, max_runs: int = 50, max_faults: int = 10, horizon_ms: int = 8000,
          server_restarts: bool = False, drift_within_bound: bool = True, config: Config | None = None,
          fault_kinds: tuple[str, ...] | None = None, store_faults: bool = False,
          durability: str | None = None) -> Plan:
    """A plan: 2..max_workers workers, 1..max_runs runs, 0..max_faults faults, a few aborts.

    ``fault_kinds`` narrows the faults drawn (default: all, weighted), e.g. to
    aim an exploration at one mechanism. ``store_faults`` adds the store's own
    failures (crash with a lost AOF tail, failover with lag, reaper crashes,
    store errors) and draws the durability mode (memory or fsync) per plan,
    unless ``durability`` (or ``config``) fixes it. Faults that need a server of
    our own are left out unless ``server_restarts``.
    """
    if durability is not None:
        config = replace(config or Config(), durability=durability)
    elif store_faults and config is None:
        config = Config(durability=draw(st.sampled_from(DURABILITY_MODES)))
    config = config or Config()
    workers = draw(st.integers(2, max_workers))
    runs = draw(submits(max_runs, horizon_ms))
    kinds = fault_kinds or WORKER_FAULTS + SYSTEM_FAULTS + (STORE_FAULTS if store_faults else ()) \
        + (("server_restart",) if server_restarts and not store_faults else ())
    if not server_restarts:
        kinds = tuple(k for k in kinds if k not in SERVER_FAULTS) or ("partition",)
    faults = draw(st.lists(fault(workers, horizon_ms, config, kinds, drift_within_bound), max_size=max_faults))
    aborts = draw(st.lists(st.builds(Abort, at_ms=st.integers(0, horizon_ms), run=st.integers(0, len(runs) - 1)),
                           max_size=2))
    return Plan(seed=draw(st.integers(0, 2**32 - 1)), workers=workers, submits=runs,
                faults=tuple(sorted(faults, key=lambda f: f.at_ms)), aborts=tuple(aborts),
                heal_ms=horizon_ms, config=config)
