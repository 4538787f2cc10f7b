"""Every task can be stopped: a plain ``def`` task runs in a killable child process.

Before: sync tasks ran in threads; a timed-out or aborted one kept its slot and
its computation, and could commit a stale result after a new owner started.
"""

from __future__ import annotations

import os
import time

import anyio
import pytest

from lessor.errors import ConfigError
from lessor.leasing.config import LeaseConfig
from lessor.scheduler.control import abort_run
from lessor.scheduler.launch import worker_command
from lessor.scheduler.query import get_action
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import Retries, submit_run
from lessor.scheduler.values import pack_value
from lessor.scheduler.worker import Worker, WorkerConfig

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "sync"


def spin(ctx, path: str) -> str:
    """A sync task that never yields: it writes its pid, then burns CPU forever."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.01)


def add(ctx, a: int, b: int) -> dict:
    return {"sum": a + b, "token": ctx.token, "pid": os.getpid()}


def alive(pid: int) -> bool:
    """Running (not gone, and not a zombie: an exited process whose paused parent has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def registry() -> Registry:
    r = Registry()
    r.task(spin)
    r.task(add)
    return r


async def until(predicate, timeout_s: float = 30.0) -> None:
    with anyio.fail_after(timeout_s):
        while not await predicate():
            await anyio.sleep(0.05)


def test_executors_are_checked_when_a_task_is_registered():
    r = Registry()
    r.task(add)
    assert r.executor("add") == "process"
    r.task(add, name="add_t", executor="thread")
    assert r.executor("add_t") == "thread"
    with pytest.raises(ConfigError, match="does not fit a plain function"):
        r.task(add, name="x", executor="async")


@pytest.mark.parametrize("stop", ["abort", "timeout"])
async def test_an_aborted_or_timed_out_sync_task_has_its_process_killed_and_its_slot_freed(backend, tmp_path, stop):
    path = str(tmp_path / "pid")
    worker = Worker(backend, registry(), WorkerConfig(queue=QUEUE, namespace=NS, concurrency=1, worker_id="w1",
                                                      lease=LeaseConfig(ttl_ms=1500, grace_ms=500),
                                                      reap_interval_ms=100))
    run = await submit_run(backend, "spin", namespace=NS, queue=QUEUE, inputs=pack_value({"path": path}),
                           # long enough for the task's process to start on a loaded machine (the spawn
                           # imports lessor: seconds at a load of 15), else it times out before its pid is known
                           timeout_ms=5000 if stop == "timeout" else 0, retries=Retries(user=0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: _exists(path))
        pid = int(open(path).read())
        if stop == "abort":
            await abort_run(backend, NS, run.run_id, "stop the spinning task")
        await until(lambda: _gone(pid))                          # the process was killed
        await until(lambda: _free(worker))                      # and the slot is free again
        done = await get_action(backend, NS, run.run_id, "a0")
        second = await submit_run(backend, "add", namespace=NS, queue=QUEUE, inputs=pack_value({"a": 2, "b": 3}))
        await until(lambda: _succeeded(backend, second.run_id))  # the worker goes on working
        worker.stop()
    assert done.phase.value == ("aborted" if stop == "abort" else "timed_out")


async def _exists(path: str) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0


async def _gone(pid: int) -> bool:
    return not alive(pid)


async def _free(worker: Worker) -> bool:
    return worker.statistics().running == 0


async def _succeeded(backend, run_id: str) -> bool:
    return (await get_action(backend, NS, run_id, "a0")).phase.value == "succeeded"


async def test_a_sync_task_runs_in_another_process_with_its_context(backend):
    worker = Worker(backend, registry(), WorkerConfig(queue=QUEUE, namespace=NS, concurrency=2, worker_id="w1"))
    run = await submit_run(backend, "add", namespace=NS, queue=QUEUE, inputs=pack_value({"a": 2, "b": 3}))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: _succeeded(backend, run.run_id))
        worker.stop()
    info = await get_action(backend, NS, run.run_id, "a0")
    from lessor.scheduler.values import unpack_value

    out = unpack_value(info.result) if isinstance(info.result, bytes) else info.result
    assert out["sum"] == 5 and out["pid"] != os.getpid() and out["token"] > 0


def test_a_paused_worker_s_sync_task_stops_itself_at_the_self_fence_deadline(flushed, tmp_path):
    """SIGSTOP the worker: it cannot kill its task's process, so the process ends itself when the
    lease could be reaped (guarantee 2 for sync code, even for a paused worker)."""
    import signal
    import subprocess

    path = str(tmp_path / "pid")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worker = subprocess.Popen(
        worker_command(flushed, "tests.app:registry", worker_id="w-paused", queue=QUEUE, ttl_ms=1000, grace_ms=500),
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis as sync_redis

        from lessor.leasing.backend import open_backend

        async def submit() -> None:
            async with open_backend(flushed) as backend:
                await submit_run(backend, "spin_forever", namespace=NS, queue=QUEUE,
                                 inputs=pack_value({"path": path}))

        anyio.run(submit)
        deadline = time.monotonic() + 60
        while not (os.path.exists(path) and os.path.getsize(path)):
            assert time.monotonic() < deadline, "the sync task never started"
            time.sleep(0.05)
        pid = int(open(path).read())
        worker.send_signal(signal.SIGSTOP)                 # the worker is paused, its task is not
        while alive(pid):
            assert time.monotonic() < deadline, "the sync task ran on past its self-fence deadline"
            time.sleep(0.05)
        assert worker.poll() is None                       # the worker itself is only paused
        sync_redis.Redis.from_url(flushed).ping()
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        worker.wait(timeout=30)
