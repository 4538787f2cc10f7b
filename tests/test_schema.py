"""The definitions generated into Lua, checked against the server that runs them.

* every script's ``Touches:`` header lists exactly the keys it can reach (read
  from the Lua), and a traced workload through every script touches no other;
* ``emit()`` writes nothing for an event its definition does not allow: an
  unknown type, a mistyped or missing field, an illegal transition;
* the prelude's lease rules (``lease_dead``, ``check_token``), each tested once;
* the generated handlers cover exactly the defined events.
"""

from __future__ import annotations

import dataclasses
from importlib import resources

import msgpack
import pytest
from redis.exceptions import ResponseError

from lessor.core import codec
from lessor.core import events as ev
from lessor.core.codec import decode_entry
from lessor.core.events import EVENT_TYPES
from lessor.core.keyspace import key_name
from lessor.errors import EventDecodeError, StaleToken
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing import fairshare
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.replay import verify
from lessor.leasing.retention import RetentionPolicy, retire_once, set_policy
from lessor.scheduler.schedules import Ticker, create_schedule, delete_schedule, pause_schedule, resume_schedule
from lessor.leasing.scripts import SCRIPT_NAMES, ClockMode, Scripts, compose
from lessor.leasing.touches import declared, reachable
from lessor.scheduler.control import abort_run
from lessor.scheduler.settings import SettingsConflict, write_scope
from lessor.scheduler.triggers import create_trigger, delete_trigger, fire
from lessor.scheduler.submit import Retries, RunSpec, submit_run, submit_runs

pytestmark = pytest.mark.anyio
NS = "proj/development"
CFG = LeaseConfig(ttl_ms=1000, grace_ms=500)
TRACE = "lessor:test:touched"


async def _every_path(b) -> None:
    """A workload through every script and the branches that touch different keys."""
    v = b.vclock
    w1, w2 = LeaseClient(b, "w1", CFG), LeaseClient(b, "w2", CFG)
    await submit_runs(b, [RunSpec("t", namespace=NS, retries=Retries(user=1, system=1, backoff_ms=100),
                                  timeout_ms=5000, cache_key="ck") for _ in range(7)])
    await submit_run(b, "t", namespace=NS, run_id="same")
    await submit_run(b, "t", namespace=NS, run_id="same")                 # a repeat
    await submit_run(b, "t", namespace=NS, cache_key="ck", cached_result=b"r")  # a cache hit
    await fairshare.set_fair_share(b, "default", NS, weight=2, max_running=100)
    leases = await w1.acquire(NS, "default", 7)
    leases += await w1.acquire("*", "default", 1)                           # by fair share
    await w1.acquire(NS, "nothing-here", 1)                                 # an idle poll
    await w1.acquire("*", "nothing-here", 1)
    a, c, d, e, f, g, h, i = leases
    await w1.complete(a, b"ok")                                             # stores the cache entry
    await w1.complete(a, b"ok")                                             # a repeat
    await w1.fail(c, "boom", retryable=True)                                # backoff: delayed
    await w1.fail(d, "boom", retryable=False)
    await w1.release(e, "bye")
    # children: one created, one repeated, one cached
    parent = f
    for child in ("c1", "c1", "c2"):
        await b.call("submit_child", [b.keys(parent.partition).prefix],
                     [parent.ref, parent.token, "w1", child, "t", b"", "default", 1, 0, 0, 0, 0, "",
                      *([b"cached"] if child == "c2" else [])])
    await abort_run(b, NS, g.ref.split("/")[2])                             # a running root: requested
    assert (await w1.renew([g]))[g.ref].name == "ABORTED"
    await w1.release(g, "aborted")
    await v.advance(1200)                                                   # inside grace: resumed
    await w1.renew([h])
    with pytest.raises(StaleToken):
        await w2.complete(dataclasses.replace(i, token=i.token + 1), b"")
    await w2.renew([dataclasses.replace(i, token=i.token + 7)])            # stale renewal
    await v.advance(3000)                                                   # past grace and backoff
    await Reaper(b, limit=100).reap_once()                                  # expiries, promotion
    await w1.renew([h])                                                     # reaped: stale
    await submit_run(b, "t", namespace=NS, timeout_ms=1000)
    (late,) = await w2.acquire(NS, "default", 1)
    await v.advance(1100)
    await w2.renew([late])
    await Reaper(b, limit=100).reap_once()                                  # a timeout
    await EventLog(b).append([ev.RunCreated(ns=NS, run="appended", task="t", queue="q"),
                              ev.ActionCreated(ns=NS, run="appended", action="a0", task="t", queue="q")])
    await set_policy(b, NS, RetentionPolicy(keep_runs=0, cache_max=0))
    await retire_once(b)                                                    # retention
    await create_schedule(b, "hourly", "t", "0 * * * *", namespace=NS, catchup="latest")
    await v.advance(3 * 3_600_000)
    stale = Ticker(b, "ticker-a")
    await stale.tick_once()                                                 # a skip and a tick
    stale.tokens = {p: t + 1 for p, t in stale.tokens.items()}              # a deposed ticker's token
    await v.advance(3_600_000)
    await stale.tick_once()                                                 # refused, recorded
    await pause_schedule(b, "hourly", namespace=NS)
    await resume_schedule(b, "hourly", namespace=NS)
    await delete_schedule(b, "hourly", namespace=NS)
    await write_scope(b, "*", {"run.default_queue": "q"}, 0)                 # settings, then a stale write
    with pytest.raises(SettingsConflict):
        await write_scope(b, "*", {"run.default_queue": "q"}, 0)
    await create_trigger(b, "hook", "t", namespace=NS, window_s=10)         # triggers: create, fire,
    await fire(b, "hook", 1, dedup_key="k", namespace=NS)                   # a deduplicated fire,
    await fire(b, "hook", 1, dedup_key="k", namespace=NS)
    await v.advance(10_000)                                                 # a window that ended, delete
    await fire(b, "hook", 1, dedup_key="k2", namespace=NS)
    await delete_trigger(b, "hook", namespace=NS)
    await fairshare.sync(b)                                                 # fair-share repair


