"""Exploration: hypothesis generates plans, the simulator runs them, the checkers judge.

On a violation hypothesis shrinks the plan; the last failing plan it runs is
the minimal one, which is what we report, save and offer to replay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import anyio
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from lessor.leasing.backend import Backend, check_server, make_redis
from lessor.leasing.scripts import ClockMode
from lessor.server import EmbeddedServer
from lessor.simulations.breakage import Breakage
from lessor.simulations.checkers import Violation
from lessor.simulations.checks import Verdict, check_all
from lessor.simulations.network import InjectedErrors, flaky_client
from lessor.simulations.plan import Plan
from lessor.simulations.simulator import SimResult, Simulator
from lessor.simulations.strategies import plans
from lessor.simulations.truth import Truth

SIM_PARTITIONS = 2


@dataclass
class Outcome:
    """One simulated plan and its verdict."""

    plan: Plan
    result: SimResult
    verdict: Verdict


@dataclass
class Exploration:
    """What an exploration found."""

    examples: int = 0                      # plans run while generating (before any shrinking)
    runs: int = 0                          # plans run in all, shrinking included
    first_failure_at: int | None = None    # the generated example that first failed
    shrunk: Outcome | None = None          # the minimal failing plan, after shrinking
    totals: dict[str, int] = field(default_factory=dict)
    overlap_ms: int = 0
    quiesce_ms: list[int] = field(default_factory=list)
    seconds: float = 0.0


class SimServer:
    """A private embedded server that simulations may restart, crash and fail over.

    appendfsync always, so the AOF file holds every write the moment it is
    answered, and what a crash keeps is decided by the simulator's disk model
    (simulator.DiskModel), not by the machine's timing. No automatic AOF
    rewrite: the incr file only grows between the rewrites a simulation asks for.
    """

    def __init__(self, url: str | None = None) -> None:
        self.server = None if url else EmbeddedServer(
            appendfsync="always", extra_args=("--auto-aof-rewrite-percentage", "0"))
        self.url = url
        self._incr_path: str | None = None
        # Bound, never listening: a REPLICAOF to this port is refused, so it never syncs.
        self._dead_port = socket.socket()
        self._dead_port.bind(("127.0.0.1", 0))

    def __enter__(self) -> "SimServer":
        if self.server is not None:
            self.url = self.server.start().url
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()
        self._dead_port.close()

    @property
    def can_restart(self) -> bool:
        return self.server is not None

    @property
    def unused_port(self) -> int:
        return self._dead_port.getsockname()[1]

    async def restart(self) -> None:
        await anyio.to_thread.run_sync(self.server.restart)

    async def crash_to(self, aof_size: int) -> None:
        """SIGKILL; cut the incr AOF back to ``aof_size`` bytes (the unsynced tail is lost); start."""
        def crash() -> None:
            self.server.crash()
            with open(self.aof_path(), "r+b") as f:
                f.truncate(aof_size)
            self.server.start()
        await anyio.to_thread.run_sync(crash)

    def aof_path(self) -> str:
        """The incr file of the multi-part AOF (Valkey/Redis >= 7): the manifest's last ``type i``."""
        if self._incr_path is None:
            folder = os.path.join(self.server.workdir, "appendonlydir")
            manifest = next(f for f in os.listdir(folder) if f.endswith(".manifest"))
            with open(os.path.join(folder, manifest)) as f:
                incr = [line.split()[1] for line in f if line.split()[-2:] == ["type", "i"]]
            self._incr_path = os.path.join(folder, incr[-1])
        return self._incr_path

    def refresh_aof(self) -> None:
        """After an AOF rewrite: the incr file is a new one."""
        self._incr_path = None

    def aof_size(self) -> int:
        return os.path.getsize(self.aof_path())


async def open_sim_backend(url: str) -> Backend:
    """A Backend on the virtual clock with the simulation's partition count."""
    redis = make_redis(url)
    await check_server(redis, url)
    return Backend(redis=redis, url=url, partitions=SIM_PARTITIONS, clock=ClockMode.VIRTUAL)


@dataclass
class SimConnections:
    """The connections simulations run on: the backend, and the reapers' flaky one (store_errors)."""

    backend: Backend
    reapers: Backend
    injected: InjectedErrors

    async def aclose(self) -> None:
        await self.backend.redis.aclose()
        await self.reapers.redis.aclose()


async def open_sim_connections(url: str) -> SimConnections:
    """The simulation backend, and a copy of it on a flaky client of its own for the reapers."""
    backend = await open_sim_backend(url)
    injected = InjectedErrors()
    reapers = dataclasses.replace(backend, redis=flaky_client(url, injected))
    return SimConnections(backend, reapers, injected)


