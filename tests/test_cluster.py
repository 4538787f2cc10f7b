"""lessor on a real local Cluster (3 primaries, 1 replica each, from the embedded binaries).

The same code as on one server: scripts touch one slot (one partition), the
log is followed with one XREAD per partition, WAIT goes to the node that took
the write. A primary is killed and its replica promoted while workers run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import anyio
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from lessor.cluster import LocalCluster
from lessor.core import events as ev
from lessor.core.ids import partition_of, slot_of, spread_tags
from lessor.doctor import run_checks
from lessor.errors import StoreUnavailable
from lessor.leasing.backend import open_backend
from lessor.leasing.client import LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.api import Client
from lessor.scheduler.query import get_run
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import idempotent_run_id, submit_run
from lessor.scheduler.values import pack_value
from lessor.scheduler.worker import Worker, WorkerConfig
from tests.servers import wait_for

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


async def test_doctor_says_one_replica_per_primary_is_too_few_for_replicas_1(cluster):
    checks = {c.name: c for c in await run_checks(cluster.url, "replicas:1")}
    assert checks["replicas"].status == "warn" and "needs 2 replicas" in checks["replicas"].detail
    assert {c.name: c for c in await run_checks(cluster.url)}["replicas"].status == "ok"


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


async def test_runs_of_an_older_lessor_move_onto_their_root_actions_on_a_cluster(cluster_url):
    """lessor doctor --migrate on a cluster: its SCAN reaches every primary, each move is one script
    call routed by its keys' slot (a run and its root share one)."""
    from lessor.leasing.backend import CONFIG_KEY, RUNS_ON_ROOT
    from lessor.leasing.migrate import move_runs, old_runs
    from tests.test_migrate import _as_an_older_lessor_left_it

    async with open_backend(cluster_url) as backend:
        runs = [await submit_run(backend, "t", namespace=NS, queue="migrated", idempotency_key=f"m{i}")
                for i in range(8)]
        assert len({backend.keys_for_run(NS, r.run_id).partition for r in runs}) > 1
        olds = [await _as_an_older_lessor_left_it(backend, r.run_id) for r in runs]
        await backend.redis.hdel(CONFIG_KEY, RUNS_ON_ROOT)
        assert sorted(await old_runs(backend.redis)) == sorted(olds)
        assert len(await verify(backend)) >= 8   # each run's idempotency key missing on its root
        assert (await move_runs(backend.redis)).moved == 8
        assert await old_runs(backend.redis) == [] and await verify(backend) == []
        assert {c.name: c for c in await run_checks(cluster_url)}["layout"].status == "ok"


def asks_answered(node) -> int:
    """How many commands ``node`` has answered with -ASK (INFO errorstats) since it started."""
    with redis.Redis(unix_socket_path=node.socket_path, decode_responses=True) as client:
        return client.info("errorstats").get("errorstat_ASK", {}).get("count", 0)


def idempotency_keys_in(partition: int, partitions: int, prefix: str):
    """Idempotency keys whose runs all land in ``partition`` (endless)."""
    n = 0
    while True:
        key = f"{prefix}{n}"
        if partition_of(NS, idempotent_run_id(NS, key), partitions) == partition:
            yield key
        n += 1


def check_log(entries: list, actions: int) -> None:
    """Each action succeeded exactly once, and its lease tokens only ever increased."""
    succeeded = [(e.run, e.action) for e in entries if isinstance(e, ev.ActionSucceeded)]
    assert len(succeeded) == len(set(succeeded)) == actions
    tokens: dict = {}
    for e in entries:
        if isinstance(e, ev.ActionLeased):
            tokens.setdefault((e.run, e.action), []).append(e.token)
    assert all(t == sorted(set(t)) for t in tokens.values())


