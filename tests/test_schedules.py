"""Schedules against the real server: each tick fires exactly once through ticker failovers."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import anyio
import pytest

from lessor.core import events as ev
from lessor.errors import ConfigError
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.schedules import (
    ScheduleConflict, Ticker, create_schedule, get_schedule, list_schedules, pause_schedule, resume_schedule,
    ticks_between,
)
from tests.test_leasing import NS
from tests.waiting import until_logged

pytestmark = pytest.mark.anyio
BERLIN = ZoneInfo("Europe/Berlin")
DAY_MS = 86_400_000


def ms(*args, tz=BERLIN) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


async def logged(backend, etype) -> list:
    return [e.event for e in await EventLog(backend).read_all() if isinstance(e.event, etype)]


def test_cron_and_zones_are_checked_by_name():
    with pytest.raises(ConfigError, match="bad cron expression"):
        anyio.run(_create_bad, "61 * * * *", "UTC")
    with pytest.raises(ConfigError, match="unknown time zone"):
        anyio.run(_create_bad, "* * * * *", "Mars/Olympus")


async def _create_bad(cron, tz):
    from lessor.scheduler.schedules import check_cron
    check_cron(cron, tz)


def test_dst_spring_gap_fires_once_after_it_and_the_autumn_hour_once():
    spring = [datetime.fromtimestamp(t / 1000, BERLIN).isoformat()
              for t in ticks_between("30 2 * * *", "Europe/Berlin", ms(2026, 3, 27, 12), ms(2026, 3, 30, 12), 10)]
    assert spring == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    autumn = [datetime.fromtimestamp(t / 1000, BERLIN).isoformat()
              for t in ticks_between("30 2 * * *", "Europe/Berlin", ms(2026, 10, 24, 12), ms(2026, 10, 26, 12), 10)]
    assert autumn == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


async def test_every_tick_of_ten_days_fires_exactly_once_through_ticker_failovers(vbackend):
    """3 tickers at once; the lease holder paused past its grace, killed, and partitioned (it comes
    back with its old token): every */5 tick of 10 days fires once, and the deposed writes are refused."""
    b = vbackend
    start = ms(2026, 3, 25, 0, 0)
    await b.vclock.set(start)
    assert await create_schedule(b, "every5", "t", "*/5 * * * *", timezone="Europe/Berlin", namespace=NS,
                                 catchup="all")
    assert not await create_schedule(b, "every5", "t", "*/5 * * * *", timezone="Europe/Berlin", namespace=NS,
                                     catchup="all")             # the same again: nothing new
    with pytest.raises(ScheduleConflict):
        await create_schedule(b, "every5", "t", "*/10 * * * *", namespace=NS)
    tickers = [Ticker(b, f"ticker-{i}", ttl_ms=60_000, grace_ms=30_000) for i in range(3)]
    step_ms = 30 * 60_000
    for step in range(10 * DAY_MS // step_ms):
        await b.vclock.advance(step_ms)
        holder = next((t for t in tickers if t.tokens), None)
        if step % 97 == 50 and holder is not None:      # partitioned: it misses passes, keeps its token
            holder.partitioned = 3
        if step % 131 == 70 and holder is not None:     # killed: a new process, no token
            tickers[tickers.index(holder)] = Ticker(b, holder.worker_id + "-r", ttl_ms=60_000, grace_ms=30_000)
        async with anyio.create_task_group() as tg:
            for t in tickers:
                if getattr(t, "partitioned", 0):
                    t.partitioned -= 1
                    continue
                tg.start_soon(t.tick_once)
    fired = await logged(b, ev.ScheduleTicked)
    expected = ticks_between("*/5 * * * *", "Europe/Berlin", start, b.vclock.now_ms, 10_000)
    assert len(expected) == 2880
    assert sorted(e.tick_ms for e in fired) == expected            # every tick, exactly once
    runs = {e.run for e in await logged(b, ev.RunCreated)}
    assert runs == {e.run for e in fired} and len(runs) == 2880     # one run per tick
    assert await logged(b, ev.ScheduleTickRejected), "a partitioned holder came back with a stale token"
    info = await get_schedule(b, "every5", namespace=NS)
    assert (info.ticks, info.phase) == (2880, "active")
    assert await verify(b) == []


@pytest.mark.parametrize("catchup, fired, skipped", [("all", 6, 0), ("latest", 1, 5), ("none", 1, 5)])
async def test_catch_up_after_downtime_follows_the_policy(vbackend, catchup, fired, skipped):
    b = vbackend
    start = ms(2026, 6, 1, 9, 0, tz=ZoneInfo("UTC"))
    await b.vclock.set(start)
    await create_schedule(b, "hourly", "t", "0 * * * *", namespace=NS, catchup=catchup, misfire_grace_s=60)
    await b.vclock.set(start + 6 * 3_600_000 + 30_000)          # 6 ticks missed; the last 30 s ago
    result = await Ticker(b, "t1").tick_once()
    assert (result.fired, result.skipped) == (fired, skipped)
    assert await verify(b) == []


async def test_a_paused_schedule_never_fires_its_pause_ticks(vbackend):
    b = vbackend
    start = ms(2026, 6, 1, 9, 0, tz=ZoneInfo("UTC"))
    await b.vclock.set(start)
    await create_schedule(b, "hourly", "t", "0 * * * *", namespace=NS, catchup="all")
    ticker = Ticker(b, "t1")
    await b.vclock.advance(3_600_000)
    assert (await ticker.tick_once()).fired == 1
    assert await pause_schedule(b, "hourly", namespace=NS, reason="maintenance")
    await b.vclock.advance(5 * 3_600_000)
    assert (await ticker.tick_once()).fired == 0
    assert await resume_schedule(b, "hourly", namespace=NS)
    await b.vclock.advance(3_600_000)
    assert (await ticker.tick_once()).fired == 1                   # only the tick after the resume
    assert [s.ticks for s in await list_schedules(b, NS)] == [2]
    assert await verify(b) == []


def fired_once(fired: list, expected: list[int]) -> list[str]:
    """What is wrong with a log's schedule_ticked events against the ticks that were due."""
    seen: dict[int, int] = {}
    for e in fired:
        seen[e.tick_ms] = seen.get(e.tick_ms, 0) + 1
    return ([f"tick {t} fired {n} times" for t, n in sorted(seen.items()) if n > 1]
            + [f"tick {t} never fired" for t in expected if t not in seen]
            + [f"tick {t} was never due" for t in seen if t not in set(expected)])


