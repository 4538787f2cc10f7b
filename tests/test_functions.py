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
    created = [int(await vbackend.redis.hget(keys.run(f"{NS}/{r}"), "created_ms") or 0)
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