async def test_a_partition_slot_migrated_while_workers_run_loses_and_doubles_nothing(cluster, cluster_url):
    """SETSLOT IMPORTING/MIGRATING, MIGRATE a few keys at a time, SETSLOT NODE, with the partition busy.

    Mid-migration every script of the partition is refused with ASK (its only declared key, the
    partition prefix, never exists): no script runs on half a partition; callers retry, and after
    SETSLOT NODE the client follows MOVED to the new owner.
    """
    ran: list = []
    submitted: list = []
    migrated, submitted_all = anyio.Event(), anyio.Event()
    async with open_backend(cluster_url) as backend:
        partition = partition_of(NS, idempotent_run_id(NS, "mig0"), backend.partitions)
        slot = slot_of(backend.keys(partition).tag)
        client = Client(backend, None)
        workers = [Worker(backend, fanout_registry(ran), WorkerConfig(queue=QUEUE, namespace=NS, concurrency=8,
                                                                      worker_id=f"m{i}")) for i in range(2)]

        async def submit(key: str):
            while True:
                try:
                    return await client.submit_run("fan", {"n": 2}, queue=QUEUE, idempotency_key=key)
                except StoreUnavailable:  # the slot is migrating: the same key again is safe
                    await anyio.sleep(0.01)

        async def submit_until_migrated() -> None:  # batches of 4 runs, until one batch after the migration
            keys = idempotency_keys_in(partition, backend.partitions, "mig")
            while True:
                last_batch = migrated.is_set()
                batch = [await submit(next(keys)) for _ in range(4)]
                submitted.extend(batch)
                for run in batch:
                    await run.wait()
                if last_batch:
                    return submitted_all.set()

        async with anyio.create_task_group() as tg:
            client.watcher = type(client.watcher)(backend, tg)
            for w in workers:
                tg.start_soon(w.run)
            tg.start_soon(submit_until_migrated)
            with anyio.fail_after(30):
                while len(ran) < 6:
                    await anyio.sleep(0.05)
            source = cluster.node_on(cluster.slot_owner(slot))
            target = next(p for p in cluster.primary_ports() if p != source.port)
            asks = asks_answered(source)

            def refused_mid_migration() -> None:  # hold the slot half-moved until a script has run into it
                wait_for(lambda: asks_answered(source) > asks, "a lessor call to meet the migrating slot")

            moved = await anyio.to_thread.run_sync(lambda: cluster.migrate_slot(
                slot, target, batch_keys=3, between=refused_mid_migration))
            migrated.set()
            with anyio.fail_after(60):
                await submitted_all.wait()
                results = [await run.wait() for run in submitted]
            tg.cancel_scope.cancel()
        assert moved > 0 and cluster.slot_owner(slot) == target
        assert {backend.keys_for_run(NS, r.run_id).partition for r in submitted} == {partition}
        assert [r.phase.value for r in results] == ["succeeded"] * len(submitted)   # nothing lost or stuck
        check_log([e.event for e in await EventLog(backend).read_all()], len(submitted) * 3)
        assert await verify(backend) == []                                       # state matches its log


async def test_a_primary_killed_mid_run_loses_nothing_and_runs_nothing_twice(cluster, cluster_url):
    """durability replicas:1: what a worker heard committed is on a replica when the primary dies."""
    ran: list = []
    lease = LeaseConfig(ttl_ms=10_000, grace_ms=2000)   # longer than a failover: no attempt self-fences
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
            killed = anyio.current_time()
            with anyio.fail_after(60):                        # its replica is promoted
                while victim.port in await anyio.to_thread.run_sync(cluster.primary_ports):
                    await anyio.sleep(0.2)
            promoted_after_s = anyio.current_time() - killed
            # The promoted shard has no replica left, so replicas:1 writes to it wait (NotDurable)
            # until the dead node is back: restarted, it rejoins as the new primary's replica.
            await anyio.to_thread.run_sync(victim.start)
            with anyio.fail_after(120):
                results = [await run.wait() for run in runs]
            tg.cancel_scope.cancel()
        entries = [e.event for e in await EventLog(backend).read_all()]
    starts = Counter((run_id, action) for run_id, action, _ in ran)
    print(f"primary kill: replica promoted {promoted_after_s:.1f} s after the kill; {len(starts)} actions, {sum(n > 1 for n in starts.values())} started again "
          f"(a lease that expired during the failover: fenced, committed once)")
    assert [r.phase.value for r in results] == ["succeeded"] * 12      # 0 lost, 0 stuck
    check_log(entries, 12 * 5)                                          # committed once each, tokens increasing
    assert cluster.primary_ports() and victim.port not in cluster.primary_ports()  # a replica took over


