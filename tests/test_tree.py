"""Timeouts and aborts cover the whole tree: an action that ends takes its live descendants with it.

Before: a run that called itself recursively and hit its timeout left its child
actions running forever, holding every worker slot, and `abort` answered
"0 queued, 0 running" because the root was already terminal.
"""

from __future__ import annotations

import anyio
import pytest

from lessor.core import events as ev
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.control import abort_run
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import Retries, submit_run
from lessor.scheduler.worker import Worker, WorkerConfig
from tests.test_leasing import CFG, NS
from tests.waiting import until_logged

pytestmark = pytest.mark.anyio
QUEUE = "tree"


async def phases_of_run(backend, run_id: str) -> dict[str, str]:
    keys = backend.keys_for_run(NS, run_id)
    actions = ["a0"] + sorted(a.decode() for a in await backend.redis.smembers(keys.prefix + f"ra:{NS}/{run_id}"))
    out = {}
    for action in actions:
        phase = await backend.redis.hget(keys.action(f"{NS}/{run_id}/{action}"), "phase")
        out[action] = phase.decode() if phase else "?"
    return out


async def test_a_recursive_run_that_times_out_leaves_nothing_running(backend):
    registry = Registry()

    @registry.task
    async def recurse(ctx, depth: int) -> int:
        return await ctx.call("recurse", {"depth": depth + 1})   # forever, one level per slot

    lease = LeaseConfig(ttl_ms=1500, grace_ms=500)
    worker = Worker(backend, registry, WorkerConfig(queue=QUEUE, namespace=NS, concurrency=4, worker_id="w1",
                                                    lease=lease, reap_interval_ms=100))
    run = await submit_run(backend, "recurse", namespace=NS, queue=QUEUE, timeout_ms=2000,
                           inputs=b"\x81\xa5depth\x00", retries=Retries(user=0, system=3))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        phases: dict[str, str] = {}

        async def tree_ended() -> bool:  # the tree grows until the slots are full, then the root times out
            phases.update(await phases_of_run(backend, run.run_id))
            return phases["a0"] == "timed_out" and not {"running", "queued"} & set(phases.values())

        await until_logged(backend, tree_ended, "the timed-out tree to end")
        with anyio.fail_after(30):
            while worker.statistics().running:   # and every slot is free again (counters: polled)
                await anyio.sleep(0.05)
        worker.stop()
    assert len(phases) >= 4 and set(phases.values()) == {"timed_out", "aborted"}
    assert await verify(backend) == []


async def test_abort_reaches_live_descendants_of_a_terminal_root(vbackend):
    """A root that ended before its children: `abort` still aborts them and says how many."""
    await submit_run(vbackend, "t", namespace=NS, run_id="r1", queue=QUEUE)
    client = LeaseClient(vbackend, "w1", CFG)
    (root,) = await client.acquire(NS, QUEUE, 1)
    args = [root.ref, root.token, "w1", "a0.1", "t", b"", QUEUE, 3, 0, 1000, 0, 0, ""]
    await vbackend.call("submit_child", [vbackend.keys(root.partition).prefix], args)
    (child,) = await client.acquire(NS, QUEUE, 1)
    # Write the root's end straight into its hash, as a run finished by an older lessor (before
    # parents aborted their children) would have left it: the child outlived its root.
    # (The run lives on its root's hash: the root's end is the run's.)
    await vbackend.redis.hset(vbackend.keys(root.partition).action(root.ref), "phase", "succeeded")
    outcome = await abort_run(vbackend, NS, "r1", "stop")
    assert (outcome.aborted, outcome.requested) == (0, 1)
    assert await client.renew([child]) == {child.ref: 2}   # ABORTED: its worker stops


async def test_a_parent_that_ends_aborts_its_queued_and_running_children(vbackend):
    await submit_run(vbackend, "t", namespace=NS, run_id="r1", queue=QUEUE)
    client = LeaseClient(vbackend, "w1", CFG)
    (root,) = await client.acquire(NS, QUEUE, 1)
    prefix = [vbackend.keys(root.partition).prefix]
    for child in ("a0.1", "a0.2"):
        await vbackend.call("submit_child", prefix, [root.ref, root.token, "w1", child, "t", b"", QUEUE,
                                                      3, 0, 1000, 0, 0, ""])
    (running_child,) = await client.acquire(NS, QUEUE, 1)
    await client.complete(root, b"")             # the root returns without awaiting its children
    entries = [e.event for e in await EventLog(vbackend).read_all()]
    aborted = {e.action for e in entries if isinstance(e, ev.ActionAborted)}
    requested = {e.action for e in entries if isinstance(e, ev.AbortRequested) and e.action}
    assert aborted | requested == {"a0.1", "a0.2"} and running_child.action in requested
    assert await client.renew([running_child]) == {running_child.ref: 2}
    assert await verify(vbackend) == []


@pytest.mark.parametrize("asked_ms, expected_ms", [(0, 1500), (600, 600), (9000, 1500)])
async def test_a_child_timeout_never_reaches_past_its_parents_deadline(vbackend, asked_ms, expected_ms):
    await submit_run(vbackend, "t", namespace=NS, run_id="r1", queue=QUEUE, timeout_ms=2000)
    client = LeaseClient(vbackend, "w1", CFG)
    (root,) = await client.acquire(NS, QUEUE, 1)
    await vbackend.vclock.advance(500)            # the parent has 1500 ms left
    await vbackend.call("submit_child", [vbackend.keys(root.partition).prefix],
                        [root.ref, root.token, "w1", "a0.1", "t", b"", QUEUE, 3, 0, 1000, 0, asked_ms, ""])
    created = [e.event for e in await EventLog(vbackend).read_all()
               if isinstance(e.event, ev.ActionCreated) and e.event.action == "a0.1"]
    assert created[0].timeout_ms == expected_ms
    assert await verify(vbackend) == []
