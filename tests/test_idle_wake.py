"""Idle workers block on their queue's wake-up lists instead of polling (issue 13).

No timing asserts: each worker's safety poll is set to 20 s, far beyond every
wait's timeout here, so a wake-up that does not come fails the wait instead of
only making it slower; what an idle worker sends is counted, not timed.
"""

from __future__ import annotations

import gc

import anyio
import pytest

from lessor.cluster import LocalCluster
from lessor.core.ids import partition_of
from lessor.leasing.backend import open_backend
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import RunSpec, submit_run, submit_runs
from lessor.scheduler.watcher import CompletionWatcher
from lessor.scheduler.worker import Worker, WorkerConfig, tuned_gc
from tests.waiting import until_logged

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "wake"
SAFETY_POLL_MS = 20_000   # a wake-up that does not come is not rescued by a poll within any wait below


def registry(started: list, both: anyio.Event | None = None) -> Registry:
    r = Registry()

    @r.task
    async def note(ctx) -> str:
        started.append(ctx.run_id)
        return ctx.run_id

    @r.task
    async def pair(ctx) -> str:
        started.append(ctx.run_id)
        if len(started) >= 2:
            both.set()
        await both.wait()   # finishes only once the other has started too: on another worker
        return ctx.run_id

    return r


def idle_config(worker_id: str, concurrency: int = 2) -> WorkerConfig:
    return WorkerConfig(queue=QUEUE, namespace=NS, worker_id=worker_id, concurrency=concurrency, reap=False,
                        idle_poll_ms=SAFETY_POLL_MS)


class CountingAcquires:
    """Records the partition of every acquire call a worker's client makes."""

    def __init__(self, worker: Worker) -> None:
        self.partitions: list[int] = []
        self._acquire_from = worker.client.acquire_from
        worker.client.acquire_from = self.acquire_from

    async def acquire_from(self, partition, *args, **kwargs):
        self.partitions.append(partition)
        return await self._acquire_from(partition, *args, **kwargs)


async def blocked_on_blpop(backend) -> int:
    """How many clients are blocked in BLPOP right now (CLIENT LIST)."""
    clients = await backend.redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "blpop" and "b" in c.get("flags", ""))


async def until_blocked(backend, n: int = 1) -> None:
    """Poll (every 10 ms; no event says a worker went idle) until ``n`` clients block in BLPOP."""
    with anyio.fail_after(20):
        while await blocked_on_blpop(backend) < n:
            await anyio.sleep(0.01)


async def test_an_idle_worker_sends_nothing_and_wakes_on_a_submit(backend):
    started: list = []
    worker = Worker(backend, registry(started), idle_config("w-idle"))
    acquires = CountingAcquires(worker)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until_blocked(backend)
        polled = len(acquires.partitions)           # the first poll of every partition, at start
        await anyio.sleep(1)                        # idle: polling would have sent 40 acquires by now
        assert len(acquires.partitions) == polled
        await submit_run(backend, "note", namespace=NS, queue=QUEUE, run_id="r-woken")
        async def ran() -> bool:
            return bool(started)

        await until_logged(backend, ran, "the run to start", 15)
        # Woken by the token its submit left: the first acquire went to that run's partition.
        assert acquires.partitions[polled] == partition_of(NS, "r-woken", backend.partitions)
        worker.stop()
    assert started == ["r-woken"]


async def test_one_submit_wakes_as_many_idle_workers_as_it_has_work_for(backend):
    """Two idle workers of one slot each, two runs in one partition in one submit (one token):
    the first worker takes one and passes the wake-up on (acquire.lua), so both run at once."""
    started: list = []
    both = anyio.Event()
    runs = [f"r{i}" for i in range(200) if partition_of(NS, f"r{i}", backend.partitions) == 0][:2]
    workers = [Worker(backend, registry(started, both), idle_config(f"w{i}", concurrency=1)) for i in range(2)]
    async with anyio.create_task_group() as tg:
        for worker in workers:
            tg.start_soon(worker.run)
        await until_blocked(backend, 2)
        await submit_runs(backend, [RunSpec("pair", namespace=NS, queue=QUEUE, run_id=r) for r in runs])
        with anyio.fail_after(15):
            await both.wait()
        for worker in workers:
            worker.stop()
    assert sorted(started) == sorted(runs)
    assert sorted(w.statistics().succeeded for w in workers) == [1, 1]