async def test_an_idle_worker_on_a_cluster_is_woken_by_every_partition(cluster_url):
    """The blocking reads outlive the waits: a worker woken by one partition and idle again
    still watches the others once their reads time out at the server (they are sent again
    at once). Before, it watched only the partition that woke it until its safety poll:
    a submit elsewhere waited up to idle_poll_ms (10 s). Asserted without a clock: run B
    starts from a wake-up, not from a safety poll (the poll here is 20 s away)."""
    started: dict = {}
    registry = Registry()

    @registry.task
    async def mark(ctx) -> None:
        started[ctx.run_id] = anyio.current_time()

    async with open_backend(cluster_url) as backend:
        client = Client(backend, None)
        worker = Worker(backend, registry, WorkerConfig(queue=QUEUE, namespace=NS, worker_id="idle", reap=False,
                                                        idle_poll_ms=20_000))
        worker.client.wake_read_s = 3.0   # each partition's BLPOP times out after 3 s and is sent again
        async with anyio.create_task_group() as tg:
            client.watcher = type(client.watcher)(backend, tg)
            tg.start_soon(worker.run)
            await anyio.sleep(2.0)          # idle since about t0: a read in flight on every partition
            a = await client.submit_run("mark", {}, queue=QUEUE)
            with anyio.fail_after(60):
                await a.wait()              # woken by a's partition at t1 (t0 + 2 s); its read sent anew
            # The other partitions' first reads time out at t0 + 3 s, a's at t1 + 3 s; submit b
            # between the two (at about t1 + 2 s), where the old wait watched a's partition only.
            await anyio.sleep(2.0)
            b_partition = a_partition = backend.keys_for_run(NS, a.run_id).partition
            while b_partition == a_partition:
                b = await client.submit_run("mark", {}, queue=QUEUE)
                b_partition = backend.keys_for_run(NS, b.run_id).partition
                sent = anyio.current_time()
                with anyio.fail_after(60):
                    await b.wait()
            tg.cancel_scope.cancel()
    print(f"submit-to-start on another partition: {(started[b.run_id] - sent) * 1000:.1f} ms")
    assert worker.client.waits_timed_out == 0   # every run was picked up by a wake-up, none by a safety poll


async def test_a_silent_primary_costs_only_its_own_leases_their_renewal(cluster, cluster_url):
    """A primary that does not answer (SIGSTOP, shorter than the node timeout: no failover) holds
    up only the renewals of its own partitions: each partition's call is bounded apart, so the
    other primaries' answers are kept. (Bounded from outside as a whole, a heartbeat dropped
    them all, and leases on healthy primaries self-fenced while one primary failed over.)"""
    async with open_backend(cluster_url) as backend:
        client = LeaseClient(backend, "w-silent", LeaseConfig(ttl_ms=30_000, grace_ms=10_000))
        for i in range(12):
            await submit_run(backend, "leaf", namespace=NS, queue="silent", run_id=idempotent_run_id(NS, f"s{i}"),
                             inputs=pack_value({"i": i}))
        leases = await client.acquire(NS, "silent", 12)
        owner = {lease.ref: cluster.slot_owner(slot_of(backend.keys(lease.partition).tag)) for lease in leases}
        silent = sorted(owner.values())[0]
        assert len(leases) == 12 and len(set(owner.values())) > 1
        node = cluster.node_on(silent)
        os.kill(node.pid, signal.SIGSTOP)
        try:
            codes = await client.renew(leases, timeout_s=0.5)
        finally:
            os.kill(node.pid, signal.SIGCONT)
        assert codes == {ref: Code.OK for ref, port in owner.items() if port != silent}


async def test_doctor_warns_when_one_failing_shard_would_stop_every_partition(cluster):
    """LocalCluster sets cluster-require-full-coverage no; the default (yes) is named as a warning."""
    assert {c.name: c for c in await run_checks(cluster.url)}["coverage"].status == "ok"
    live = [n for n in cluster.nodes if n.poll() is None]

    def set_all(value: str) -> None:
        for n in live:
            with redis.Redis(unix_socket_path=n.socket_path) as c:
                c.config_set("cluster-require-full-coverage", value)

    set_all("yes")
    try:
        check = {c.name: c for c in await run_checks(cluster.url)}["coverage"]
    finally:
        set_all("no")
    assert check.status == "warn" and "set it to no" in check.detail
