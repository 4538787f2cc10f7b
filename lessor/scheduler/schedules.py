"""Schedules: cron ticks that each start exactly one run, through any failover.

A schedule (``create_schedule``) names a task, a cron expression and a time
zone. Each tick becomes a run whose id is derived from (schedule, tick), so a
tick can never start two runs. Ticking is done by a ``Ticker`` in every worker
and reaper, under a per-partition ticker lease with a fencing token
(``tick.lua``): one ticker per partition at a time, and a deposed ticker's late
write is refused and recorded (``schedule_tick_rejected``).

Cron is evaluated by ``cronsim`` (a well-kept evaluator that handles time zones
and DST the way cron daemons do: a tick in the spring-forward gap fires at the
first instant after it; a daily tick in the repeated autumn hour fires once).

Catch-up after downtime (``catchup``):

* ``all``: every missed tick fires, oldest first;
* ``latest``: only the most recent missed tick fires; the others are recorded
  as ``schedule_skipped``;
* ``none``: a tick more than ``misfire_grace_s`` late is skipped; one within it fires.

``jitter_s`` spreads a fleet of schedules that share a cron time: each tick fires up to that
long after its time, by an amount derived from (schedule, tick) only, so every ticker agrees
on it; the tick keeps its identity (its time and run id). Each run a tick starts gets the
schedule's ``retries`` (user retries).
"""

from __future__ import annotations

import itertools
import logging
import zlib
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from lessor.core.ids import check_id, check_namespace, run_id_beside
from lessor.errors import ConfigError, LessorError
from lessor.leasing.backend import Backend
from lessor.leasing.codes import Code, SubmitCode
from lessor.leasing.outage import Outage, keep_running
from lessor.leasing.scripts import VIRTUAL_CLOCK_KEY, ClockMode
from lessor.scheduler.values import pack_value

CATCHUP = ("all", "latest", "none")
log = logging.getLogger("lessor.schedules")
MAX_TICKS_PER_CALL = 200


class ScheduleConflict(LessorError, ValueError):
    """A schedule of that name exists with another definition."""


class UnknownSchedule(LessorError, KeyError):
    """No schedule of that name."""


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC") from None


def check_cron(cron: str, timezone: str) -> None:
    """ConfigError naming what is wrong with a cron expression or time zone."""
    try:
        CronSim(cron, datetime.now(_zone(timezone)))
    except CronSimError as exc:
        raise ConfigError(f"bad cron expression {cron!r}: {exc}") from None


def ticks_between(cron: str, timezone: str, after_ms: int, until_ms: int, limit: int) -> list[int]:
    """Tick instants (ms) strictly after ``after_ms`` and at most ``until_ms``, oldest first."""
    it = CronSim(cron, datetime.fromtimestamp(after_ms / 1000, _zone(timezone)))
    out = []
    for moment in it:
        ms = int(moment.timestamp() * 1000)
        if ms <= after_ms:
            continue
        if ms > until_ms or len(out) >= limit:
            break
        out.append(ms)
    return out


def next_tick(cron: str, timezone: str, after_ms: int) -> int:
    """The first tick instant (ms) strictly after ``after_ms``."""
    for moment in CronSim(cron, datetime.fromtimestamp(after_ms / 1000, _zone(timezone))):
        ms = int(moment.timestamp() * 1000)
        if ms > after_ms:
            return ms
    raise ConfigError(f"cron {cron!r} never fires")


def schedule_run_id(namespace: str, name: str, tick_ms: int, partitions: int) -> str:
    """The run id of one tick: derived from (schedule, tick) only, and in the schedule's own
    partition, so that the tick and its run are written by one atomic script."""
    return run_id_beside(namespace, name, f"{name[:24]}-{zlib.crc32(name.encode()):08x}-{tick_ms}", partitions)


def tick_jitter_ms(namespace: str, name: str, tick_ms: int, jitter_ms: int) -> int:
    """How long after its time a tick fires, within 0..jitter_ms: derived from (schedule, tick)
    only, so every ticker computes the same delay for it."""
    if jitter_ms <= 0:
        return 0
    return zlib.crc32(f"{namespace}/{name}/{tick_ms}".encode()) % (jitter_ms + 1)