async def test_a_safety_poll_that_finds_nothing_acquires_nothing_and_a_lost_wake_up_is_still_found(backend):
    """The safety poll looks (one EXISTS) before it acquires; a token another client swallowed (a worker
    paused or killed while blocked, as in `lessor demo`) is made up for by the poll, which then acquires."""
    started: list = []
    config = WorkerConfig(queue=QUEUE, namespace=NS, worker_id="w-poll", concurrency=2, reap=False,
                          idle_poll_ms=100)
    worker = Worker(backend, registry(started), config)
    acquires = CountingAcquires(worker)
    wake_keys = [backend.keys(p).wake(NS, QUEUE) for p in range(backend.partitions)]
    async with anyio.create_task_group() as tg:
        # A "dead worker" blocked first: the server hands it the token the submit below leaves.
        tg.start_soon(backend.redis.blpop, wake_keys, 0)
        await until_blocked(backend, 1)
        tg.start_soon(worker.run)
        await until_blocked(backend, 2)
        polled = len(acquires.partitions)
        timed_out = worker.client.waits_timed_out
        with anyio.fail_after(20):
            while worker.client.waits_timed_out < timed_out + 3:   # three safety polls, queues empty
                await anyio.sleep(0.01)
        assert len(acquires.partitions) == polled
        await submit_run(backend, "note", namespace=NS, queue=QUEUE, run_id="r-lost")

        async def ran() -> bool:
            return bool(started)

        await until_logged(backend, ran, "the run whose wake-up was lost to start", 15)
        assert len(acquires.partitions) > polled and await blocked_on_blpop(backend) >= 1
        worker.stop()
        tg.cancel_scope.cancel()
    assert started == ["r-lost"]


async def test_a_wake_list_holds_at_most_one_token(backend):
    for batch in range(5):
        await submit_runs(backend, [RunSpec("note", namespace=NS, queue=QUEUE) for _ in range(20)])
    lengths = [await backend.redis.llen(backend.keys(p).wake(NS, QUEUE)) for p in range(backend.partitions)]
    assert set(lengths) == {1}   # every partition got work, none more than one token


async def test_stop_cuts_an_idle_wait_short_and_the_gc_settings_come_back(backend):
    thresholds = gc.get_threshold()
    worker = Worker(backend, registry([]), idle_config("w-stop"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until_blocked(backend)
        assert gc.get_threshold() != thresholds and gc.get_freeze_count() > 0   # tuned while it runs
        with anyio.fail_after(10):   # far less than the 20 s the blocked read would take
            worker.stop()
            while await blocked_on_blpop(backend):
                await anyio.sleep(0.01)
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0


def test_tuned_gc_nests():
    thresholds = gc.get_threshold()
    with tuned_gc():
        with tuned_gc():
            pass
        assert gc.get_freeze_count() > 0   # the outer user still runs
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0


async def test_idle_workers_wake_on_a_cluster_one_blocking_read_per_partition():
    """A blocking read may not span slots: one BLPOP per partition, kept in flight between waits."""
    started: list = []
    with LocalCluster(primaries=3, replicas=0) as cluster:
        async with open_backend(cluster.url) as backend:
            worker = Worker(backend, registry(started), idle_config("w-cluster"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await until_blocked_on_cluster(backend)
                async with anyio.create_task_group() as following:
                    watcher = CompletionWatcher(backend, following)
                    for i in range(8):   # one at a time, each into whatever partition its id hashes to
                        await submit_run(backend, "note", namespace=NS, queue=QUEUE, run_id=f"c{i}")
                        with anyio.fail_after(15):
                            await watcher.wait(NS, f"c{i}", "a0")
                    following.cancel_scope.cancel()
                worker.stop()
    assert started == [f"c{i}" for i in range(8)]
    assert len({partition_of(NS, r, 48) for r in started}) > 1


async def until_blocked_on_cluster(backend) -> None:
    """Poll (every 10 ms) until the worker blocks in a BLPOP on every partition."""
    with anyio.fail_after(20):
        while True:
            blocked = 0
            for node in backend.redis.get_primaries():
                clients = await backend.redis.client_list(target_nodes=node)
                blocked += sum(1 for c in clients if c.get("cmd") == "blpop")
            if blocked >= backend.partitions:
                return
            await anyio.sleep(0.01)
