"""Event triggers against the real server: at most one run per dedup key and window, atomically."""

from __future__ import annotations

import anyio
import pytest

from lessor.core import events as ev
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.api import Client
from lessor.scheduler.triggers import (
    TriggerConflict, UnknownTrigger, create_trigger, delete_trigger, fire, list_triggers, trigger_run_id,
)

pytestmark = pytest.mark.anyio
NS = "shop/production"


async def logged(backend, etype) -> list:
    return [e.event for e in await EventLog(backend).read_all() if isinstance(e.event, etype)]


async def test_twenty_concurrent_fires_of_one_key_start_one_run(vbackend):
    b = vbackend
    assert await create_trigger(b, "order-paid", "ship", namespace=NS, window_s=60)
    fired = []

    async def one(i):
        fired.append(await fire(b, "order-paid", {"order": 42, "try": i}, dedup_key="order-42", namespace=NS))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert len({f.run_id for f in fired}) == 1
    assert sum(f.created for f in fired) == 1
    assert len(await logged(b, ev.TriggerFired)) == 1
    assert len(await logged(b, ev.RunCreated)) == 1
    assert await verify(b) == []


async def test_after_the_window_a_new_run_and_another_key_another_run(vbackend):
    b = vbackend
    await create_trigger(b, "hook", "t", namespace=NS, window_s=10)
    first = await fire(b, "hook", "a", dedup_key="k1", namespace=NS)
    await b.vclock.advance(9_999)   # still inside the window of the first fire
    assert await fire(b, "hook", "b", dedup_key="k1", namespace=NS) == \
        type(first)(NS, "hook", first.run_id, False)
    other = await fire(b, "hook", "c", dedup_key="k2", namespace=NS)
    assert other.created and other.run_id != first.run_id
    await b.vclock.advance(1)       # the window of k1 is over
    again = await fire(b, "hook", "d", dedup_key="k1", namespace=NS)
    assert again.created and again.run_id not in (first.run_id, other.run_id)
    fires = await logged(b, ev.TriggerFired)
    assert [(f.dedup_key, f.run) for f in fires] == [("k1", first.run_id), ("k2", other.run_id),
                                                     ("k1", again.run_id)]
    (info,) = await list_triggers(b, NS)
    assert (info.fires, info.last_run, info.window_s) == (3, again.run_id, 10.0)
    assert await verify(b) == []