async def _touched(b) -> dict[str, set[str]]:
    """What the traced scripts touched, per script, as key-schema names."""
    touched: dict[str, set[str]] = {name: set() for name in SCRIPT_NAMES}
    for raw in await b.redis.lrange(TRACE, 0, -1):
        script, key = raw.decode().split(" ", 1)
        prefix = next((k.prefix for k in b.all_keys() if key.startswith(k.prefix)), None)
        if prefix is None:
            assert key in (TRACE, "lessor:vclock"), f"{script} touched {key}, outside every partition"
            continue
        touched[script].add(key_name(prefix, key))
    await b.redis.delete(TRACE)
    return touched


def _undeclared(touched: dict[str, set[str]], declared_) -> dict[str, list[str]]:
    return {name: sorted(keys - declared_(name)) for name, keys in touched.items() if keys - declared_(name)}


def test_every_header_lists_exactly_the_keys_its_script_can_reach():
    """Static: the key names a script and the prelude functions it calls mention, closed over calls."""
    wrong = {name: {"missing": sorted(reachable(name) - declared(name)),
                    "extra": sorted(declared(name) - reachable(name))}
             for name in SCRIPT_NAMES if reachable(name) != declared(name)}
    assert wrong == {}, "update the Touches: line of these scripts"
    # ... which holds because no Lua builds a key by hand: every key comes from the schema.
    lua = resources.files("lessor.leasing") / "lua"
    hand_built = [f.name for f in lua.iterdir() if f.name.endswith(".lua") and "PREFIX .." in f.read_text()]
    assert hand_built == [], "build keys with the generated names of core/keyspace.py"


async def test_traced_scripts_touch_only_keys_their_headers_list(vbackend):
    """Dynamic: every script, through its branches, with each key it names recorded."""
    b = vbackend
    b.scripts = Scripts(b.redis, b.clock, trace=True)
    await _every_path(b)
    touched = await _touched(b)
    assert all(touched[name] for name in SCRIPT_NAMES), "the workload must run every script"
    assert _undeclared(touched, declared) == {}
    assert await verify(b) == []