async def server_now_ms(backend: Backend) -> int:
    """Now on the clock the scripts judge by: the server's TIME, or the simulations' virtual clock."""
    if backend.clock is ClockMode.VIRTUAL:
        return int(await backend.redis.get(VIRTUAL_CLOCK_KEY) or 0)
    seconds, micros = await backend.redis.time()
    return seconds * 1000 + micros // 1000


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule's live state."""

    namespace: str
    name: str
    task: str
    queue: str
    cron: str
    timezone: str
    catchup: str
    phase: str
    jitter_ms: int
    retries: int
    last_tick_ms: int
    last_run: str
    ticks: int
    skips: int
    next_due_ms: int | None


async def create_schedule(backend: Backend, name: str, task: str, cron: str, *, timezone: str = "UTC",
                          inputs=None, namespace: str, queue: str = "default", catchup: str = "latest",
                          misfire_grace_s: float = 60.0, start_ms: int | None = None, jitter_s: float = 0.0,
                          retries: int = 0) -> bool:
    """Create a schedule; True if created now, False if the same one existed (ScheduleConflict
    if another one has that name). Ticks after ``start_ms`` (default: now) fire, each up to
    ``jitter_s`` late (the same delay for every ticker); each run gets ``retries`` user retries."""
    check_namespace(namespace)
    check_id("schedule name", name)
    check_id("task", task)
    check_id("queue", queue)
    check_cron(cron, timezone)
    if catchup not in CATCHUP:
        raise ConfigError(f"catchup must be one of {', '.join(CATCHUP)}, got {catchup!r}")
    if not 0 <= misfire_grace_s <= 86_400:
        raise ConfigError(f"misfire_grace_s must be within 0..86400, got {misfire_grace_s!r}")
    if not 0 <= jitter_s <= 3600:
        raise ConfigError(f"jitter_s must be within 0..3600, got {jitter_s!r}")
    if not (isinstance(retries, int) and 0 <= retries <= 100):
        raise ConfigError(f"retries must be a whole number within 0..100, got {retries!r}")
    jitter_ms = int(jitter_s * 1000)
    start = start_ms if start_ms is not None else await server_now_ms(backend)
    keys = backend.keys_for_run(namespace, name)
    (code,) = await backend.call("schedule", [keys.prefix], [
        "create", namespace, name, task, queue, cron, timezone, catchup, start,
        pack_value(inputs) if inputs is not None else b"", int(misfire_grace_s * 1000),
        _jittered(namespace, name, next_tick(cron, timezone, start), jitter_ms), jitter_ms, retries])
    if code == SubmitCode.CONFLICT:
        raise ScheduleConflict(f"schedule {namespace}/{name} exists with another definition: "
                               "delete it first, or choose another name")
    return code == SubmitCode.CREATED


async def _verb(backend: Backend, namespace: str, name: str, verb: str, *args) -> int:
    check_namespace(namespace)
    check_id("schedule name", name)
    (code,) = await backend.call("schedule", [backend.keys_for_run(namespace, name).prefix],
                                 [verb, namespace, name, *args])
    if code == Code.UNKNOWN:
        raise UnknownSchedule(f"no schedule {namespace}/{name}: `lessor schedule list` shows them")
    return code


async def pause_schedule(backend: Backend, name: str, *, namespace: str, reason: str = "") -> bool:
    """Pause; False if it was paused already."""
    return await _verb(backend, namespace, name, "pause", reason) == Code.OK


async def resume_schedule(backend: Backend, name: str, *, namespace: str) -> bool:
    """Resume from now: the ticks of the pause never fire. False if it was active already."""
    info = await get_schedule(backend, name, namespace=namespace)
    now = await server_now_ms(backend)
    first = _jittered(namespace, name, next_tick(info.cron, info.timezone, now), info.jitter_ms)
    return await _verb(backend, namespace, name, "resume", now, first) == Code.OK


async def delete_schedule(backend: Backend, name: str, *, namespace: str) -> None:
    """Delete (its runs stay)."""
    await _verb(backend, namespace, name, "delete")


async def get_schedule(backend: Backend, name: str, *, namespace: str) -> ScheduleInfo:
    """One schedule's live state; UnknownSchedule if there is none."""
    keys = backend.keys_for_run(namespace, name)
    ref = f"{namespace}/{name}"
    h = await backend.redis.hgetall(keys.schedule(ref))
    if not h:
        raise UnknownSchedule(f"no schedule {ref}: `lessor schedule list` shows them")
    due = await backend.redis.zscore(keys.named("SCHEDULES"), ref)
    return _info(namespace, name, h, due)