async def _race(b) -> list:
    """Two tickers read the schedule; one ticks; the other sends what it computed from its stale read."""
    start = ms(2026, 6, 1, 9, 0, tz=ZoneInfo("UTC"))
    await b.vclock.set(start)
    await create_schedule(b, "hourly", "t", "0 * * * *", namespace=NS, catchup="all")
    a, c = Ticker(b, "a"), Ticker(b, "c")
    await b.vclock.advance(3_600_000)
    keys = b.keys_for_run(NS, "hourly")
    stale = {k.decode(): v.decode(errors="replace") for k, v in
             (await b.redis.hgetall(keys.schedule(f"{NS}/hourly"))).items()}
    await a.tick_once()
    late = c._groups(NS, "hourly", stale, b.vclock.now_ms)
    await b.call("tick", [keys.prefix], ["c", 0, 10_000, 5_000, *late])
    return fired_once(await logged(b, ev.ScheduleTicked), [start + 3_600_000])


async def test_a_ticker_acting_on_a_stale_read_fires_nothing_twice(vbackend):
    assert await _race(vbackend) == []


async def test_the_exactly_once_check_catches_a_tick_script_without_its_fence(vbackend):
    """The control: a tick.lua that takes any token and any tick lets the stale ticker fire again."""
    from importlib import resources

    from lessor.leasing.scripts import compose
    b = vbackend
    body = (resources.files("lessor.leasing") / "lua" / "tick.lua").read_text()
    broken = body.replace("if token ~= '0' and token ~= lease.token then", "if false then") \
                 .replace("if token == '0' and not free then", "if false then") \
                 .replace("if h.phase == 'active' and tick_ms > tonumber(h.last_tick_ms) then",
                          "if h.phase == 'active' then")
    assert broken.count("if false then") == 2 and "tick_ms > tonumber" not in broken
    b.scripts._scripts["tick"] = b.redis.register_script(compose("tick", broken, b.clock))
    problems = await _race(b)
    assert len(problems) == 1 and problems[0].endswith("fired 2 times")