async def test_the_trace_catches_a_header_that_leaves_a_key_out(vbackend):
    b = vbackend
    b.scripts = Scripts(b.redis, b.clock, trace=True)
    await submit_run(b, "t", namespace=NS)
    touched = {"submit": (await _touched(b))["submit"]}
    assert _undeclared(touched, declared) == {}
    assert _undeclared(touched, lambda name: declared(name) - {"SEQ"}) == {"submit": ["SEQ"]}


# --- emit: nothing reaches the stream that its definition does not allow --------------


async def _emit(b, lua_event: str, expect_error: str) -> None:
    body = "--@@USES_LIB@@\nreturn emit(" + lua_event + ")"
    prefix = b.keys(0).prefix
    before = await b.redis.xlen(b.keys(0).stream)
    with pytest.raises(ResponseError, match=expect_error):
        await b.redis.eval(compose("test", body, b.clock), 1, prefix)
    assert await b.redis.xlen(b.keys(0).stream) == before, "a refused event reached the stream"


async def test_emit_never_writes_an_event_its_definition_does_not_allow(backend):
    b = backend
    ok = "{type = 'run_created', ns = 'proj/development', run = 'r1', task = 't', queue = 'q', idempotency_key = 'k'}"
    await _emit(b, "{type = 'no_such_event', ns = 'proj/development', run = 'r1', action = 'a0'}",
                "unknown event type no_such_event")
    await _emit(b, "{type = 'run_created', ns = 'proj/development', run = 'r1', task = 't'}", "needs field queue")
    await _emit(b, "{type = 'run_created', ns = 'proj/development', run = 'r1', task = 't', queue = 'q', inputs = 5}",
                "field inputs must be a string")
    await _emit(b, "{type = 'action_leased', ns = 'proj/development', run = 'r1', action = 'a0', attempt = 1.5,"
                   " token = 1, worker = 'w', ttl_ms = 1, grace_ms = 1, deadline_ms = 1}", "must be an integer")
    await _emit(b, "{type = 'run_completed', ns = 'proj/development', run = 'r1', phase = 'succeeded'}",
                "illegal transition")
    assert await b.redis.keys(b.keys(0).prefix + "a:*") == []
    # ... and the well-formed one is written, with its projection (a run's own fields, on its
    # root action's hash: the run lives there)
    body = "--@@USES_LIB@@\nreturn emit(" + ok + ")"
    await b.redis.eval(compose("test", body, b.clock), 1, b.keys(0).prefix)
    assert await b.redis.xlen(b.keys(0).stream) == 1
    assert await b.redis.hget(b.keys(0).run_root("proj/development/r1"), "idempotency_key") == b"k"


async def test_generated_handlers_cover_exactly_the_defined_events(backend):
    body = """--@@USES_LIB@@
local a, r = {}, {}
for k in pairs(ON) do a[#a + 1] = k end
for k in pairs(ON_RUN) do r[#r + 1] = k end
return {a, r}"""
    actions, runs = await backend.redis.eval(compose("test", body), 1, backend.keys(0).prefix)
    assert {x.decode() for x in actions} == {t for t, c in EVENT_TYPES.items() if c.MOVES}
    assert {x.decode() for x in runs} == {t for t, c in EVENT_TYPES.items() if c.RUN_MOVES}


# --- the lease rules, each written once in the prelude, tested once -------------------


async def test_lease_dead_is_strictly_after_deadline_plus_grace(vbackend):
    body = """--@@USES_LIB@@
return {lease_dead({deadline_ms = NOW - 500, grace_ms = 500}) and 1 or 0,
        lease_dead({deadline_ms = tostring(NOW - 501), grace_ms = '500'}) and 1 or 0,
        lease_expiry({deadline_ms = '10', grace_ms = 5})}"""
    assert await vbackend.redis.eval(compose("test", body, ClockMode.VIRTUAL), 1, vbackend.keys(0).prefix) == [0, 1, 15]


