"""Runs an older lessor left in the old layout (a hash of their own) move onto their root action."""

from __future__ import annotations

import pytest

from lessor.doctor import run_checks
from lessor.leasing.backend import CONFIG_KEY, RUNS_ON_ROOT
from lessor.leasing.migrate import move_runs, old_runs
from lessor.leasing.replay import verify
from lessor.scheduler.control import abort_run
from lessor.scheduler.query import get_run
from lessor.scheduler.submit import submit_run

pytestmark = pytest.mark.anyio
NS = "proj/development"


async def _as_an_older_lessor_left_it(backend, run_id: str) -> str:
    """Give a run the layout lessor had before: its own hash r:<ns>/<run> holding its fields (as the
    old run_created and abort_requested handlers wrote them), none of them on a0's hash."""
    keys = backend.keys_for_run(NS, run_id)
    root, ref = keys.run_root(f"{NS}/{run_id}"), f"{NS}/{run_id}"
    h = await backend.redis.hgetall(root)
    old = keys.prefix + "r:" + ref
    fields = {"phase": "running", "task": h[b"task"], "queue": h[b"queue"], "created_ms": h[b"created_ms"]}
    for name, stored in (("idempotency_key", b"idempotency_key"), ("aborting", b"run_aborting")):
        if stored in h:
            fields[name] = h[stored]
    await backend.redis.hset(old, mapping=fields)
    await backend.redis.hdel(root, "idempotency_key", "run_aborting")
    return old


async def test_old_layout_runs_are_found_moved_once_and_verify_equal(backend, server_url):
    keyed = await submit_run(backend, "t", namespace=NS, queue="q", idempotency_key="order-7")
    aborting = await submit_run(backend, "t", namespace=NS, queue="q", run_id="aborting")
    await abort_run(backend, NS, "aborting", "stop")   # queued: aborted now, the run marked aborting
    plain = await submit_run(backend, "t", namespace=NS, queue="q", run_id="plain")
    olds = [await _as_an_older_lessor_left_it(backend, r.run_id) for r in (keyed, aborting, plain)]
    # A run retired after the old lessor stopped would leave only its old hash behind.
    orphan = backend.keys(0).prefix + f"r:{NS}/retired"
    await backend.redis.hset(orphan, mapping={"phase": "succeeded", "task": "t", "idempotency_key": "k"})
    await backend.redis.hdel(CONFIG_KEY, RUNS_ON_ROOT)   # a server an older lessor laid out has no mark

    # Before: readers already see the runs from their root; verify names the two fields not moved yet.
    assert (await get_run(backend, NS, keyed.run_id)).task == "t"
    diffs = {(d.field, d.from_log) for d in await verify(backend)}
    assert {("idempotency_key", b"order-7"), ("run_aborting", b"1")} <= diffs, diffs
    layout = {c.name: c for c in await run_checks(server_url)}["layout"]
    assert layout.status == "warn" and "4 runs in the old layout" in layout.detail and "--migrate" in layout.detail
    assert sorted(await old_runs(backend.redis)) == sorted(olds + [orphan])

    report = await move_runs(backend.redis)
    assert (report.moved, report.orphans) == (3, 1)
    assert await verify(backend) == []
    assert await old_runs(backend.redis) == []
    assert not await backend.redis.exists(backend.keys(0).prefix + f"a:{NS}/retired/a0")   # not recreated
    run = await get_run(backend, NS, "aborting")
    assert (run.phase, run.aborting) == ("aborted", True)
    assert {c.name: c for c in await run_checks(server_url)}["layout"].status == "ok"
    assert await backend.redis.hget(CONFIG_KEY, RUNS_ON_ROOT) == b"1"   # so doctor scans no more
    assert await move_runs(backend.redis) == type(report)(0, 0)   # idempotent
