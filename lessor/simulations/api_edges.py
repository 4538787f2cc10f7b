"""Hypothesis strategies for the API's edges: aborts and child submissions that meet at the wrong moment.

Independent draws rarely line these up: an abort is one of at most two per plan,
at any time in the safety phase, of any run, and most runs it lands on have
ended or not begun; a child submission is held in the network only if a delay
happens to cover the instant its parent's task sends it. Each edge here (one in
every plan) brings along a run and times an abort of it (or the faults around
it) against what that run's task does, counted from its submit: its lease comes within a few
polls, so the timing is drawn over a spread of a heartbeat or more, and only a
part of the plans hit the moment exactly; the rest are ordinary aborts.

- ``failing``: the abort lands while an attempt that raises is running, so its
  failure may reach the server before a renewal tells the worker of the abort:
  nothing may be retried after it;
- ``spawning``: the abort lands while the task submits its children, so a
  submission may reach the server after it: a parent being aborted spawns nothing;
- ``awaiting``: the abort lands while the task awaits its children (ctx.call),
  which are queued or running: the abort reaches every one of them;
- ``late_child``: every worker's messages are held about a lease window while
  the task submits a child, then the workers are cut off and no reaper reaches
  the store: the submission arrives after the parent's lease died on the
  server's clock, and only its own token check can refuse it;
- ``late_cached``: the same held messages, around the end of a run with a cache
  key of its own: its completion arrives after its lease died and is refused;
  three runs with that key are submitted just after it arrives (one at least in
  the run's namespace), so a refused result that reached the cache is handed out
  as a cache hit, or is left in the cache at the end.

Returns the faults, the runs brought along (the first is the one aimed at), and
the abort's time (None: none).
"""

from __future__ import annotations

from hypothesis import strategies as st

from lessor.simulations.plan import Config, Fault, Submit

FLAVOURS = ("failing", "spawning", "awaiting", "late_child", "late_cached")
# The cache group of late_cached: its own (the workload draws groups 0 and 1).
EDGE_CACHE = 2


@st.composite
def api_edge(draw, workers: int, horizon_ms: int, config: Config) -> tuple[list[Fault], tuple[Submit, ...], int | None]:
    """One API edge (see the module docstring): (faults, the runs it brings, when the first is aborted)."""
    flavour = draw(st.sampled_from(FLAVOURS))
    at = draw(st.integers(0, horizon_ms // 2))
    # The lease comes a poll or a few after the submit (an idle worker polls less often): the
    # abort is aimed over that spread, and a heartbeat before it (the renewal that would tell).
    spread = st.integers(-config.heartbeat_ms, 4 * config.poll_ms)
    if flavour == "failing":
        work_ms = draw(st.integers(50, 2 * config.heartbeat_ms))
        run = Submit(at, work_ms, user_retries=draw(st.integers(1, 2)), fail_attempts=draw(st.integers(1, 2)))
        return [], (run,), at + work_ms + draw(spread)
    if flavour == "spawning":
        children, work_ms = draw(st.integers(1, 3)), draw(st.integers(config.heartbeat_ms, 6 * config.heartbeat_ms))
        run = Submit(at, work_ms, children=children, child_work_ms=draw(st.integers(20, 400)),
                     awaits_children=draw(st.booleans()))
        nth = draw(st.integers(1, children))   # which submission the abort is aimed at
        return [], (run,), at + nth * work_ms // (children + 1) + draw(spread)
    if flavour == "awaiting":
        child_ms = draw(st.integers(config.heartbeat_ms, 4 * config.heartbeat_ms))
        work_ms = draw(st.integers(50, 2 * config.heartbeat_ms))
        run = Submit(at, work_ms, children=draw(st.integers(1, 3)), child_work_ms=child_ms, awaits_children=True)
        return [], (run,), at + work_ms + draw(st.integers(0, child_ms))
    if flavour == "late_cached":
        return *_late_cached(draw, workers, at, config), None
    faults, run = _late_child(draw, workers, at, config)
    return faults, (run,), None


def _held_then_cut(workers: int, start: int, held_ms: int, delay_ms: int, window: int) -> list[Fault]:
    """From ``start`` every worker's messages are held ``delay_ms`` for ``held_ms``; then every
    worker is cut off for a lease window."""
    return [f for w in range(workers) for f in (Fault("delay", start, worker=w, duration_ms=held_ms, delay_ms=delay_ms),
                                                Fault("partition", start + held_ms, worker=w, duration_ms=window))]


def _late_child(draw, workers: int, at: int, config: Config) -> tuple[list[Fault], Submit]:
    """A run submitted at ``at`` whose one child is submitted halfway through its work, at a
    lead (its lease comes meanwhile) plus ``x``; from the lead on every worker's messages are
    held for ``held`` >= x ms (delivered a lease window or two later), then every worker is
    cut off for a lease window, while no reaper reaches the store."""
    window, lead_ms = config.ttl_ms + config.grace_ms, 2 * config.heartbeat_ms
    held_ms, delay_ms = draw(st.integers(50, 2 * config.heartbeat_ms)), draw(st.integers(window, 2 * window))
    x_ms = draw(st.integers(0, held_ms))
    run = Submit(at, 2 * (lead_ms - config.poll_ms + x_ms), children=1, child_work_ms=draw(st.integers(20, 400)))
    start = at + lead_ms
    return [Fault("store_errors", start, duration_ms=draw(st.integers(window, 3 * window)))] \
        + _held_then_cut(workers, start, held_ms, delay_ms, window), run


def _late_cached(draw, workers: int, at: int, config: Config) -> tuple[list[Fault], tuple[Submit, ...]]:
    """A run with the cache key of its own, submitted at ``at``, whose task ends at a lead (its
    lease comes meanwhile) plus ``x`` while every worker's messages are held (``held`` >= x ms,
    delivered a lease window or two later), so its completion arrives after its lease died; then
    three runs with the same key, just after the last held message arrives (the runs of a plan
    take turns over its namespaces: of three in a row, one shares the first run's)."""
    window, lead_ms = config.ttl_ms + config.grace_ms, 2 * config.heartbeat_ms
    held_ms, delay_ms = draw(st.integers(50, 2 * config.heartbeat_ms)), draw(st.integers(window, 2 * window))
    run = Submit(at, lead_ms - config.poll_ms + draw(st.integers(0, held_ms)), cache=EDGE_CACHE)
    arrived = at + lead_ms + held_ms + delay_ms
    followers = tuple(Submit(arrived + after, config.poll_ms, cache=EDGE_CACHE) for after in (50, 200, 400))
    return _held_then_cut(workers, at + lead_ms, held_ms, delay_ms, window), (run,) + followers