async def test_check_token_needs_the_current_token_of_a_running_action(backend):
    body = """--@@USES_LIB@@
local function c(h, t) return check_token(h, t) and 1 or 0 end
return {c({phase = 'running', token = '7'}, '7'), c({phase = 'running', token = '7'}, '8'),
        c({phase = 'queued', token = '7'}, '7'), c({phase = 'succeeded', token = '7'}, '7')}"""
    assert await backend.redis.eval(compose("test", body), 1, backend.keys(0).prefix) == [1, 0, 0, 0]


async def test_lease_extended_moves_only_the_deadline_and_replays(vbackend):
    b = vbackend
    await submit_run(b, "t", namespace=NS)
    (lease,) = await LeaseClient(b, "w1", CFG).acquire(NS, "default", 1)
    ns, run, action = lease.ref.rsplit("/", 2)
    await EventLog(b).append([ev.LeaseExtended(ns=ns, run=run, action=action, attempt=lease.attempt,
                                               token=lease.token, worker="w1", deadline_ms=2_000_000)])
    key = b.keys_for_ref(lease.ref).action(lease.ref)
    assert await b.redis.hmget(key, "phase", "deadline_ms") == [b"running", b"2000000"]
    assert await verify(b) == []


# --- checks before writes: an error right after the checks leaves nothing half-done -----


async def _snapshot(b) -> dict:
    """Every key with its exact serialized value (DUMP), except the virtual clock."""
    out = {}
    async for key in b.redis.scan_iter(count=1000):
        if key != b"lessor:vclock":
            out[key] = await b.redis.dump(key)
    return out


async def _each_script_once(b, failing: Scripts) -> dict[str, str]:
    """Call every script once, validly, with ``failing`` scripts; the first line of each error."""
    clients = [LeaseClient(b, f"w{i}", CFG) for i in range(5)]
    for _ in range(7):
        await submit_run(b, "t", namespace=NS, timeout_ms=60_000)
    leases = [(await c.acquire(NS, "default", 1))[0] for c in clients]
    await b.vclock.advance(100)
    calls = {
        "submit": lambda: submit_run(b, "t", namespace=NS),
        "acquire": lambda: clients[0].acquire(NS, "default", 1),
        "renew": lambda: clients[0].renew([leases[0]]),
        "complete": lambda: clients[1].complete(leases[1], b"r"),
        "fail": lambda: clients[2].fail(leases[2], "boom"),
        "release": lambda: clients[3].release(leases[3], "bye"),
        "submit_child": lambda: b.call("submit_child", [b.keys(leases[4].partition).prefix],
                                       [leases[4].ref, leases[4].token, "w4", "c1", "t", b"", "default",
                                        0, 0, 0, 0, 0, ""]),
        "abort": lambda: abort_run(b, NS, leases[4].ref.split("/")[2]),
        "append_events": lambda: EventLog(b).append([ev.RunCreated(ns=NS, run="x1", task="t", queue="q"),
                                                     ev.ActionCreated(ns=NS, run="x1", action="a0", task="t", queue="q")]),
        "reap": lambda: b.call("reap", [b.keys(leases[0].partition).prefix], [100, 0]),
        "retire": lambda: b.call("retire", [b.keys(leases[1].partition).prefix], [NS, 0, 0, 100, 0, 0]),
        "schedule": lambda: create_schedule(b, "s1", "t", "* * * * *", namespace=NS),
        "tick": lambda: b.call("tick", [b.keys(0).prefix], ["w1", 0, 10_000, 5_000]),
        "settings": lambda: write_scope(b, "*/production", {"run.default_retries": 2}, 0),
        "trigger": lambda: create_trigger(b, "hook", "t", namespace=NS),
        "fair_sync": lambda: b.call("fair_sync", [b.keys(0).prefix], [1, NS, "default", "default"]),
    }
    errors = {}
    working = b.scripts
    for name, call in calls.items():
        if name == "reap":
            await b.vclock.advance(CFG.ttl_ms + CFG.grace_ms + 1)  # so the pass has leases to expire
        before = await _snapshot(b)
        b.scripts = failing
        try:
            await call()
            errors[name] = "no error"
        except Exception as exc:  # the injected error, whichever wrapper it arrives in
            errors[name] = str(exc).splitlines()[0]
        finally:
            b.scripts = working
        if await _snapshot(b) != before:
            errors[name] += " [LEFT WRITES BEHIND]"
    return errors


