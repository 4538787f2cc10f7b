"""lessor through Sentinel: a real sentinel process watches a primary and its replica.

The primary is killed with SIGKILL while a worker runs; Sentinel promotes the
replica, the client (``redis+sentinel://``) asks Sentinel where the primary is
now, and every run finishes, each action once accepted, tokens increasing.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import anyio
import pytest
import redis

from lessor.core import events as ev
from lessor.leasing.backend import open_backend
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.scheduler.api import Client
from lessor.scheduler.worker import Worker, WorkerConfig
from lessor.server import _die_with_parent, find_server_binary, free_port
from tests.servers import ReplicatedPair, kill9, wait_for
from tests.test_cluster import fanout_registry

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "sent"


class LocalSentinel:
    """One sentinel process (quorum 1) monitoring ``primary_port`` as service ``lessor``."""

    def __init__(self, primary_port: int) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lessor-sentinel-")
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor lessor 127.0.0.1 {primary_port} 1\n"
                    "sentinel down-after-milliseconds lessor 1000\nsentinel failover-timeout lessor 5000\n")
        self.proc = subprocess.Popen([find_server_binary(), self.conf, "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        wait_for(lambda: self.primary_port() == primary_port, "sentinel to see the primary")

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/lessor"

    def primary_port(self) -> int | None:
        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            addr = client.execute_command("SENTINEL", "get-master-addr-by-name", "lessor")
            return int(addr[1]) if addr else None
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def test_runs_finish_through_a_sentinel_failover():
    ran: list = []
    with ReplicatedPair() as pair:
        sentinel = LocalSentinel(pair.primary.port)
        try:
            async with open_backend(sentinel.url) as backend:
                client = Client(backend, None)
                worker = Worker(backend, fanout_registry(ran), WorkerConfig(
                    queue=QUEUE, namespace=NS, concurrency=8, worker_id="w1",
                    lease=LeaseConfig(ttl_ms=4000, grace_ms=2000), reap_interval_ms=200))
                async with anyio.create_task_group() as tg:
                    client.watcher = type(client.watcher)(backend, tg)
                    tg.start_soon(worker.run)
                    runs = [await client.submit_run("fan", {"n": 3}, queue=QUEUE) for _ in range(6)]
                    with anyio.fail_after(30):
                        while len(ran) < 6:
                            await anyio.sleep(0.05)
                    kill9(pair.primary)                                   # the primary dies mid-run
                    await anyio.to_thread.run_sync(lambda: wait_for(
                        lambda: sentinel.primary_port() == pair.replica.port, "sentinel to promote the replica"))
                    with anyio.fail_after(90):
                        results = [await run.wait() for run in runs]
                    tg.cancel_scope.cancel()
                entries = [e.event for e in await EventLog(backend).read_all()]
        finally:
            sentinel.stop()
    assert [r.phase.value for r in results] == ["succeeded"] * 6       # nothing stuck
    succeeded = [(e.run, e.action) for e in entries if isinstance(e, ev.ActionSucceeded)]
    assert len(succeeded) == len(set(succeeded))                         # each action accepted once
    tokens: dict = {}
    for e in entries:
        if isinstance(e, ev.ActionLeased):
            tokens.setdefault((e.run, e.action), []).append(e.token)
    assert all(t == sorted(set(t)) for t in tokens.values())             # strictly increasing per action
