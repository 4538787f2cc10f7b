"""lessor through Sentinel: real sentinel processes watch a primary and its replica.

The primary is killed with SIGKILL while a worker runs; Sentinel promotes the
replica, the client (``redis+sentinel://``) asks Sentinel where the primary is
now, and every run finishes, each action once accepted, tokens increasing.
``lessor server --sentinel`` starts the same setup and prints its URL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import anyio
import pytest

from lessor.cluster import LocalSentinel
from lessor.leasing.backend import open_backend
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.scheduler.api import Client
from lessor.scheduler.launch import lessor_command
from lessor.scheduler.worker import Worker, WorkerConfig
from lessor.server import _die_with_parent
from tests.servers import answers, kill9, wait_for
from tests.test_cluster import check_log, fanout_registry

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "sent"


async def test_runs_finish_through_a_sentinel_failover():
    ran: list = []
    with LocalSentinel(replicas=1, sentinels=1, down_after_ms=1000, failover_timeout_ms=5000) as group:
        primary, replica = group.servers
        async with open_backend(group.url) as backend:
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
                # Acknowledged in memory mode means applied on the primary: what the replica has not
                # read yet dies with it (under load, the runs' own creation). This test is about
                # following Sentinel, not durability (test_store_faults: replicas:1), so the replica
                # catches up first.
                await backend.redis.execute_command("WAIT", 1, 10_000)
                kill9(primary)                                        # the primary dies mid-run
                await anyio.to_thread.run_sync(lambda: wait_for(
                    lambda: group.primary_port() == replica.port, "sentinel to promote the replica"))
                with anyio.fail_after(90):
                    results = [await run.wait() for run in runs]
                tg.cancel_scope.cancel()
            entries = [e.event for e in await EventLog(backend).read_all()]
    assert [r.phase.value for r in results] == ["succeeded"] * 6       # nothing stuck
    check_log(entries, 6 * 4)                                           # once each, tokens increasing


def test_lessor_server_sentinel_prints_a_url_that_works_and_stops_everything(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"}
    out = tmp_path / "server.out"
    proc = subprocess.Popen(lessor_command("server", "--sentinel", "--sentinels", "1", "--dir", str(tmp_path / "d")),
                            env=env, stdout=open(out, "w"), stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    try:
        url = wait_for(lambda: re.search(r"LESSOR_REDIS_URL=(\S+)", out.read_text()), "the URL").group(1)
        primary = int(re.search(r"primary: 127.0.0.1:(\d+)", out.read_text()).group(1))
        assert url.startswith("redis+sentinel://127.0.0.1:") and url.endswith("/lessor")
        found = {}
        for durability in ("memory", "replicas:1"):
            doctor = subprocess.run(lessor_command("doctor", "--redis-url", url, "--durability", durability, "--json"),
                                    env=env, capture_output=True, text=True, timeout=60)
            assert doctor.returncode == 0, doctor.stdout + doctor.stderr
            found[durability] = {c["name"]: c for c in json.loads(doctor.stdout)}["sentinel"]
        assert found["memory"]["status"] == "ok" and f"primary 127.0.0.1:{primary}, 1 replica" in found["memory"]["detail"]
        assert found["replicas:1"]["status"] == "warn" and "needs 2 replicas" in found["replicas:1"]["detail"]
        assert answers(f"redis://127.0.0.1:{primary}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    sentinel = url.split("//")[1].split("/")[0]
    assert not answers(f"redis://127.0.0.1:{primary}") and not answers(f"redis://{sentinel}")  # all gone