async def test_an_error_after_the_checks_leaves_every_script_without_a_write(vbackend):
    b = vbackend
    errors = await _each_script_once(b, Scripts(b.redis, b.clock, fail_after_checks=True))
    assert set(errors) == set(SCRIPT_NAMES)
    assert {name: why for name, why in errors.items()
            if "LESSOR_INJECTED" not in why or "LEFT WRITES" in why} == {}


async def test_the_snapshot_catches_a_script_that_writes_before_its_checks(vbackend):
    """The control: a submit that bumps its FIFO sequence before checked() is caught."""
    b = vbackend
    failing = Scripts(b.redis, b.clock, fail_after_checks=True)
    body = (resources.files("lessor.leasing") / "lua" / "submit.lua").read_text()
    broken = body.replace("checked()\n", "redis.call('INCR', SEQ)\nchecked()\n", 1)
    failing._scripts["submit"] = b.redis.register_script(compose("submit", broken, b.clock, fail_after_checks=True))
    errors = await _each_script_once(b, failing)
    assert "LEFT WRITES BEHIND" in errors["submit"]
    assert all("LEFT WRITES" not in why for name, why in errors.items() if name != "submit")


# --- the log's unit is the call: one stream entry holds the events one script call wrote ------


async def test_a_call_writes_its_events_as_one_entry_and_a_half_failed_call_still_logs_them(backend):
    b = backend
    stream = b.keys(0).stream
    two = ("--@@USES_LIB@@\n"
           "emit({type = 'run_created', ns = 'proj/development', run = 'r1', task = 't', queue = 'q', idempotency_key = 'k'})\n"
           "emit({type = 'run_created', ns = 'proj/development', run = 'r2', task = 't', queue = 'q', idempotency_key = 'k'})\n")
    await b.redis.eval(compose("test", two + "return 1", b.clock), 1, b.keys(0).prefix)
    [(entry_id, fields)] = await b.redis.xrange(stream)
    events = decode_entry(fields[b"e"], entry_id.decode())
    assert [(e.run, e.index, e.id) for e in events] == [("r1", 0, entry_id.decode()), ("r2", 1, entry_id.decode())]
    # A call that fails after it wrote (a bug, or a command the server refused) keeps its writes, so
    # its events are logged too: the log still says what the projections do.
    failing = two.replace("'r1'", "'r3'").replace("'r2'", "'r4'") + "error('boom after two writes')"
    with pytest.raises(ResponseError, match="boom after two writes"):
        await b.redis.eval(compose("test", failing, b.clock), 1, b.keys(0).prefix)
    rows = await b.redis.xrange(stream)
    assert len(rows) == 2 and [e.run for e in decode_entry(rows[1][1][b"e"])] == ["r3", "r4"]
    assert await b.redis.hget(b.keys(0).run_root("proj/development/r4"), "idempotency_key") == b"k"


def test_an_entry_is_read_whole_or_refused():
    one = codec.encode(ev.RunCreated(ns="p/d", run="r1", task="t", queue="q", ts=5))
    two = codec.encode(ev.RunCreated(ns="p/d", run="r2", task="t", queue="q", ts=5))
    assert [e.run for e in codec.decode_entry(one, "1-0")] == ["r1"]        # an entry of one event (older logs)
    assert [(e.run, e.index) for e in codec.decode_entry(one + two, "1-0")] == [("r1", 0), ("r2", 1)]
    with pytest.raises(EventDecodeError, match="ends in the middle of an event"):
        codec.decode_entry(one + two[:-3], "1-0")
    with pytest.raises(EventDecodeError, match="event 2 of its entry"):
        codec.decode_entry(one + msgpack.packb({"v": 1, "type": "run_created"}), "1-0")