async def test_the_run_id_is_derived_from_trigger_key_and_window_so_a_lost_record_starts_nothing(vbackend):
    """A retried fire whose dedup record is gone (here: deleted by hand) still lands on its run."""
    b = vbackend
    await create_trigger(b, "hook", "t", namespace=NS, window_s=10)
    first = await fire(b, "hook", None, dedup_key="k", namespace=NS)
    assert first.run_id == trigger_run_id(NS, "hook", "k", 1_000_000 // 10_000, b.partitions)
    keys = b.keys_for_run(NS, "hook")
    await b.redis.delete(keys.prefix + "tr:" + f"{NS}/hook", keys.prefix + "tu:" + f"{NS}/hook")
    again = await fire(b, "hook", None, dedup_key="k", namespace=NS)
    assert (again.run_id, again.created) == (first.run_id, False)
    assert len(await logged(b, ev.RunCreated)) == 1


async def test_a_deleted_trigger_is_a_clear_error_and_a_redefinition_a_conflict(vbackend):
    b = vbackend
    await create_trigger(b, "hook", "t", namespace=NS, window_s=10)
    assert not await create_trigger(b, "hook", "t", namespace=NS, window_s=10)   # the same again: fine
    with pytest.raises(TriggerConflict, match="exists with another definition"):
        await create_trigger(b, "hook", "other", namespace=NS, window_s=10)
    run = await fire(b, "hook", 1, dedup_key="k", namespace=NS)
    await delete_trigger(b, "hook", namespace=NS)
    with pytest.raises(UnknownTrigger, match=r"no trigger shop/production/hook \(never created, or deleted\): "
                                             "nothing was started"):
        await fire(b, "hook", 1, dedup_key="k2", namespace=NS)
    with pytest.raises(UnknownTrigger):
        await delete_trigger(b, "hook", namespace=NS)
    assert await list_triggers(b) == []
    assert await b.redis.exists(b.keys_for_run(NS, run.run_id).run_root(f"{NS}/{run.run_id}"))   # its runs stay
    assert [type(e).TYPE for e in await logged(b, ev.TriggerEvent)] == ["trigger_created", "trigger_fired",
                                                                        "trigger_deleted"]
    assert await verify(b) == []
    with pytest.raises(ValueError, match="dedup_key must be a string"):
        await fire(b, "hook", 1, dedup_key=None, namespace=NS)


async def test_client_trigger_runs_the_task_with_the_payload_as_inputs(backend):
    async with anyio.create_task_group() as tg:
        client = Client(backend, tg)
        await client.create_trigger("hook", "echo", namespace=NS, window_s=600, queue="hooks")
        handle = await client.trigger("hook", {"event": "push"}, dedup_key="delivery-1", namespace=NS)
        again = await client.trigger("hook", {"event": "push"}, dedup_key="delivery-1", namespace=NS)
        assert handle.created and not again.created and again.run_id == handle.run_id
        info = await handle.info()
        assert (info.task, info.queue) == ("echo", "hooks")
        (created,) = [e for e in await logged(backend, ev.RunCreated)]
        from lessor.scheduler.values import unpack_value
        assert unpack_value(created.inputs) == {"event": "push"}
        tg.cancel_scope.cancel()


def test_cli_create_fire_list_delete(flushed, monkeypatch, capsys):
    import json

    from lessor.cli import main

    monkeypatch.setenv("LESSOR_REDIS_URL", flushed)

    def run(*args, code=0):
        got = main(["trigger", *args])
        out, err = capsys.readouterr()
        assert got == code, err
        return out, " ".join(err.split())

    assert "created" in run("create", "hook", "echo", "--namespace", NS, "--window-s", "600")[0]
    first = json.loads(run("fire", "hook", "--namespace", NS, "--dedup-key", "d1", "--payload", '{"a": 1}',
                           "--json")[0])
    assert first["created"]
    assert run("fire", "hook", "--namespace", NS, "--dedup-key", "d1")[0] == \
        f"deduplicated: run {first['run']} (namespace {NS})\n"
    (listed,) = json.loads(run("list", "--json")[0])
    assert (listed["name"], listed["fires"], listed["last_run"]) == ("hook", 1, first["run"])
    main(["events", "--namespace", NS])
    assert f"trigger hook fired (dedup key d1): run {first['run']}" in capsys.readouterr().out
    run("delete", "hook", "--namespace", NS)
    assert "no trigger shop/production/hook (never created, or deleted)" in \
        run("fire", "hook", "--namespace", NS, "--dedup-key", "d2", code=2)[1]
    assert run("list")[0] == "no triggers\n"


async def _twenty_fires_runs(b, run_ids) -> int:
    """Fire one key 20 times at once, the k-th fire proposing run_ids(k); the number of runs created."""
    prefix = b.keys_for_run(NS, "hook").prefix

    async def one(k):
        await b.call("trigger", [prefix], ["fire", NS, "hook", "same", 1_000_000 // 60_000, run_ids(k), b""])

    async with anyio.create_task_group() as tg:
        for k in range(20):
            tg.start_soon(one, k)
    return len(await logged(b, ev.RunCreated))


async def test_the_twenty_fires_check_catches_a_trigger_without_its_dedup(vbackend):
    """Control: the check above can fail. A trigger.lua that skips the dedup record and the run's
    existence, given a fresh run id per fire (as a random id would be), starts 20 runs."""
    from lessor.leasing.scripts import compose, script_source

    b = vbackend
    await create_trigger(b, "hook", "t", namespace=NS, window_s=60)
    derived = trigger_run_id(NS, "hook", "same", 1_000_000 // 60_000, b.partitions)
    assert await _twenty_fires_runs(b, lambda k: derived) == 1
    body = script_source("trigger").split("-- ======== trigger.lua ========\n", 1)[1]
    broken = body.replace("if till and tonumber(till) > NOW then", "if false then").replace(
        "if redis.call('EXISTS', root_key(ns, run)) == 1 then", "if false then")
    assert broken.count("if false then") == 2
    b.scripts._scripts["trigger"] = b.redis.register_script(compose("trigger", broken, b.clock))
    same_partition = [r for r in (f"x{i}" for i in range(2000))
                      if b.keys_for_run(NS, r).partition == b.keys_for_run(NS, "hook").partition]
    assert await _twenty_fires_runs(b, lambda k: same_partition[k]) == 21
