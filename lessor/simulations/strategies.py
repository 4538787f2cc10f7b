"""Hypothesis strategies over simulation plans: workloads and fault schedules.

Shrinking works on the plan's parts: fewer runs, fewer faults, shorter
durations, smaller numbers, so a failure ends as a small plan a person can read.

The workload uses the whole API: runs whose task submits children (fenced by
its token) and sometimes awaits them, runs in cache groups, runs submitted again
with their idempotency key, aborts, some of them timed against what a run's task
is doing (``api_edges``). Faults are weighted toward the edges of
guarantees 1 and 2 (``edge``), which independent faults rarely line up: a worker
computing several leases is cut off, with its clock slow at the drift bound, or
the answers to its last good renewals slow, or the server's clock jumping past
the margin (or, still connected, a renewal answered STALE mid-work); without
them such plans are rare (in 200 plans of seed 1, 6 cut off a worker computing
with less than 80 ms to spare, none with less than 20).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from lessor.simulations.api_edges import api_edge
from lessor.simulations.plan import (
    DEFAULT_NAMESPACE, DURABILITY_MODES, FAIR_NAMESPACES, Abort, Config, Fault, Plan, Submit,
)

# Weighted by repetition: the faults that move ownership come up most. The
# order matters for shrinking too: hypothesis shrinks toward the first kind.
WORKER_FAULTS = ("partition", "partition", "partition", "pause", "pause", "delay", "delay", "crash", "crash",
                 "lost_reply", "drift", "drift", "slow_reply")
SYSTEM_FAULTS = ("clock_jump", "clock_jump", "slow_reaper", "reaper_down")
# The store fails (``store_faults=True``). Restarts stay in: a token bug that only shows
# once the counter is ahead of its time floor needs an earlier epoch jump.
STORE_FAULTS = ("server_crash", "server_crash", "failover", "failover", "failover", "store_errors", "store_errors",
                "reaper_crash", "server_restart")
# Of those, the ones that need a server of our own (restarted, cut back, failed over).
SERVER_FAULTS = frozenset({"server_crash", "failover", "server_restart"})


# At most this many runs of a plan await their children (ctx.call): each holds a worker slot
# while it waits, and a plan's workers have at least 2 x concurrency of them.
MAX_AWAITING = 2


caches = st.sampled_from([None, None, None, 0, 1])  # cache groups: most runs have no cache key


def submits(max_runs: int, horizon_ms: int) -> st.SearchStrategy:
    one = st.builds(
        Submit,
        at_ms=st.integers(0, horizon_ms // 2),
        work_ms=st.one_of(st.integers(50, 500), st.integers(1500, 6000)),  # short tasks, and ones that outlive a lease
        user_retries=st.integers(0, 2),
        system_retries=st.integers(0, 3),
        fail_attempts=st.integers(0, 2),
        children=st.sampled_from([0, 0, 1, 2]),
        child_work_ms=st.integers(20, 400),
        awaits_children=st.booleans(),
        cache=caches,
        resubmit_ms=st.one_of(st.none(), st.none(), st.none(), st.integers(0, horizon_ms)),
    )
    return st.lists(one, min_size=1, max_size=max_runs).map(_bound_awaiting)


def _bound_awaiting(runs: list[Submit]) -> tuple[Submit, ...]:
    """At most MAX_AWAITING runs await their children (the first ones that have any)."""
    out, awaiting = [], 0
    for s in runs:
        waits = s.awaits_children and s.children > 0 and awaiting < MAX_AWAITING
        awaiting += waits
        out.append(replace(s, awaits_children=waits) if waits != s.awaits_children else s)
    return tuple(out)


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
    if kind == "slow_reply":  # answers arrive late, mostly still within the rpc timeout
        return Fault(kind, at, worker=worker, duration_ms=draw(long_ms),
                     delay_ms=draw(st.integers(1, config.rpc_timeout_ms + 100)))
    if kind == "drift":
        if not drift_within_bound:
            return Fault(kind, at, worker=worker, rate=round(draw(st.floats(0.5, 1.5)), 3))
        return Fault(kind, at, worker=worker, rate=draw(drift_rates(config)))
    if kind == "clock_jump":
        return Fault(kind, at, delta_ms=draw(st.integers(-500, 3000)))
    if kind in ("reaper_crash", "store_errors"):
        return Fault(kind, at, duration_ms=draw(long_ms))
    if kind == "failover":
        # The replica's lag: up to two lease windows (renewals, grants and reports lost).
        return Fault(kind, at, lag_ms=draw(st.integers(0, 2 * window)))
    return Fault(kind, at)  # server_restart, server_crash


def drift_rates(config: Config) -> st.SearchStrategy:
    """Clock rates within the drift bound, weighted toward the slow edge (a slow worker clock
    is the one that eats the self-fencing margin), the bound itself included."""
    slowest = round(1 - config.drift_bound, 3)
    return st.one_of(st.sampled_from([slowest, slowest, round(slowest + 0.005, 3)]),
                     st.floats(1 - config.drift_bound, 1 + config.drift_bound).map(lambda r: round(r, 3)))


@st.composite
def edge(draw, workers: int, horizon_ms: int, config: Config, store_faults: bool = False,
         server_restarts: bool = False) -> tuple[list[Fault], list[Submit]]:
    """The edges of guarantees 1 and 2, which independent faults rarely line up.

    - A worker loses its leases while computing (``cut_off_while_computing``): its clock
      slow at the drift bound, the reply to its last good renewal slow, or the server's
      clock jumping past the margin; or

    - it sent a request the network holds until after the lease expired (every worker's
      messages are held about a lease window for a moment, then the workers are cut off,
      while no reaper reaches the store; a short run brought along ends in that moment): a
      late completion, failure, release or child submission then meets a lease dead on the
      server's clock that no reaper has expired yet (or one another worker holds, or
      finished, by then), and only the write's own check can refuse it; or

    - every worker but one is cut off a little longer than a lease window, and a little
      shorter than a report is sent again (the report timeout), just as a short run
      submitted for the purpose starts: it ends meanwhile, runs again on the one worker left,
      and a later try of its first completion arrives after that one's success: a stale
      report of an action already done.

    And a worker is stopped or cut off just long enough that its next renewal lands in the
    grace window, before its self-fence deadline: the renewal resumes the lease (and must be
    logged as late), where one a little later must be refused.

    With the store's own failures (``store_faults``), the cut-off worker does not gather its
    work (the fault budget goes to the store's failures), and with a server of our own
    (``server_restarts``) the store may fail twice in a row (``store_fails_twice``).

    Returns the faults, and the runs the edge brings along.
    """
    flavour = draw(st.sampled_from(["slow_clock", "slow_reply", "clock_jump", "late_request", "stale_report",
                                    "late_renewal"] + (["double_failure"] if store_faults and server_restarts else [])))
    if flavour in ("slow_clock", "slow_reply", "clock_jump"):
        return draw(cut_off_while_computing(workers, horizon_ms, config, flavour, gather=not store_faults))
    if flavour == "double_failure":
        return draw(store_fails_twice(horizon_ms, config))
    worker = draw(st.integers(0, workers - 1))
    at = draw(st.integers(0, horizon_ms))
    window = config.ttl_ms + config.grace_ms
    if flavour == "late_renewal":
        out_ms = draw(st.integers(config.ttl_ms, max(config.ttl_ms, config.ttl_ms + config.grace_ms
                                                      - config.margin_ms - config.heartbeat_ms)))
        return [Fault(draw(st.sampled_from(["pause", "partition"])), at, worker=worker, duration_ms=out_ms)], []
    if flavour == "stale_report":
        cut_ms = draw(st.integers(window + config.heartbeat_ms,
                                  max(window, config.report_timeout_ms) + config.heartbeat_ms))
        run = Submit(max(0, at - config.poll_ms), work_ms=draw(st.integers(50, 2 * config.poll_ms)), cache=draw(caches))
        return [Fault("partition", at, worker=w, duration_ms=cut_ms) for w in range(workers) if w != worker], [run]
    held_ms = draw(st.integers(50, 2 * config.heartbeat_ms))   # late_request
    delay_ms = draw(st.integers(window, 2 * window))
    lead_ms = 2 * config.heartbeat_ms  # the run is leased before the moment, and ends in it
    run = Submit(max(0, at - lead_ms), work_ms=draw(st.integers(lead_ms, lead_ms + held_ms)), cache=draw(caches))
    return [Fault("store_errors", at, duration_ms=draw(st.integers(window, 3 * window)))] + [
        f for w in range(workers) for f in (Fault("delay", at, worker=w, duration_ms=held_ms, delay_ms=delay_ms),
                                            Fault("partition", at + held_ms, worker=w, duration_ms=window))], [run]


@st.composite
def cut_off_while_computing(draw, workers: int, horizon_ms: int, config: Config, flavour: str,
                            gather: bool = True) -> tuple[list[Fault], list[Submit]]:
    """Guarantee 2's edge: a worker computing several leases loses them, with little slack.

    It gathers one to three runs brought along: the first early enough to be heard before
    the cut (an idle worker polls every 8 poll intervals, and its answers may take an rpc
    timeout: a run submitted later is often granted and never heard, so never computed),
    the others in the two heartbeats before the cut (a worker that just got work polls sooner);
    the other workers are cut off meanwhile, so it is the one that takes them. Its
    leases then have different self-fence deadlines, some counted from their grant, some
    from a renewal. The cut falls after the answer to a renewal and before the next one is
    sent (its heartbeats are ``heartbeat_ms`` apart from its start): a renewal still in
    flight would reach the server and move the deadline the worker does not count, a
    heartbeat more to spare. It lasts one or two lease windows, while

    - ``slow_clock``: the worker's clock runs slow, up to the drift bound, from before; or
    - ``slow_reply``: the answers to its acquires and renewals come slowly (within the rpc
      timeout) until the cut, so each deadline it counts was sent long before it heard it; or
    - ``clock_jump``: the server's clock jumps forward past the margin before the worker
      would stop (then only the rounding is left to spare: the checkers allow the excess and
      no more); or, not cut off at all, jumps past its leases' grace, so that a renewal is
      answered STALE while their work is still computing.

    The correct keeper stops in time, with little to spare; a keeper a little off does not.
    The faults come essential first: if a plan's fault budget cuts the edge short, it keeps
    its point and loses the gathering (as it does with ``gather`` false).
    """
    c = config
    window, beat_ms = c.ttl_ms + c.grace_ms, c.heartbeat_ms
    worker = draw(st.integers(0, workers - 1))
    reply_ms = draw(st.integers(c.rpc_timeout_ms // 2, max(c.rpc_timeout_ms // 2, min(c.rpc_timeout_ms, beat_ms) - 2))) \
        if flavour == "slow_reply" else 0
    # Late enough to gather the work, early enough to stop before heal.
    heard_ms = 8 * c.poll_ms + c.rpc_timeout_ms   # a run submitted this long before is heard by then
    first = -(-(heard_ms + 2 * beat_ms + c.poll_ms) // beat_ms)
    beat = draw(st.integers(first, max(first, (horizon_ms - window) // beat_ms - 1)))
    after_reply = draw(st.integers(min(reply_ms + 1, beat_ms - 1), beat_ms - 1))
    lose = beat * beat_ms + after_reply
    # The others come in the two heartbeats before the cut, half of them after the last renewal
    # was sent: held from their grant, they are fenced later than the renewed ones (a watchdog
    # that sleeps toward the wrong deadline fences the earlier ones late).
    since_renewal = st.integers(c.poll_ms, max(c.poll_ms, after_reply - c.poll_ms))
    leads = [draw(st.integers(heard_ms, heard_ms + 2 * beat_ms))] \
        + draw(st.lists(st.one_of(st.integers(c.poll_ms, 2 * beat_ms), since_renewal), max_size=2))
    runs = [Submit(max(0, lose - lead), work_ms=draw(st.integers(2 * window, 4 * window))) for lead in leads]
    start = max(0, lose - max(leads) - c.poll_ms)
    cut = flavour != "clock_jump" or draw(st.booleans())
    faults = [Fault("partition", lose, worker=worker, duration_ms=draw(st.integers(window, 2 * window)))] \
        if cut else []
    if flavour == "slow_clock":
        faults.append(Fault("drift", draw(st.integers(0, start)), worker=worker, rate=draw(drift_rates(config))))
    elif flavour == "slow_reply":
        faults.append(Fault("slow_reply", start, worker=worker, duration_ms=lose - start, delay_ms=reply_ms))
    else:
        jump_at = lose + draw(st.integers(0, window - c.margin_ms - beat_ms))
        faults.append(Fault("clock_jump", jump_at, delta_ms=draw(st.integers(c.margin_ms + 1 if cut else window,
                                                                             2 * window))))
    others = [Fault("partition", start, worker=w, duration_ms=lose - start) for w in range(workers)
              if w != worker and gather]
    return faults + others, runs


@st.composite
def store_fails_twice(draw, horizon_ms: int, config: Config) -> tuple[list[Fault], list[Submit]]:
    """The store fails twice in a row: a restart or a crash (a new epoch), then, while work
    brought along is being granted, a failover whose replica lags behind those grants.

    A new epoch moves the token counter far ahead of its clock floor; the promoted replica
    then holds a counter from before the grants it lost, and the actions they leased are
    queued again: only the epoch rule (a promotion is a new epoch too) keeps their tokens
    from being issued twice. Independent store faults line this up rarely.
    """
    c = config
    window = c.ttl_ms + c.grace_ms
    first = draw(st.integers(0, max(0, horizon_ms - 2 * window)))
    second = first + draw(st.integers(2 * c.poll_ms, window))
    runs = [Submit(draw(st.integers(first, second - c.poll_ms)), work_ms=draw(st.integers(50, 2 * window)))
            for _ in range(draw(st.integers(1, 3)))]
    return [Fault(draw(st.sampled_from(["server_restart", "server_crash"])), first),
            Fault("failover", second, lag_ms=draw(st.integers(c.poll_ms, second - first)))], runs


@st.composite
def solo_stretch(draw, first: int, weights: tuple[float, ...], burst_ms: int, room: int) -> tuple[Submit, ...]:
    """Half the time, runs appended at index ``first`` on (run i belongs to namespace
    i % len(weights)): after the joint burst at ``burst_ms`` has drained, four short runs of
    the lightest namespace alone (one worker takes them in one pick); then, once those have
    drained too, a second joint burst of every namespace's runs.

    A namespace alone advances the queue's virtual time while the rotation empties and fills
    again: where the namespaces that come back join it (the pass the last pick reached, not
    the one it began at) is what fair share gets right or wrong after a quiet spell, and a
    single joint burst never shows it. The lightest namespace, in one pick of four: its
    passes are the longest, so a virtual time one pick off is off by more than fair share's
    bound (which a pick of one, or of a heavy namespace, stays within)."""
    count = len(weights)
    if room < 2 * count or not draw(st.booleans()):
        return ()
    alone = weights.index(min(weights))
    solo_ms = burst_ms + draw(st.integers(1000, 1600))
    joint_ms = solo_ms + draw(st.integers(1000, 1600))
    out, solo = [], 0
    for i in range(first, first + min(room, count * draw(st.integers(6, 10)))):
        at = solo_ms if i % count == alone and solo < 4 else joint_ms
        solo += at == solo_ms
        out.append(Submit(at, work_ms=draw(st.integers(50, 200))))
    return tuple(out)


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
    pinned = config is not None or fault_kinds is not None   # the caller's settings and aim stay as given
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
    # 0, 1 or 2 edges, evenly (a list strategy draws many plans with none; some seeds all but none)
    count = draw(st.integers(0, min(2, max_faults // 3))) if fault_kinds is None else 0
    groups = [draw(edge(workers, horizon_ms, config, store_faults, server_restarts)) for _ in range(count)]
    # The API's edges (api_edges.py), one in every plan: runs brought along, and an abort (or
    # faults) timed against the first. (One plan in two, as before, left some edges to a few plans.)
    api = [draw(api_edge(workers, horizon_ms, config))] if fault_kinds is None else []
    edges = [f for faults_of, _ in groups for f in faults_of] + [f for faults_of, _, _ in api for f in faults_of]
    edges = edges[:max_faults]
    brought = tuple(r for _, runs_of, _ in api for r in runs_of) + tuple(r for _, runs_of in groups for r in runs_of)
    runs = brought + runs
    runs = _bound_awaiting(runs[:max(max_runs, 1)])
    faults = edges + draw(st.lists(fault(workers, horizon_ms, config, kinds, drift_within_bound),
                                   max_size=max(0, max_faults - len(edges))))
    aborts = [Abort(max(0, at_ms), 0) for _, _, at_ms in api if at_ms is not None]   # at most one api edge: run 0
    aborts += draw(st.lists(st.builds(Abort, at_ms=st.integers(0, horizon_ms), run=st.integers(0, len(runs) - 1)),
                            max_size=2))
    seed = draw(st.integers(0, 2**32 - 1))
    if not pinned:
        # The backoff at two scales (drawn last, so the rest of a seed's plans stay as they were):
        # at 100 ms a retry is ready about when the next reaper pass could promote it, so a
        # promotion made early hardly shows; at a second it waits through several passes and polls.
        config = replace(config, backoff_ms=draw(st.sampled_from((100, 100, 1000))))
    # Half the plans spread their runs over 2 or 3 namespaces of different weights, so
    # fair share (acquire by '*') has namespaces to share between and fair_share judges it.
    # Drawn after everything else, for the same reason as the backoff.
    namespaces = ((DEFAULT_NAMESPACE, 1.0),)
    if not pinned and draw(st.booleans()):
        count = draw(st.sampled_from((2, 3)))
        weights = draw(st.sampled_from(((1.0, 3.0, 2.0), (3.0, 1.0, 2.0), (2.0, 1.0, 3.0))))
        namespaces = tuple(zip(FAIR_NAMESPACES[:count], weights[:count]))
        # A burst of short runs at one moment, more than every worker can hold at once, so the
        # namespaces are backlogged together for a while (fair share is judged only then).
        # Appended: the runs the aborts name keep their index.
        at_ms = draw(st.integers(0, horizon_ms // 2))
        burst = draw(st.integers(16, 32))
        # Room for the burst and a solo stretch: the workload's last runs give way if need be
        # (the edges' runs come first and stay; aborts of a run given up go with it).
        keep = max(min(len(brought), len(runs)), min(len(runs), max_runs - burst - 2 * count * 6))
        runs, aborts = runs[:keep], [a for a in aborts if a.run < keep]
        burst = min(burst, max(0, max_runs - len(runs)))
        runs = runs + tuple(Submit(at_ms, work_ms=draw(st.integers(50, 400))) for _ in range(burst))
        runs = runs + draw(solo_stretch(len(runs), weights[:count], at_ms, max(0, max_runs - len(runs))))
    return Plan(seed=seed, workers=workers, submits=runs,
                faults=tuple(sorted(faults, key=lambda f: f.at_ms)), aborts=tuple(aborts),
                heal_ms=horizon_ms, config=config, namespaces=namespaces)
