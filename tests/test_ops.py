"""The operator's view: task tracebacks stored with the failure event and shown by `lessor run show`,
`lessor workers` and `lessor queues`, the worker's per-task log lines. Real server, real worker
processes; no timing asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest

import lessor
from lessor.core import events as ev
from lessor.core.limits import MAX_TRACEBACK, tail_text
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.launch import worker_command
from lessor.scheduler.outcome import Call, Ending, Outcome, decide_report
from lessor.scheduler.api import DEFAULT_NAMESPACE
from lessor.scheduler.submit import Retries

pytestmark = pytest.mark.anyio
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 60


def cli(*args: str, url: str, columns: str = "200") -> subprocess.CompletedProcess:
    """`lessor ARGS` against ``url``, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LESSOR_REDIS_URL", "COLUMNS")}
    env |= {"LESSOR_REDIS_URL": url, "COLUMNS": columns}
    return subprocess.run([sys.executable, "-m", "lessor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def worker(flushed):
    """Start a real `lessor worker` on a queue; always ended."""
    procs = []

    def start(queue: str, *extra: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        proc = subprocess.Popen(worker_command(flushed, "tests.app:registry", queue=queue, ttl_ms=2000,
                                               grace_ms=1000, extra=extra),
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_tail_text_keeps_the_end_and_says_it_cut():
    assert tail_text("short") == "short"
    long = "".join(f"frame {i}\n" for i in range(5000)) + "ValueError: the end\n"
    kept = tail_text(long)
    assert len(kept.encode()) <= MAX_TRACEBACK and kept.endswith("ValueError: the end\n")
    assert kept.startswith("…(") and "bytes cut)" in kept.splitlines()[0]
    # The worker's report carries the tail, never more than a fenced write takes.
    report = decide_report(Ending(outcome=Outcome(error="ValueError: x", traceback=long)))
    assert report.call is Call.FAIL and report.args == ("ValueError: x", True, kept)


async def test_a_failed_tasks_traceback_is_stored_with_its_event_and_shown(flushed, worker):
    worker("tb")
    async with lessor.connect(flushed) as client:
        run = await client.submit_run("boom", queue="tb", retries=Retries(user=1, backoff_ms=0))
        info = await run.wait(timeout_s=WAIT_S)
        assert info.phase.value == "failed"
        tb = info.root.traceback
        assert tb.startswith("Traceback (most recent call last):") and "in boom" in tb
        assert tb.rstrip().endswith("ValueError: bad things")
        events = [e.event for e in await EventLog(client.backend).read_all()]
        # The retried attempt's event and the final one each carry their attempt's traceback.
        requeued = [e for e in events if isinstance(e, ev.ActionRequeued) and e.run == run.run_id]
        failed = [e for e in events if isinstance(e, ev.ActionFailed) and e.run == run.run_id]
        assert len(requeued) == len(failed) == 1 and "bad things" in requeued[0].traceback
        assert failed[0].traceback == tb
        assert await verify(client.backend) == []   # the fold of the log and the server agree on it
    shown = cli("run", "show", run.run_id, url=flushed)
    assert shown.returncode == 0, shown.stderr
    assert "traceback of a0 boom" in shown.stdout and "ValueError: bad things" in shown.stdout
    assert 'raise ValueError("bad things")' in shown.stdout
    as_json = json.loads(cli("run", "show", run.run_id, "--json", url=flushed).stdout)
    assert json.dumps(tb) in json.dumps(as_json)


async def test_a_traceback_past_the_limit_is_refused_by_the_client_and_by_the_script(flushed):
    async with lessor.connect(flushed) as client:
        from lessor.leasing.client import LeaseClient

        await client.submit_run("boom", queue="tb-limit")
        lc = LeaseClient(client.backend, "w-limit")
        [lease] = await lc.acquire(DEFAULT_NAMESPACE, "tb-limit")
        with pytest.raises(ValueError, match="traceback is .* bytes as UTF-8; at most 8192"):
            await lc.fail(lease, "ValueError: x", traceback="x" * (MAX_TRACEBACK + 1))
        keys = client.backend.keys_for_ref(lease.ref)
        with pytest.raises(Exception, match="LESSOR_BAD_ARG fail: traceback must be at most 8192 bytes"):
            await client.backend.call("fail", [keys.prefix], [lease.ref, lease.token, "w-limit", "ValueError: x", 1,
                                                                0.5, "x" * (MAX_TRACEBACK + 1)])
        # Nothing was lost: the lease still reports, with a traceback at the limit.
        assert await lc.fail(lease, "ValueError: x", retryable=False,
                             traceback=tail_text("y" * 20_000)) == 0
        a = await client.get_action(lease.ref.split("/")[2], "a0")
        assert a.phase.value == "failed" and a.traceback.endswith("y" * 100) and len(a.traceback) <= MAX_TRACEBACK


async def test_the_worker_logs_one_json_line_per_task_start_and_end(flushed, worker, tmp_path):
    out = open(tmp_path / "worker.log", "w")
    proc = worker("logs", "--log-format", "json", "--worker-id", "w-json", stdout=out)
    async with lessor.connect(flushed) as client:
        ok = await client.submit_run("square", {"x": 4}, queue="logs")
        bad = await client.submit_run("boom", queue="logs")
        assert (await ok.wait(timeout_s=WAIT_S)).phase.value == "succeeded"
        assert (await bad.wait(timeout_s=WAIT_S)).phase.value == "failed"
    proc.terminate()   # SIGTERM: drain, stop, flush
    proc.wait(timeout=WAIT_S)
    out.close()
    lines = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()]  # every line is JSON
    tasks = [x for x in lines if x["event"] in ("task_started", "task_ended")]
    assert any(x["event"] == "log" and "worker w-json" in x["message"] for x in lines)
    by_run = {}
    for x in tasks:
        by_run.setdefault(x["run"], []).append(x)
    assert set(by_run) == {ok.run_id, bad.run_id}
    for run_id, outcome in ((ok.run_id, "succeeded"), (bad.run_id, "failed")):
        start, end = by_run[run_id]
        assert (start["event"], end["event"]) == ("task_started", "task_ended")
        for x in (start, end):
            assert x["namespace"] == DEFAULT_NAMESPACE and x["action"] == "a0" and x["worker"] == "w-json"
            assert x["attempt"] == 1 and x["token"] >= 1 and x["ts"].endswith("+00:00")
        assert end["outcome"] == outcome and end["duration_ms"] >= 0 and "duration_ms" not in start
    assert by_run[bad.run_id][1]["error"] == "ValueError: bad things"
    bad_format = subprocess.run(worker_command(flushed, "tests.app:registry", extra=("--log-format", "yaml")),
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad_format.returncode == 2 and "--log-format" in bad_format.stderr and "json" in bad_format.stderr


def test_text_task_lines_are_one_line_each_whatever_the_width():
    import io
    from types import SimpleNamespace

    from lessor.scheduler import tasklog

    lease = SimpleNamespace(ref="proj/development/r0123456789ab/a0.1", task="noop", attempt=2, token=9)
    buf = io.StringIO()
    tasklog.write_to(buf, "text")
    try:
        tasklog.started(lease, "w-1")
        tasklog.ended(lease, "w-1", 1.25, "failed", "ValueError: x\nmore")
    finally:
        tasklog.write_to(None)
    start, end = buf.getvalue().splitlines()
    assert start.endswith(" INFO started proj/development/r0123456789ab/a0.1 noop attempt 2 token 9")
    assert end.endswith("ended proj/development/r0123456789ab/a0.1 noop attempt 2 token 9: failed after 1.2 ms "
                        "(ValueError: x)") or end.endswith("failed after 1.3 ms (ValueError: x)")
