"""A worker's built-in reaper sleeps until the next item falls due (issue 13, idle cost).

Real `lessor worker` processes on a real server: an idle worker's reaper sleeps up
to the lease's ttl + grace between passes, yet a lease that another worker took
while it slept, and that then died with it (SIGKILL), is still reaped. And a
worker's own backoffs are promoted on time (the worker pokes its reaper) even when
its reaper may sleep ten minutes. Nothing here asserts a time.
"""

from __future__ import annotations

import os
import subprocess

import anyio
import pytest

import lessor

from lessor.core import events as ev
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import PassResult, Reaper
from lessor.leasing.client import LeaseClient
from lessor.scheduler.launch import worker_command
from lessor.scheduler.submit import idempotent_run_id, submit_run
from lessor.scheduler.values import pack_value
from lessor.scheduler.worker import Worker, WorkerConfig
from tests.app import registry

pytestmark = pytest.mark.anyio
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTL_MS, GRACE_MS = 2000, 1000


def start_worker(url: str, worker_id: str, queue: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(worker_command(url, "tests.app:registry", worker_id=worker_id, queue=queue,
                                           ttl_ms=TTL_MS, grace_ms=GRACE_MS, extra=extra),
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def events_of(client, etype) -> list:
    return [e.event for e in await EventLog(client.backend).read_all() if isinstance(e.event, etype)]


async def until(predicate, timeout_s: float = 60) -> None:
    with anyio.fail_after(timeout_s):
        while not await predicate():
            await anyio.sleep(0.05)


async def test_an_idle_reaper_sleeps_until_the_next_item_is_due_within_its_bounds(backend):
    reaper = Reaper(backend, interval_ms=500, max_sleep_ms=3000)
    assert reaper.sleep_ms(PassResult()) == 3000                    # nothing due: the longest sleep
    assert reaper.sleep_ms(PassResult(next_due_ms=1200)) == 1200    # until the next item
    assert reaper.sleep_ms(PassResult(next_due_ms=0)) == 500        # never under an interval
    assert reaper.sleep_ms(PassResult(next_due_ms=90_000)) == 3000  # never over the bound
    assert reaper.sleep_ms(PassResult(next_due_ms=90_000, failed=1)) == 500   # a failed partition: soon
    assert WorkerConfig(lease=LeaseConfig(ttl_ms=TTL_MS, grace_ms=GRACE_MS)).reap_max_sleep() == 3000
    assert WorkerConfig().reap_max_sleep() == 40_000                # the default lease: 30 s + 10 s
    with pytest.raises(ValueError, match="max_sleep_ms >= interval_ms"):
        Reaper(backend, interval_ms=500, max_sleep_ms=100)


async def test_reap_answers_when_its_partitions_next_item_falls_due(backend):
    """reap.lua's next_due_ms: -1 with nothing indexed, then a lease's expiry (ttl + grace away),
    and the same answer from a call the pass throttle skipped."""
    reaper = Reaper(backend, interval_ms=60_000, shared=True)
    assert (await reaper.reap_partition(0)).next_due_ms is None
    client = LeaseClient(backend, "w-1", LeaseConfig(ttl_ms=TTL_MS, grace_ms=GRACE_MS))
    await submit_run(backend, "square", namespace="proj/development", queue="default",
                     run_id=idempotent_run_id("proj/development", "k0"), inputs=pack_value({"x": 1}))
    (lease,) = await client.acquire("proj/development", "default", 1)
    first = await reaper.reap_partition(lease.partition)   # a full pass: sets the throttle
    again = await reaper.reap_partition(lease.partition)   # skipped by the throttle, same answer
    assert 0 < again.next_due_ms <= first.next_due_ms <= TTL_MS + GRACE_MS + 1


async def test_a_lease_taken_while_the_reaper_sleeps_is_reaped_after_its_holder_is_killed(flushed, tmp_path):
    path = str(tmp_path / "ran")
    reaping = start_worker(flushed, "w-reaper", "elsewhere")           # idle; its reaper sleeps 3 s at a time
    victim = start_worker(flushed, "w-victim", "victim", "--no-reap")  # reaps nothing itself
    try:
        async with lessor.connect(flushed) as client:
            run = await client.submit_run("sleepy", {"seconds": 120, "path": path}, queue="victim")
            await until(lambda: anyio.to_thread.run_sync(
                lambda: os.path.exists(path) and "started 1" in open(path).read()))
            victim.kill()   # SIGKILL: its lease is left to the sleeping reaper of the other worker
            killed = anyio.current_time()
            await until(lambda: events_of(client, ev.LeaseExpired))
            print(f"reaped {(anyio.current_time() - killed) * 1000:.0f} ms after the kill "
                  f"(ttl + grace = {TTL_MS + GRACE_MS} ms)")
            (expired,) = await events_of(client, ev.LeaseExpired)
            (requeued,) = await events_of(client, ev.ActionRequeued)
            assert (expired.worker, expired.run, requeued.run) == ("w-victim", run.run_id, run.run_id)
    finally:
        for proc in (reaping, victim):
            proc.kill()
            proc.wait()


async def test_a_workers_own_backoff_is_promoted_though_its_reaper_may_sleep_ten_minutes(flushed):
    async with lessor.connect(flushed) as client:
        worker = Worker(client.backend, registry, WorkerConfig(worker_id="w-1", reap_max_sleep_ms=600_000))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await anyio.sleep(1.0)   # idle: its reaper found nothing due and sleeps (up to 10 min)
            run = await client.submit_run("flaky", {"fail_until": 3}, retries=lessor.Retries(user=3, backoff_ms=50))
            info = await run.wait(timeout_s=60)   # two backoffs, each promoted by the poked reaper
            worker.stop()
        assert info.phase.value == "succeeded" and info.result == {"attempt": 3}

