"""Schedules under real faults, in real processes: exactly once, shown from the log.

Three schedule passes at once, each in its own process (two real Workers and a reaper
process, tests/ticking_process.py), each behind its own proxy. The test moves the server's
virtual clock through 10 days of a ``*/5 * * * *`` schedule (2880 ticks) in three-hour steps,
and meanwhile the ticker lease holder is paused past its grace (SIGSTOP/SIGCONT), killed
(SIGKILL; a new process takes its place), partitioned (its proxy cut, then healed), and the
server is killed (kill -9) and restarted from its AOF. The log must show every tick fired
exactly once, and every write of a deposed ticker refused.

No timing asserts: the test waits for conditions on the server (bounded, generous); a slow
machine only makes it slower.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import anyio
import pytest

from lessor.core import events as ev
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.leasing.scripts import ClockMode
from lessor.scheduler.schedules import create_schedule, get_schedule, ticks_between
from lessor.server import EmbeddedServer
from lessor.simulations.chaos.proxy import ChaosProxy
from lessor.simulations.checkers import ticks_exactly_once
from tests.conftest import VirtualClock, make_backend

pytestmark = pytest.mark.anyio
NS = "proj/development"
STEP_MS = 3 * 3_600_000
TTL_MS, GRACE_MS = 6 * 3_600_000, 3 * 3_600_000   # virtual: the holder keeps its lease across steps
DEAD_AFTER_STEPS = (TTL_MS + GRACE_MS) // STEP_MS + 1   # steps until a silent holder's lease is dead


class Fleet:
    """The three ticking processes, each behind its own proxy to the server."""

    def __init__(self, port: int, logs) -> None:
        self.port, self.logs = port, logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.proxies: dict[str, ChaosProxy] = {}

    async def start(self, name: str, kind: str) -> None:
        proxy = await ChaosProxy(self.port).start()
        self.proxies[name] = proxy
        out = open(self.logs / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.ticking_process", f"redis://127.0.0.1:{proxy.port}", name, kind,
             str(TTL_MS), str(GRACE_MS)], stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())

    async def started(self, wall_s: float) -> None:
        """Wait (bounded) until every process says it is ticking."""
        with anyio.fail_after(wall_s):
            while not all("ticking" in (self.logs / f"{n}.log").read_text() for n in self.procs):
                await anyio.sleep(0.05)

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    async def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
        for proxy in self.proxies.values():
            await proxy.stop()


async def holder(b, keys) -> str:
    return ((await b.redis.hget(keys.named("TICKER"), "worker")) or b"").decode()


async def caught_up(b, keys, ref: str, due_ms: int, wall_s: float) -> bool:
    """Wait (at most ``wall_s``) until the schedule handled its ticks up to ``due_ms``."""
    with anyio.move_on_after(wall_s):
        while int((await b.redis.hget(keys.schedule(ref), "last_tick_ms")) or 0) < due_ms:
            await anyio.sleep(0.005)
        return True
    return False


async def test_ten_days_of_ticks_fire_exactly_once_through_pause_kill_partition_and_restart(tmp_path):
    start = int(datetime(2026, 3, 25, tzinfo=ZoneInfo("Europe/Berlin")).timestamp() * 1000)
    faults: list[str] = []
    with EmbeddedServer(appendfsync="always") as server:
        b = await make_backend(server.url, clock=ClockMode.VIRTUAL)
        b.vclock = VirtualClock(b)
        await b.vclock.set(start)
        await create_schedule(b, "every5", "report", "*/5 * * * *", timezone="Europe/Berlin", namespace=NS,
                              queue="scheduled", catchup="all", start_ms=start)
        keys, ref = b.keys_for_run(NS, "every5"), f"{NS}/every5"
        fleet = Fleet(server.port, tmp_path)
        for name, kind in (("w1", "worker"), ("w2", "worker"), ("reaper", "reaper")):
            await fleet.start(name, kind)
        stopped: tuple[str, int] | None = None     # (name, step it resumes at)
        cut: tuple[str, int] | None = None
        try:
            await fleet.started(60)
            now = start
            for step in range(1, 10 * 8 + 1):
                now += STEP_MS
                await b.vclock.set(now)
                current = await holder(b, keys)
                if step == 10 and current:                  # paused past its grace
                    fleet.procs[current].send_signal(signal.SIGSTOP)
                    stopped = (current, step + DEAD_AFTER_STEPS + 1)
                    faults.append(f"SIGSTOP {current} at step {step}")
                if stopped and step == stopped[1]:
                    fleet.procs[stopped[0]].send_signal(signal.SIGCONT)
                    stopped = None
                if step == 27 and current:                 # killed: a new process in its place
                    fleet.kill(current)
                    await fleet.start(current + "-new", "worker")
                    faults.append(f"SIGKILL {current} at step {step}")
                if step == 44 and current:                 # partitioned, then healed
                    fleet.proxies[current].cut()
                    cut = (current, step + DEAD_AFTER_STEPS + 1)
                    faults.append(f"partitioned {current} at step {step}")
                if cut and step == cut[1]:
                    fleet.proxies[cut[0]].heal()
                    cut = None
                if step == 60:                             # the server: kill -9, back from its AOF
                    await b.redis.aclose()
                    server.crash()
                    server.start()
                    b = await make_backend(server.url, clock=ClockMode.VIRTUAL)
                    b.vclock = VirtualClock(b)
                    await b.vclock.set(now)
                    faults.append(f"server kill -9 and restart at step {step}")
                # Each step waits (bounded) for the ticks due; while the holder is silent, none come
                # until its lease is dead, and the next passes catch up (catchup all).
                await caught_up(b, keys, ref, ticks_between("*/5 * * * *", "Europe/Berlin", start, now, 10_000)[-1],
                                0.5 if stopped or cut else 10)
            expected = ticks_between("*/5 * * * *", "Europe/Berlin", start, now, 10_000)
            assert await caught_up(b, keys, ref, expected[-1], 120), "the tickers never caught up"
            entries = await EventLog(b).read_all()
        finally:
            await fleet.stop()
        pairs = [(e.partition, e.event) for e in entries]
        fired = [e for _, e in pairs if isinstance(e, ev.ScheduleTicked)]
        rejected = [e for _, e in pairs if isinstance(e, ev.ScheduleTickRejected)]
        counts: dict = {}
        problems = ticks_exactly_once.check(pairs, due_by_ms=now, counts=counts)
        workers = sorted({e.worker for e in fired})
        print(f"\nexactly once, real processes: {len(expected)} ticks due, {len(fired)} fired, "
              f"{len(fired) - len({e.tick_ms for e in fired})} duplicates, {counts[ref].skipped} skipped, "
              f"{len(rejected)} stale ticker writes refused; fired by {workers}; faults: {'; '.join(faults)}")
        assert len(expected) == 2880
        assert sorted(e.tick_ms for e in fired) == expected          # every tick, exactly once
        assert problems == [], problems
        assert len(faults) == 4, faults
        assert len(workers) >= 2, "the ticker lease moved between processes"
        assert len({e.run for e in fired}) == 2880
        assert (await get_schedule(b, "every5", namespace=NS)).ticks == 2880
        assert await verify(b) == []
        await b.redis.aclose()