async def simulate(conns: SimConnections | Backend, plan: Plan, breakage: Breakage = Breakage(),
                   server: SimServer | None = None) -> Outcome:
    """Run one plan and check it (on a bare Backend: no store_errors injection)."""
    if isinstance(conns, Backend):
        conns = SimConnections(conns, conns, InjectedErrors())
    durability = plan.config.durability
    sim_backend = breakage.backend(conns.backend, durability)
    reapers = breakage.backend(conns.reapers, durability)
    store = server if server is not None and server.can_restart else None
    conns.injected.on = False
    result = await Simulator(sim_backend, plan, keeper_cls=breakage.keeper_cls(), store=store,
                             reaper_backend=reapers, injected=conns.injected, reaper_cls=breakage.reaper_cls(),
                             policy=breakage.policy()).run()
    conns.injected.on = False
    return Outcome(plan, result, await check_all(result, conns.backend))


@contextlib.contextmanager
def simulation_portal(url: str | None = None) -> Iterator[tuple[Callable, SimServer]]:
    """A blocking portal with a sim server and backend: yields run(plan, breakage) -> Outcome."""
    with SimServer(url) as server, start_blocking_portal() as portal:
        conns = portal.call(open_sim_connections, server.url)
        try:
            yield (lambda plan, breakage=Breakage(): portal.call(simulate, conns, plan, breakage, server)), server
        finally:
            portal.call(conns.aclose)


def explore(examples: int, *, seed: int | None = None, breakage: Breakage = Breakage(), url: str | None = None,
            shrink_runs: int = 300, on_example: Callable[[Exploration, Outcome], None] | None = None,
            **strategy: object) -> Exploration:
    """Generate up to ``examples`` plans (stopping at the first violation), shrink it, report.

    Shrinking runs at most ``shrink_runs`` more plans: after that every other
    candidate counts as passing, so hypothesis settles on the smallest failing
    plan found so far (and replays exactly that one, which still fails).
    """
    found = Exploration()
    started = time.perf_counter()  # clock: reporting only
    with simulation_portal(url) as (run, server):
        strategy.setdefault("server_restarts", server.can_restart)
        if not server.can_restart:
            strategy["server_restarts"] = False  # crashes, restarts, failovers need a server of our own
        generating = [True]

        failed: dict[Plan, Outcome] = {}

        def prop(plan: Plan) -> None:
            if plan in failed:  # hypothesis replays its best failure at the end: same verdict, no rerun
                found.shrunk = failed[plan]
                _violated(failed[plan])
            if not generating[0] and found.runs - found.examples >= shrink_runs:
                return  # shrink budget spent: only plans already seen failing still fail
            outcome = _run_or_crash(run, plan, breakage)
            found.runs += 1
            if generating[0]:
                found.examples += 1
                _accumulate(found, outcome)
                if on_example is not None:
                    on_example(found, outcome)
            if not outcome.verdict.ok:
                if generating[0]:
                    found.first_failure_at = found.examples
                    generating[0] = False
                failed[plan] = found.shrunk = outcome
                _violated(outcome)

        phases = [Phase.generate, Phase.shrink] if shrink_runs > 0 else [Phase.generate]
        test = settings(max_examples=examples, deadline=None, database=None, phases=phases,
                        suppress_health_check=list(HealthCheck), print_blob=False)(given(plans(**strategy))(prop))
        if seed is not None:
            test = hypothesis_seed(seed)(test)
        try:
            with _no_local_constants():
                test()
        except AssertionError:
            pass
    found.seconds = time.perf_counter() - started  # clock: reporting only
    return found


@contextlib.contextmanager
def _no_local_constants() -> Iterator[None]:
    """Hypothesis (6.13x on) sometimes draws a literal found in the source of any local module
    loaded at the time. The plans a seed names would then depend on which lessor modules the
    process happened to import (``lessor simulate`` imports every command; a test imports less)
    and on every constant anyone adds to lessor's code. Without them a seed names the same plans
    wherever it runs. (A hypothesis internal: without it, nothing to do.)"""
    try:
        from hypothesis.internal.conjecture import providers
        empty = providers.Constants()
        saved = providers._get_local_constants
    except (ImportError, AttributeError):
        yield
        return
    providers._get_local_constants = lambda: empty
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = saved
        providers.CONSTANTS_CACHE.cache.clear()


def _run_or_crash(run: Callable, plan: Plan, breakage: Breakage) -> Outcome:
    """Run one plan; a simulation that raises is itself a violation (named, with the plan kept)."""
    try:
        return run(plan, breakage)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the plan that broke it is what we report
        result = SimResult(plan, [], [], Truth(), None, 0, stats={})
        return Outcome(plan, result, Verdict([Violation("simulation_crashed", type(exc).__name__,
                                                        str(exc)[:500])], 0))


def _violated(outcome: Outcome) -> None:
    # One raise site: hypothesis tells failures apart by where they are raised.
    raise AssertionError("; ".join(map(str, outcome.verdict.violations[:3])))


def _accumulate(found: Exploration, outcome: Outcome) -> None:
    for key, value in outcome.result.stats.items():
        found.totals[key] = found.totals.get(key, 0) + value
    found.overlap_ms += outcome.verdict.overlap_ms
    if outcome.result.quiesced_ms is not None:
        found.quiesce_ms.append(outcome.result.quiesced_ms - outcome.plan.heal_ms)