async def test_ticks_fire_exactly_once_across_a_server_crash(tmp_path):
    """kill -9 of the server mid-schedule (appendfsync always), tickers keep going after it."""
    from lessor.leasing.scripts import ClockMode
    from lessor.server import EmbeddedServer
    from tests.conftest import VirtualClock, make_backend
    with EmbeddedServer(appendfsync="always") as server:
        b = await make_backend(server.url, clock=ClockMode.VIRTUAL)
        b.vclock = VirtualClock(b)
        start = ms(2026, 3, 28, 0, 0)
        await b.vclock.set(start)
        await create_schedule(b, "every5", "t", "*/5 * * * *", timezone="Europe/Berlin", namespace=NS, catchup="all")
        tickers = [Ticker(b, f"k{i}", ttl_ms=60_000, grace_ms=30_000) for i in range(3)]
        now = start
        for step in range(2 * 48):          # two days (across the spring DST change) in 30 min steps
            if step == 40:
                await b.redis.aclose()
                server.crash()
                server.start()
                b = await make_backend(server.url, clock=ClockMode.VIRTUAL)
                b.vclock = VirtualClock(b)
                for t in tickers:
                    t.backend = b
            now += 30 * 60_000
            await b.vclock.set(now)
            async with anyio.create_task_group() as tg:
                for t in tickers:
                    tg.start_soon(t.tick_once)
        expected = ticks_between("*/5 * * * *", "Europe/Berlin", start, now, 10_000)
        assert fired_once(await logged(b, ev.ScheduleTicked), expected) == []
        assert await verify(b) == []
        await b.redis.aclose()


def test_the_schedule_commands_end_to_end(flushed):
    import json

    from tests.test_cli import lessor
    out = lessor("schedule", "create", "nightly", "t", "0 2 * * *", "--timezone", "Europe/Berlin",
                 "--catchup", "none", url=flushed, check=True).stdout
    assert "created" in out
    listed = json.loads(lessor("schedule", "list", "--json", url=flushed, check=True).stdout)
    assert [(s["name"], s["phase"], s["cron"]) for s in listed] == [("nightly", "active", "0 2 * * *")]
    assert "paused" in lessor("schedule", "pause", "nightly", url=flushed, check=True).stdout
    bad = lessor("schedule", "create", "x", "t", "not cron", url=flushed)
    assert bad.returncode == 2 and "bad cron expression" in bad.stderr
    assert "deleted" in lessor("schedule", "delete", "nightly", url=flushed, check=True).stdout
    assert lessor("schedule", "delete", "nightly", url=flushed).returncode == 2


class CountingOutage:
    """An Outage stand-in that counts the passes that told it the server answered."""

    def __init__(self) -> None:
        self.oks = 0

    def mark(self) -> int:
        return 0

    def ok(self, mark: int | None = None) -> None:
        self.oks += 1

    def failed(self, exc) -> float:
        raise exc


async def test_an_idle_ticker_only_probes_and_notices_a_new_schedule(vbackend):
    """With no schedule, a ticker sends one ZCARD per partition every idle_check_ms and makes no
    pass; its quiet passes tell the outage nothing (a lost server is not reported back by a pass
    that sent nothing); a schedule created meanwhile is ticked after the next probe. Counted, not timed."""
    b = vbackend
    ticker, outage = Ticker(b, "idle"), CountingOutage()
    probes, passes = [], []
    probe, tick_once = ticker.anything_scheduled, ticker.tick_once

    async def counted_probe() -> bool:
        probes.append(ticker.passes)
        return await probe()

    async def counted_tick():
        passes.append(ticker.passes)
        return await tick_once()

    ticker.anything_scheduled, ticker.tick_once = counted_probe, counted_tick
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: ticker.run(2, outage, idle_check_ms=20))
        with anyio.fail_after(30):
            while ticker.passes < 40:
                await anyio.sleep(0.01)
        assert passes == [] and len(probes) >= 4                 # no pass; a probe every 10 passes:
        assert [b - a for a, b in zip(probes, probes[1:])] == [10] * (len(probes) - 1)
        assert outage.oks in (len(probes) - 1, len(probes))      # only the probes reached the server
        await create_schedule(b, "hourly", "t", "0 * * * *", namespace=NS, catchup="all")
        await b.vclock.advance(3_600_000)
        await until_logged(b, lambda: _ticked(b), "the ticker to notice the new schedule", 30)
        assert passes and passes[0] - probes[-2] <= 10           # within one idle check
        tg.cancel_scope.cancel()


