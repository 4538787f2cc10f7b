"""End to end: real `lessor worker` processes against the real server, the embedding API.

Short leases keep failovers quick; every wait has a generous timeout and no
test asserts on how long anything took.
"""

from __future__ import annotations

import os
import signal
import subprocess

import anyio
import pytest

import lessor
from lessor.core import events as ev
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.replay import verify
from lessor.scheduler.control import UnknownRun
from lessor.scheduler.launch import worker_command
from lessor.simulations.checkers import single_owner

pytestmark = pytest.mark.anyio
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 60


class Workers:
    """Starts `lessor worker` processes and always ends them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.procs: list[subprocess.Popen] = []

    def start(self, worker_id: str, queue: str = "default", *extra: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            worker_command(self.url, "tests.app:registry", worker_id=worker_id, queue=queue, ttl_ms=600,
                           grace_ms=400, extra=extra),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()


@pytest.fixture
def workers(flushed):
    w = Workers(flushed)
    yield w
    w.stop_all()


@pytest.fixture
async def client(flushed):
    async with lessor.connect(flushed) as c:
        yield c


async def run_reaper(client, task_status=anyio.TASK_STATUS_IGNORED):
    task_status.started()
    await Reaper(client.backend, interval_ms=50).run()


async def log_events(client, etype=None) -> list:
    return [e.event for e in await EventLog(client.backend).read_all() if etype is None or isinstance(e.event, etype)]


async def wait_for(predicate, timeout_s: float = WAIT_S) -> None:
    with anyio.fail_after(timeout_s):
        while not await predicate():
            await anyio.sleep(0.05)


async def test_a_fan_out_run_succeeds(client, workers):
    workers.start("w-1")
    workers.start("w-2")
    run = await client.submit_run("fanout", {"n": 12})
    info = await run.wait(timeout_s=WAIT_S)
    assert info.phase.value == "succeeded" and info.result == sum(i * i for i in range(12))
    root = await client.tree(run.run_id)
    assert sorted(c.info.action_id for c in root.children) == sorted(f"a0.{i}" for i in range(1, 13))
    assert all(c.info.parent == "a0" and c.info.result == (int(c.info.action_id[3:]) - 1) ** 2 for c in root.children)
    assert single_owner.check((e.partition, e.event) for e in await EventLog(client.backend).read_all()) == []
    assert await verify(client.backend) == []


async def test_a_killed_workers_actions_fail_over(client, workers, tmp_path):
    path = str(tmp_path / "ran")
    victim = workers.start("w-victim")
    run = await client.submit_run("sleepy", {"seconds": 2.0, "path": path})
    await wait_for(lambda: _ran(path, "started 1"))
    victim.kill()  # SIGKILL: no release, no goodbye
    async with anyio.create_task_group() as tg:
        await tg.start(run_reaper, client)
        workers.start("w-healthy")
        info = await run.wait(timeout_s=WAIT_S)
        tg.cancel_scope.cancel()
    assert info.phase.value == "succeeded" and info.root.attempt == 2 and info.root.worker == "w-healthy"
    (expired,) = await log_events(client, ev.LeaseExpired)
    assert expired.worker == "w-victim" and expired.attempt == 1


async def _ran(path: str, needle: str) -> bool:
    return os.path.exists(path) and needle in open(path).read()


async def test_abort_cancels_running_work_and_nothing_is_requeued(client, workers, tmp_path):
    path = str(tmp_path / "ran")
    workers.start("w-1")
    run = await client.submit_run("sleepy", {"seconds": 120, "path": path})
    await wait_for(lambda: _ran(path, "started 1"))
    outcome = await run.abort("user changed their mind")
    assert (outcome.aborted, outcome.requested) == (0, 1)
    info = await run.wait(timeout_s=WAIT_S)
    assert info.phase.value == "aborted"
    await wait_for(lambda: _ran(path, "cancelled 1"))
    assert not [e for e in await log_events(client, ev.ActionLeased) if e.attempt > 1]
    with pytest.raises(UnknownRun, match="no run proj/development/rnope"):
        await client.abort("rnope")


async def test_an_error_in_a_connect_block_reaches_the_caller_as_itself(flushed):
    with pytest.raises(UnknownRun, match="no run proj/development/rnope"):
        async with lessor.connect(flushed) as client:
            await client.get_run("rnope")


async def test_user_retries_with_backoff(client, workers):
    workers.start("w-1")
    async with anyio.create_task_group() as tg:
        await tg.start(run_reaper, client)
        run = await client.submit_run("flaky", {"fail_until": 3},
                                      retries=lessor.Retries(user=3, backoff_ms=50))
        info = await run.wait(timeout_s=WAIT_S)
        tg.cancel_scope.cancel()
    assert info.phase.value == "succeeded" and info.result == {"attempt": 3}
    requeued = await log_events(client, ev.ActionRequeued)
    assert [r.reason for r in requeued] == ["user_error", "user_error"]
    assert [r.user_left for r in requeued] == [2, 1]
    assert all(r.ready_at_ms > r.ts for r in requeued), "each retry waited for its backoff"
    assert requeued[0].error == "RuntimeError: attempt 1 failed on purpose"


async def test_a_cache_hit_skips_execution(client, workers, tmp_path):
    path = str(tmp_path / "ran")
    workers.start("w-1")
    key = lessor.CacheKey("record", version="1")
    first = await client.submit_run("record", {"path": path, "value": "v1"}, cache=key)
    assert (await first.wait(timeout_s=WAIT_S)).result == "v1"
    second = await client.submit_run("record", {"path": path, "value": "v1"}, cache=key)
    info = await second.wait(timeout_s=5)
    assert info.phase.value == "succeeded" and info.result == "v1" and info.root.attempt == 0
    assert len(open(path).read().splitlines()) == 1, "the second run did not execute"
    (hit,) = await log_events(client, ev.CacheHit)
    assert hit.run == second.run_id
    third = await client.submit_run("record", {"path": path, "value": "v2"}, cache=key)  # other inputs: a miss
    assert (await third.wait(timeout_s=WAIT_S)).result == "v2"


async def test_idempotent_submit_returns_the_first_run(client):
    first = await client.submit_run("square", {"x": 3}, idempotency_key="order-42")
    again = await client.submit_run("square", {"x": 3}, idempotency_key="order-42")
    assert first.created and not again.created and again.run_id == first.run_id
    with pytest.raises(lessor.IdempotencyConflict):  # the same key for another request is an error
        await client.submit_run("square", {"x": 999}, idempotency_key="order-42")
    assert len(await log_events(client, ev.RunCreated)) == 1
    page, cursor = await client.list_runs()
    assert [r.run_id for r in page] == [first.run_id] and cursor is None


async def test_graceful_shutdown_releases_leases_for_immediate_failover(client, workers, tmp_path):
    path = str(tmp_path / "ran")
    proc = workers.start("w-leaving", "default", "--drain-s", "0.2")
    run = await client.submit_run("sleepy", {"seconds": 120, "path": path})
    await wait_for(lambda: _ran(path, "started 1"))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out.decode()
    (requeued,) = await log_events(client, ev.ActionRequeued)
    assert requeued.reason == "released" and "w-leaving" in requeued.error
    assert not await log_events(client, ev.LeaseExpired)  # no waiting for ttl + grace
    info = await run.info()
    assert info.root.phase.value == "queued" and info.root.sys_left == 3  # no budget spent


async def test_bad_inputs_and_errors_are_recorded_and_never_crash_the_worker(client, workers):
    proc = workers.start("w-1")
    unknown = await client.submit_run("no_such_task")
    assert "unknown task 'no_such_task'" in (await unknown.wait(timeout_s=WAIT_S)).error
    exc = await client.submit_run("boom", retries=lessor.Retries(user=0))
    assert (await exc.wait(timeout_s=WAIT_S)).error == "ValueError: bad things"
    bad_output = await client.submit_run("unpackable")
    assert "returned an output lessor cannot carry" in (await bad_output.wait(timeout_s=WAIT_S)).error
    from lessor.scheduler.submit import submit_run

    raw = await submit_run(client.backend, "square", inputs=b"\xc1not msgpack")
    assert "undecodable inputs" in (await client.wait(raw.run_id, timeout_s=WAIT_S)).error
    assert proc.poll() is None, "the worker is still running"
    ok = await client.submit_run("square", {"x": 7})
    assert (await ok.wait(timeout_s=WAIT_S)).result == 49
    with pytest.raises(ValueError, match="references, not payloads"):
        await client.submit_run("square", {"x": "y" * 100_000})
    with pytest.raises(ValueError, match="namespace must look like"):
        await client.submit_run("square", {"x": 1}, namespace="flat")


async def test_list_runs_pages_newest_first_across_partitions(client):
    from lessor.scheduler.submit import RunSpec, submit_runs

    await submit_runs(client.backend, [RunSpec("square", run_id=f"lr{i:02d}") for i in range(25)])
    seen, cursor = [], None
    while True:
        page, cursor = await client.list_runs(limit=7, cursor=cursor)
        seen += [(r.created_ms, r.run_id) for r in page]
        if cursor is None:
            break
    assert len(seen) == 25 and len(set(seen)) == 25
    assert seen == sorted(seen, key=lambda x: (x[0], x[1]), reverse=True)
    await client.abort("lr03")
    aborted, _ = await client.list_runs(phase="aborted")
    assert [r.run_id for r in aborted] == ["lr03"]
    with pytest.raises(ValueError, match="bad cursor"):
        await client.list_runs(cursor="nonsense")


async def test_entries_and_events_read_the_log_then_follow_it(client):
    a = await client.submit_run("square", {"x": 1})
    b = await client.submit_run("square", {"x": 2})
    every = [entry async for entry in client.entries()]
    assert {(x.event.run, x.event.TYPE) for x in every} >= {(a.run_id, "run_created"), (b.run_id, "run_created")}
    assert all(x.partition == client.backend.keys_for_run(x.event.ns, x.event.run).partition for x in every)
    history = [e async for e in a.events()]
    assert [e.TYPE for e in history] == ["run_created", "action_created"]
    seen: list = []

    async def follow() -> None:
        async for e in a.events(follow=True):
            seen.append(e)
            if isinstance(e, ev.RunCompleted):
                return

    async def read_history() -> bool:
        return len(seen) >= len(history)

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await wait_for(read_history)
            await b.abort()
            await a.abort()
    assert seen[:2] == history and len(seen) > 2 and {e.run for e in seen} == {a.run_id}
