"""lessor on a real local Cluster (3 primaries, 1 replica each, from the embedded binaries).

The same code as on one server: scripts touch one slot (one partition), the
log is followed with one XREAD per partition, WAIT goes to the node that took
the write. A primary is killed and its replica promoted while workers run.
"""

from __future__ import annotations

import os
import signal

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from lessor.cluster import LocalCluster
from lessor.core import events as ev
from lessor.core.ids import partition_of, slot_of, spread_tags
from lessor.leasing.backend import open_backend
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.api import Client
from lessor.scheduler.query import get_run
from lessor.scheduler.registry import Registry
from lessor.scheduler.worker import Worker, WorkerConfig

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "cl"


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(primaries=3, replicas=1) as c:
        yield c


@pytest.fixture
async def cluster_url(cluster):
    client = RedisCluster.from_url(cluster.url.split(",")[0].replace("redis+cluster", "redis"))
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    await client.aclose()
    return cluster.url


def primary_ranges(cluster: LocalCluster) -> dict[int, list[tuple[int, int]]]:
    import redis

    node = next(n for n in cluster.nodes if n.poll() is None)
    client = redis.Redis(unix_socket_path=node.socket_path, decode_responses=True)
    ranges: dict[int, list[tuple[int, int]]] = {}
    for start, end, primary, *_ in client.cluster("slots"):
        ranges.setdefault(int(primary[1]), []).append((start, end))
    client.close()
    return ranges


@pytest.mark.parametrize("partitions", [12, 48, 96])
def test_partitions_spread_within_one_of_even_over_the_primaries(cluster, partitions):
    ranges = primary_ranges(cluster)
    counts = {port: sum(1 for tag in spread_tags(partitions)
                        if any(lo <= slot_of(tag) <= hi for lo, hi in spans)) for port, spans in ranges.items()}
    assert sum(counts.values()) == partitions
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def fanout_registry(ran: list) -> Registry:
    registry = Registry()

    @registry.task
    async def leaf(ctx, i: int) -> int:
        ran.append((ctx.run_id, ctx.action_id, ctx.token))
        await anyio.sleep(0.05)
        return i * i

    @registry.task
    async def fan(ctx, n: int) -> int:
        ran.append((ctx.run_id, ctx.action_id, ctx.token))
        children = [await ctx.submit("leaf", {"i": i}) for i in range(n)]
        return sum([await c.result() for c in children])

    return registry


async def test_runs_with_children_finish_and_replay_on_a_cluster(cluster_url):
    ran: list = []
    async with open_backend(cluster_url) as backend:
        assert backend.cluster and backend.placement == "spread" and backend.partitions == 48
        client = Client(backend, None)
        worker = Worker(backend, fanout_registry(ran), WorkerConfig(queue=QUEUE, namespace=NS, concurrency=16,
                                                                    worker_id="w1"))
        async with anyio.create_task_group() as tg:
            client.watcher = type(client.watcher)(backend, tg)
            tg.start_soon(worker.run)
            runs = [await client.submit_run("fan", {"n": 3}, queue=QUEUE) for _ in range(6)]
            with anyio.fail_after(60):
                results = [await run.wait() for run in runs]   # follows the log: one XREAD per partition
            tg.cancel_scope.cancel()
        assert [r.phase.value for r in results] == ["succeeded"] * 6
        assert len({backend.keys_for_run(NS, r.run_id).partition for r in runs}) > 1
        assert await verify(backend) == []
        assert len(ran) == 24


async def test_a_primary_killed_mid_run_loses_nothing_and_runs_nothing_twice(cluster, cluster_url):
    """durability replicas:1: what a worker heard committed is on a replica when the primary dies."""
    ran: list = []
    lease = LeaseConfig(ttl_ms=3000, grace_ms=1000)
    async with open_backend(cluster_url, durability="replicas:1") as backend:
        client = Client(backend, None)
        workers = [Worker(backend, fanout_registry(ran), WorkerConfig(queue=QUEUE, namespace=NS, concurrency=8,
                                                                      worker_id=f"w{i}", lease=lease,
                                                                      reap_interval_ms=200)) for i in range(2)]
        async with anyio.create_task_group() as tg:
            client.watcher = type(client.watcher)(backend, tg)
            for w in workers:
                tg.start_soon(w.run)
            runs = [await client.submit_run("fan", {"n": 4}, queue=QUEUE) for _ in range(12)]
            victim_port = primary_ranges(cluster)  # a primary that serves some of these runs
            victim = cluster.node_on(sorted(victim_port)[0])
            with anyio.fail_after(30):
                while len(ran) < 10:
                    await anyio.sleep(0.05)
            os.kill(victim.pid, signal.SIGKILL)               # kill -9 a primary mid-run
            with anyio.fail_after(60):                        # its replica is promoted
                while victim.port in await anyio.to_thread.run_sync(cluster.primary_ports):
                    await anyio.sleep(0.2)
            # The promoted shard has no replica left, so replicas:1 writes to it wait (NotDurable)
            # until the dead node is back: restarted, it rejoins as the new primary's replica.
            await anyio.to_thread.run_sync(victim.start)
            with anyio.fail_after(120):
                results = [await run.wait() for run in runs]
            tg.cancel_scope.cancel()
        entries = [e.event for e in await EventLog(backend).read_all()]
    assert [r.phase.value for r in results] == ["succeeded"] * 12      # 0 lost, 0 stuck
    succeeded = [(e.run, e.action) for e in entries if isinstance(e, ev.ActionSucceeded)]
    assert len(succeeded) == len(set(succeeded)) == 12 * 5               # each action succeeded once
    completed_work = {}
    for run_id, action, token in ran:
        completed_work.setdefault((run_id, action), []).append(token)
    tokens = {}
    for e in entries:
        if isinstance(e, ev.ActionLeased):
            tokens.setdefault((e.run, e.action), []).append(e.token)
    assert all(t == sorted(set(t)) for t in tokens.values())           # strictly increasing per action
    assert cluster.primary_ports() and victim.port not in cluster.primary_ports()  # a replica took over