async def _ticked(b) -> bool:
    return bool(await logged(b, ev.ScheduleTicked))


async def test_a_worker_runs_the_schedule_pass(vbackend):
    """Every reaping Worker ticks schedules (and a non-reaping one does not)."""
    from lessor.scheduler.registry import Registry
    from lessor.scheduler.worker import Worker, WorkerConfig
    b = vbackend
    await create_schedule(b, "hourly", "t", "0 * * * *", namespace=NS, catchup="all", queue="scheduled")
    assert Worker(b, Registry(), WorkerConfig(queue="elsewhere", reap=False)).ticker is None
    worker = Worker(b, Registry(), WorkerConfig(queue="elsewhere", worker_id="w-ticks", tick_interval_ms=10,
                                                tune_gc=False))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        await b.vclock.advance(3 * 3_600_000)
        await until_logged(b, lambda: _ticked(b), "the worker's ticker to fire", 30)
        worker.stop()
    fired = await logged(b, ev.ScheduleTicked)
    assert [e.worker for e in fired] == ["w-ticks"] * 3 and (await get_schedule(b, "hourly", namespace=NS)).ticks == 3


async def test_jitter_delays_each_tick_the_same_for_every_ticker_and_runs_get_the_schedules_retries(vbackend):
    """jitter_s: a tick fires at its time plus a delay from (schedule, tick) only, within the bound,
    whichever ticker fires it; it keeps its time and run id. retries: each run's user retries."""
    from lessor.scheduler.schedules import schedule_run_id, tick_jitter_ms
    b = vbackend
    start = ms(2026, 6, 1, 9, 0, tz=ZoneInfo("UTC"))
    await b.vclock.set(start)
    await create_schedule(b, "spread", "t", "0 * * * *", namespace=NS, catchup="all", jitter_s=600, retries=2)
    tick = start + 3_600_000
    delay = tick_jitter_ms(NS, "spread", tick, 600_000)
    assert 0 < delay <= 600_000 and delay == tick_jitter_ms(NS, "spread", tick, 600_000)
    assert (await get_schedule(b, "spread", namespace=NS)).next_due_ms == tick + delay
    a, c = Ticker(b, "a"), Ticker(b, "c")
    await b.vclock.set(tick + delay - 1)
    assert (await a.tick_once()).fired == 0 and (await c.tick_once()).fired == 0   # its time came, its delay not
    await b.vclock.set(tick + delay)
    assert sum([(await a.tick_once()).fired, (await c.tick_once()).fired]) == 1
    [fired] = await logged(b, ev.ScheduleTicked)
    assert (fired.tick_ms, fired.run) == (tick, schedule_run_id(NS, "spread", tick, b.partitions))
    [action] = [e for e in await logged(b, ev.ActionCreated) if e.run == fired.run]
    assert action.user_retries == 2
    info = await get_schedule(b, "spread", namespace=NS)
    assert (info.jitter_ms, info.retries) == (600_000, 2)
    assert info.next_due_ms == tick + 3_600_000 + tick_jitter_ms(NS, "spread", tick + 3_600_000, 600_000)
    with pytest.raises(ConfigError, match="jitter_s must be within 0..3600"):
        await create_schedule(b, "x", "t", "0 * * * *", namespace=NS, jitter_s=7200)
    assert await verify(b) == []
