"""OpenTelemetry: off by default (no-op), and when on, spans and metrics really come out.

OpenTelemetry providers are set once per process, so this runs in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import json, sys, anyio
from lessor import telemetry
from lessor.core.clock import ManualClock
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.leasing.keeper import LeaseKeeper
from lessor.leasing.reaper import Reaper
from lessor.leasing.scripts import VIRTUAL_CLOCK_KEY, ClockMode
from lessor.scheduler.api import Client
from tests.conftest import make_backend

async def main(url):
    telemetry.setup("memory")
    backend = await make_backend(url, clock=ClockMode.VIRTUAL)
    await backend.redis.flushall()
    await backend.redis.set(VIRTUAL_CLOCK_KEY, 1_000_000)
    async with anyio.create_task_group() as tg:
        client = Client(backend, tg)
        await client.submit_run("square", {"x": 2})
        tg.cancel_scope.cancel()
    lc = LeaseClient(backend, "w1", LeaseConfig(ttl_ms=1000, grace_ms=500))
    leases = await lc.acquire("proj/development", "default", 1)
    keeper = LeaseKeeper(lc, ManualClock())
    keeper.hold(leases[0], None, 0)
    await keeper.heartbeat()
    await backend.redis.set(VIRTUAL_CLOCK_KEY, 1_002_000)
    await Reaper(backend).reap_once()
    data = telemetry.memory_reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    spans = [s.name for s in telemetry.memory_spans.get_finished_spans()]
    print(json.dumps({"metrics": sorted(names), "spans": spans}))

anyio.run(main, sys.argv[1])
'''


def test_spans_and_metrics_come_out_when_turned_on(flushed):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, flushed], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "lessor.submit" in out["spans"]
    assert {"lessor.renewals", "lessor.renewal.latency", "lessor.lease.expirations", "lessor.failovers",
            "lessor.queue.depth", "lessor.reaper.lag"} <= set(out["metrics"])


def test_bad_mode_is_named():
    from lessor import telemetry
    from lessor.errors import ConfigError

    with pytest.raises(ConfigError, match="--otel must be one of"):
        telemetry.setup("zipkin")