def _info(namespace: str, name: str, h: dict, due) -> ScheduleInfo:
    text = {k.decode(): v.decode(errors="replace") for k, v in h.items() if k != b"inputs"}
    return ScheduleInfo(namespace, name, text.get("task", ""), text.get("queue", ""), text.get("cron", ""),
                        text.get("timezone", ""), text.get("catchup", ""), text.get("phase", ""),
                        int(text.get("jitter_ms") or 0), int(text.get("retries") or 0), int(text.get("last_tick_ms") or 0), text.get("last_run", ""), int(text.get("ticks") or 0),
                        int(text.get("skips") or 0), int(due) if due is not None else None)


async def list_schedules(backend: Backend, namespace: str | None = None) -> list[ScheduleInfo]:
    """Every schedule (of ``namespace``, if given), active and paused. Reads each partition's index
    and the paused ones from a bounded SCAN of schedule keys."""
    out = []
    for keys in backend.all_keys():
        async for raw in backend.redis.scan_iter(match=keys.schedule(f"{namespace or '*'}/*"), count=1000):
            ref = raw.decode()[len(keys.schedule("")):]
            ns, name = ref.rsplit("/", 1)
            due = await backend.redis.zscore(keys.named("SCHEDULES"), ref)
            out.append(_info(ns, name, await backend.redis.hgetall(raw), due))
    return sorted(out, key=lambda s: (s.namespace, s.name))


@dataclass
class TickResult:
    """One ticker pass over every partition."""

    fired: int = 0
    skipped: int = 0
    partitions_held: int = 0
    refused: int = 0


