"""What the dashboard tests run against: a real server, real worker processes, the UI on uvicorn, and a story.

``populate()`` leaves the store holding every kind of thing a page shows:
runs that succeeded, failed, retried and fanned out; one action that failed
over (a stalled worker's lease expired, the reaper took it back, another
worker finished it, and the stalled worker's late report was refused); a
long task holding a live lease; and a backlog on a queue no worker serves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import anyio

from lessor.errors import StaleToken
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.scheduler.launch import worker_command
from lessor.scheduler.submit import Retries, submit_run
from lessor.scheduler.values import pack_value
from lessor.ui.app import serve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NS = "proj/development"


class UiThread:
    """The dashboard on a free loopback port, served by uvicorn in a thread (``with UiThread(url) as ui: ui.base``)."""

    def __init__(self, url: str, allow_abort: bool = False) -> None:
        self.url, self.allow_abort = url, allow_abort
        self.server = None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        def ready(server) -> None:
            self.server = server

        serve(self.url, sock=self.sock, allow_abort=self.allow_abort, ready=ready)

    def __enter__(self) -> "UiThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (self.server is not None and self.server.started):  # uvicorn exposes no event: poll its flag
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@dataclass
class Workers:
    """Real ``lessor worker`` processes running tests/app.py's tasks."""

    url: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self, worker_id: str, queue: str = "default") -> None:
        argv = worker_command(self.url, "tests.app:registry", worker_id=worker_id, queue=queue, concurrency=4,
                              ttl_ms=3000, grace_ms=1000)
        self.procs.append(subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class Story:
    """The runs ``populate`` made, by role."""

    succeeded: list[str] = field(default_factory=list)
    fanout: str = ""
    retried: str = ""
    failed: str = ""
    failover: str = ""
    long: str = ""
    backlog: list[str] = field(default_factory=list)


async def _submit(backend, task: str, inputs=None, queue: str = "default", **kw) -> str:
    s = await submit_run(backend, task, inputs=pack_value(inputs), namespace=NS, queue=queue, **kw)
    return s.run_id


async def _wait_phase(backend, run_id: str, phases: set[str], timeout_s: float = 60) -> None:
    from lessor.scheduler.query import get_run

    with anyio.fail_after(timeout_s):  # polls: the run's phase is state, read until it is terminal
        while (await get_run(backend, NS, run_id)).phase not in phases:
            await anyio.sleep(0.05)


async def failover_story(backend, reap_wait_s: float = 30) -> str:
    """A run whose root action fails over: ``w-stalled`` leases it and goes silent, the workers' reaper
    expires it, ``w-standby`` finishes it, and the stalled worker's late report is refused."""
    run_id = await _submit(backend, "square", {"x": 7}, queue="handoff")
    stalled = LeaseClient(backend, "w-stalled", LeaseConfig(ttl_ms=600, grace_ms=400))
    with anyio.fail_after(10):
        while not (leases := await stalled.acquire(NS, "handoff")):
            await anyio.sleep(0.05)
    standby = LeaseClient(backend, "w-standby", LeaseConfig(ttl_ms=5000, grace_ms=1000))
    with anyio.fail_after(reap_wait_s):  # polls: the reaper (in the worker processes) requeues it after ttl + grace
        while not (taken := await standby.acquire(NS, "handoff")):
            await anyio.sleep(0.1)
    await anyio.sleep(0.3)  # a visible lease bar, not a sliver
    await standby.complete(taken[0], pack_value(49))
    try:
        await stalled.complete(leases[0], pack_value(49))
    except StaleToken:
        pass
    else:
        raise AssertionError("the stalled worker's late report was accepted")
    return run_id


async def populate(backend) -> Story:
    """Submit the story's runs and wait until each has reached the state the pages should show."""
    story = Story()
    story.failover = await failover_story(backend)
    for x in (2, 3, 4):
        story.succeeded.append(await _submit(backend, "square", {"x": x}))
    story.fanout = await _submit(backend, "fanout", {"n": 3})
    story.retried = await _submit(backend, "flaky", {"fail_until": 2}, retries=Retries(user=2, backoff_ms=100))
    story.failed = await _submit(backend, "boom")
    story.long = await _submit(backend, "sleepy", {"seconds": 600})
    for x in range(5):
        story.backlog.append(await _submit(backend, "square", {"x": x}, queue="backlog"))
    done = {"succeeded", "failed", "aborted", "timed_out"}
    for run_id in [*story.succeeded, story.fanout, story.retried, story.failed]:
        await _wait_phase(backend, run_id, done)
    from lessor.scheduler.query import get_action

    with anyio.fail_after(30):  # polls: the long task's lease is state
        while (await get_action(backend, NS, story.long, "a0")).phase != "running":
            await anyio.sleep(0.05)
    return story
