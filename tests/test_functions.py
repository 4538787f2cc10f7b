"""The scripts as one FUNCTION library (leasing/scripts.py): loaded again when the server lost
it, builds that differ side by side, and no per-call state kept from one call to the next."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from lessor.core.ids import partition_of
from lessor.leasing.scripts import SCRIPT_NAMES, ClockMode, Scripts, library
from lessor.scheduler.submit import submit_run

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "fn"


async def flush_functions(backend) -> None:
    """FUNCTION FLUSH on every primary (what a restart without persistence or a new node looks like)."""
    await backend.redis.function_flush()


async def test_a_server_that_lost_the_library_gets_it_again_on_every_call_path(backend):
    name = backend.scripts.renew.name
    await flush_functions(backend)
    with pytest.raises(ResponseError, match="(?i)function not found"):
        await backend.client_for(backend.keys(0).prefix).fcall(name, 1, backend.keys(0).prefix, "w1", 1000)
    # Backend.call: the plain path (Function.__call__) ...
    assert (await submit_run(backend, "t", namespace=NS, queue=QUEUE)).created
    # ... and the per-node pipeline that carries durability waits and every cluster call.
    await flush_functions(backend)
    prefix = backend.keys(0).prefix
    reply = await backend._call_on_node("renew", [prefix], ["w1", 1000], wait=False)
    assert len(reply) == 1   # {now}: no leases named, none renewed


async def test_builds_that_differ_live_side_by_side(backend):
    traced = Scripts(backend.redis, backend.clock, trace=True)
    assert traced.renew.library.name != backend.scripts.renew.library.name
    assert library().name == backend.scripts.renew.library.name   # one build, one name
    prefix = backend.keys(0).prefix
    await traced.renew(keys=[prefix], args=["w1", 1000])
    await backend.scripts.renew(keys=[prefix], args=["w1", 1000])
    loaded = {entry[1] for entry in await backend.redis.function_list()}
    assert {traced.renew.library.name.encode(), backend.scripts.renew.library.name.encode()} <= loaded


async def test_no_state_is_kept_from_one_call_to_the_next(vbackend):
    """The library's closures are built once, so whatever a call sets must be set again by the next:
    the clock (NOW) and the queues already woken in this call (a second submit must wake again)."""
    run = await submit_run(vbackend, "t", namespace=NS, queue=QUEUE)
    keys = vbackend.keys_for_run(NS, run.run_id)
    wake = keys.wake(NS, QUEUE)
    assert await vbackend.redis.llen(wake) == 1
    await vbackend.redis.delete(wake)            # an idle worker took the wake-up
    await vbackend.vclock.advance(5_000)
    again = await submit_run(vbackend, "t", namespace=NS, queue=QUEUE, run_id=_same_partition(vbackend, run))
    assert again.created and await vbackend.redis.llen(wake) == 1
    created = [int(await vbackend.redis.hget(keys.run_root(f"{NS}/{r}"), "created_ms") or 0)
               for r in (run.run_id, again.run_id)]
    assert created[1] - created[0] == 5_000, created


def _same_partition(backend, run) -> str:
    home = partition_of(NS, run.run_id, backend.partitions)
    for i in range(10_000):
        candidate = f"again{i}"
        if partition_of(NS, candidate, backend.partitions) == home:
            return candidate
    raise AssertionError("no run id in that partition")


def test_each_build_is_one_library_named_by_its_code():
    assert library(ClockMode.SERVER).name != library(ClockMode.VIRTUAL).name
    code = library().code
    assert code.startswith(f"#!lua name={library().name}\n")
    assert code.count("redis.register_function(") == len(SCRIPT_NAMES)


_PROBE = "  local INT_TEXT = redis.pcall('ECHO', 4000000000000000) ~= '4000000000000000'\n"


@pytest.mark.parametrize("int_text", ["false", "true", "broken"])
async def test_integers_reach_the_hashes_as_exact_digits_either_way(backend, int_text):
    """The handlers pass integers to HSET as numbers where the server prints them exactly (the
    library asks it once: INT_TEXT false on Valkey), else as '%d' text; both write the same digits.
    'broken' writes them with Lua's tostring (14 significant digits): the check catches it."""
    from lessor.leasing.client import LeaseClient
    from lessor.leasing.config import LeaseConfig
    from lessor.leasing.replay import verify
    from lessor.scheduler.submit import Retries

    if int_text == "false":
        assert _PROBE in library().code   # the probe the other case replaces
    patches = (("*", _PROBE, f"  local INT_TEXT = {'false' if int_text == 'broken' else int_text}\n"),)
    if int_text == "broken":
        patches += (("*", "(INT_TEXT and fmt('%d', v) or v + 0)", "(INT_TEXT and fmt('%d', v) or tostring(v))"),)
    backend.scripts = Scripts(backend.redis, backend.clock, patches=patches)
    run = await submit_run(backend, "t", namespace=NS, queue=QUEUE, timeout_ms=100_000_000, priority=-7,
                           retries=Retries(system=3, user=2, backoff_ms=86_400_000))
    worker = LeaseClient(backend, "w", LeaseConfig(ttl_ms=86_400_000, grace_ms=86_000_000))
    [lease] = await worker.acquire(NS, QUEUE, 1)
    fields = await backend.redis.hgetall(backend.keys_for_ref(lease.ref).action(lease.ref))
    want = {b"timeout_ms": 100_000_000, b"priority": -7, b"sys_left": 3, b"user_left": 2, b"backoff_ms": 86_400_000,
            b"ttl_ms": 86_400_000, b"grace_ms": 86_000_000, b"token": lease.token, b"deadline_ms": lease.deadline_ms,
            b"attempt": 1}
    exact = {k: fields[k] for k in want} == {k: str(v).encode() for k, v in want.items()}
    assert exact == (int_text != "broken"), (run, fields)
    assert (await verify(backend) == []) == (int_text != "broken")


async def test_a_negative_zero_is_stored_as_0_as_its_event_says(backend):
    """'-0' passes the boundary's integer check (it is an integer); the handlers store it as 0, as
    the event holds it, also on Redis 7.0, whose '%.17g' prints a Lua -0 as '-0' (run the suite
    with LESSOR_TEST_REDIS_URL on a Redis 7.0 to see that side)."""
    from lessor.leasing.replay import verify
    from lessor.scheduler.schedules import create_schedule, pause_schedule

    await create_schedule(backend, "s0", "t", "* * * * *", namespace=NS)
    await pause_schedule(backend, "s0", namespace=NS)
    keys = backend.keys_for_run(NS, "s0")
    await backend.call("schedule", [keys.prefix], ["resume", NS, "s0", "-0", "5"])
    assert await backend.redis.hget(keys.schedule(f"{NS}/s0"), "last_tick_ms") == b"0"
    assert await verify(backend) == []