class Ticker:
    """Fires due ticks, partition by partition, under each partition's ticker lease."""

    def __init__(self, backend: Backend, worker_id: str, *, ttl_ms: int = 10_000, grace_ms: int = 5_000,
                 limit: int = 100) -> None:
        self.backend, self.worker_id = backend, worker_id
        self.ttl_ms, self.grace_ms, self.limit = ttl_ms, grace_ms, limit
        self.tokens: dict[int, int] = {}   # partition -> our ticker token there
        self.passes = 0                    # passes run() has made, quiet ones included

    async def run(self, interval_ms: int = 1000, outage=None, *, idle_check_ms: int = 10_000) -> None:
        """Pass after pass, forever (every worker and reaper runs one); store faults are waited
        out (one log line each way), and a lost ticker lease is simply taken again later.

        Cheap where nothing is scheduled: a ticker that holds no ticker lease asks, once every
        ``idle_check_ms``, whether any partition has an active schedule (one ZCARD each), and
        makes passes only while the answer is yes (or while it holds a ticker lease). So an idle
        process sends one command per 10 s (P on a cluster), and a schedule created meanwhile starts ticking within
        ``idle_check_ms``."""
        if interval_ms <= 0 or idle_check_ms < interval_ms:
            raise ValueError(f"interval_ms must be > 0 and idle_check_ms >= interval_ms, got {interval_ms} "
                             f"and {idle_check_ms}")
        every = idle_check_ms // interval_ms
        next_probe, busy = self.passes, False

        async def step() -> bool | None:
            nonlocal next_probe, busy
            self.passes += 1
            quiet = True
            if not self.tokens and self.passes > next_probe:
                busy, next_probe, quiet = await self.anything_scheduled(), self.passes + every - 1, False
            if busy or self.tokens:
                await self.tick_once()
                quiet = False
            return None if quiet else False   # None: nothing was sent (keep_running then tells the outage nothing)

        await keep_running(step, interval_ms, outage or Outage(f"ticker {self.worker_id}", self.backend.url, log=log))

    async def anything_scheduled(self) -> bool:
        """Whether any partition indexes an active schedule: one EXISTS naming every partition's
        index on one server (an empty sorted set does not exist), one pipelined per partition on a
        cluster, where a command may not span slots."""
        keys = [k.named("SCHEDULES") for k in self.backend.all_keys()]
        if not self.backend.cluster:
            return await self.backend.redis.exists(*keys) > 0
        pipe = self.backend.redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return any(await pipe.execute())

    async def tick_once(self) -> TickResult:
        """One pass: every partition's due schedules (a ticker that holds no lease tries to take it)."""
        result = TickResult()
        now = await server_now_ms(self.backend)
        for partition in range(self.backend.partitions):
            args = await self.due(partition, now)
            if args or self.tokens.get(partition, 0):
                self.heard(partition, args, await self.send(partition, args), result)
        return result

    async def due(self, partition: int, now: int) -> list:
        """What this ticker would send for ``partition`` at ``now``: the tick/skip groups of its due
        schedules, read from the server (the read and the send are apart: whatever happens in
        between, a pause or a partition, the fence and the last-tick guard in tick.lua decide)."""
        keys = self.backend.keys(partition)
        refs = await self.backend.redis.zrangebyscore(keys.named("SCHEDULES"), "-inf", now, start=0, num=self.limit)
        args: list = []
        for raw in refs:
            ref = raw.decode()
            ns, name = ref.rsplit("/", 1)
            h = await self.backend.redis.hgetall(keys.schedule(ref))
            if h.get(b"phase") != b"active":
                continue
            args += self._groups(ns, name, {k.decode(): v.decode(errors="replace") for k, v in h.items()}, now)
        return args

    async def send(self, partition: int, args: list) -> list:
        """tick.lua on ``partition`` with our token there (0: none) and ``args``; its raw answer."""
        return await self.backend.call("tick", [self.backend.keys(partition).prefix],
                                       [self.worker_id, self.tokens.get(partition, 0), self.ttl_ms, self.grace_ms,
                                        *args])

    def heard(self, partition: int, args: list, answer: list, result: TickResult) -> None:
        """Take in tick.lua's answer: our token there (kept, or forgotten when refused), and counts."""
        code, token, fired, skipped = answer
        if code == Code.OK:
            self.tokens[partition] = int(token)
            result.partitions_held += 1
            result.fired += fired
            result.skipped += skipped
        else:
            self.tokens.pop(partition, None)   # deposed, or someone else ticks here: try again next pass
            result.refused += 1 if args else 0

    def _groups(self, ns: str, name: str, h: dict, now: int) -> list:
        """The tick/skip groups of one schedule, by its catch-up policy."""
        cron, tz, jitter = h["cron"], h["timezone"], int(h.get("jitter_ms") or 0)
        last = max(int(h.get("last_tick_ms") or 0), int(h.get("start_ms") or 0))
        due = ticks_between(cron, tz, last, now, MAX_TICKS_PER_CALL)
        # A tick is ready once its jittered time has come; ticks go in order, so one not ready
        # holds back those after it (a jitter longer than the cron's period never reorders them).
        ready = list(itertools.takewhile(lambda t: _jittered(ns, name, t, jitter) <= now, due))
        if not ready:
            return []
        policy, grace = h.get("catchup", "latest"), int(h.get("misfire_grace_ms") or 0)
        if policy == "latest":
            fire, skip = ready[-1:], ready[:-1]
        elif policy == "none":
            fire = [t for t in ready if now - _jittered(ns, name, t, jitter) <= grace]
            skip = [t for t in ready if now - _jittered(ns, name, t, jitter) > grace]
        else:
            fire, skip = ready, []
        groups: list = []
        if len(ready) < len(due):
            nxt = due[len(ready)]
        else:
            nxt = next_tick(cron, tz, max(due[-1], now) if len(due) < MAX_TICKS_PER_CALL else due[-1])
        nxt = _jittered(ns, name, nxt, jitter)
        if skip:   # one event for a run of skipped ticks, ordered before any fired one
            groups += ["skip", ns, name, skip[-1], skip[0], len(skip), nxt]
        for t in fire:
            groups += ["tick", ns, name, t, schedule_run_id(ns, name, t, self.backend.partitions), 1, nxt]
        return groups


def _jittered(namespace: str, name: str, tick_ms: int, jitter_ms: int) -> int:
    return tick_ms + tick_jitter_ms(namespace, name, tick_ms, jitter_ms)


def tick_time(ms: int, timezone: str = "UTC") -> str:
    """A tick instant as local ISO time, for people."""
    return datetime.fromtimestamp(ms / 1000, _zone(timezone)).isoformat()


__all__ = ["Ticker", "ScheduleInfo", "ScheduleConflict", "UnknownSchedule", "create_schedule", "pause_schedule",
           "resume_schedule", "delete_schedule", "get_schedule", "list_schedules", "ticks_between", "next_tick",
           "schedule_run_id", "tick_jitter_ms"]
