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
        # The retried attempt's event and the final one each carry their attempt's traceback. (A
        # lease the worker gave back unstarted, its earlier attempt still stopping there on a loaded
        # machine, is requeued too, as 'released': no attempt ran, no traceback.)
        requeued = [e for e in events if isinstance(e, ev.ActionRequeued) and e.run == run.run_id
                    and e.reason == "user_error"]
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


async def test_workers_and_queues_show_a_real_worker_and_its_queue(flushed, worker, tmp_path):
    """`lessor workers` / `queues` (tables and --json) and the dashboard's pages read fleet.py alike."""
    from lessor.ui import fleet

    proc = worker("fleet", "--worker-id", "w-fleet", "--concurrency", "2", "--drain-s", "0.5")
    flag = tmp_path / "sleepy.txt"
    async with lessor.connect(flushed) as client:
        # Two long runs hold the worker's two slots; then three more wait on the queue.
        held = [await client.submit_run("sleepy", {"seconds": 120, "path": str(flag)}, queue="fleet")
                for _ in range(2)]

        async def both_started() -> bool:
            return flag.exists() and flag.read_text().count("started") == 2

        with anyio.fail_after(WAIT_S):
            while not await both_started():
                await anyio.sleep(0.05)
        for _ in range(3):
            await client.submit_run("square", {"x": 1}, queue="fleet")
        found = await fleet.workers(client.backend)
        queues = await fleet.queues(client.backend, DEFAULT_NAMESPACE)
    [me] = [w for w in found.rows if w.worker == "w-fleet"]
    assert me.presence.pid == proc.pid and me.presence.version and len(me.leases) == 2
    assert {lease.ref.split("/")[2] for lease in me.leases} == {h.run_id for h in held}
    [q] = [v for v in queues.rows if v.row.queue == "fleet"]
    assert (q.row.depth, q.leased) == (3, 2) and q.per_s > 0

    out = json.loads(cli("workers", "--json", url=flushed).stdout)
    [w] = [w for w in out["workers"] if w["worker"] == "w-fleet"]
    assert (w["pid"], w["leases_held"], w["queue"]) == (proc.pid, 2, "fleet") and w["host"] and w["version"]
    assert 0 <= w["last_heartbeat_age_ms"] < 600_000
    out = json.loads(cli("queues", "--json", url=flushed).stdout)
    [qj] = [x for x in out["queues"] if x["queue"] == "fleet"]
    assert (qj["depth"], qj["leased_now"]) == (3, 2) and qj["oldest_waiting_age_ms"] >= 0
    table = cli("workers", url=flushed, columns="80").stdout.splitlines()
    row = next(line for line in table if "w-fleet" in line)
    assert str(proc.pid) in row and max(map(len, table)) <= 80   # one line per worker, at 80 columns
    table = cli("queues", "--queue", "empty-one", url=flushed).stdout
    assert any(line.split()[:2] == ["fleet", "3"] for line in table.splitlines() if line.strip())
    assert any(line.split()[:2] == ["empty-one", "0"] for line in table.splitlines() if line.strip())
    # --watch --json: one object per refresh, until stopped.
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"} | {"LESSOR_REDIS_URL": flushed}
    watch = subprocess.Popen([sys.executable, "-m", "lessor", "workers", "--json", "--watch", "0.2"], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = watch.stdout.readline(), watch.stdout.readline()
    finally:
        watch.terminate()
        watch.wait(timeout=30)
    assert all(any(x["worker"] == "w-fleet" for x in json.loads(line)["workers"]) for line in (first, second))

    # A clean stop withdraws the worker's presence.
    proc.terminate()
    proc.wait(timeout=WAIT_S)
    async with lessor.connect(flushed) as client:
        assert not any(w.worker == "w-fleet" for w in (await fleet.workers(client.backend)).rows)


def test_watch_takes_a_positive_number_of_seconds(capsys):
    from lessor.cli import build_parser

    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["workers", "--watch", bad])
        assert exit_.value.code == 2 and "--watch" in capsys.readouterr().err
    assert build_parser().parse_args(["queues", "--watch"]).watch == 2.0


async def test_presence_ages_out_workers_that_stopped_without_saying_so(backend):
    from dataclasses import asdict

    from lessor.scheduler import presence
    from lessor.ui import fleet

    now = await presence.server_ms(backend)
    key = backend.keys(0).named("WORKERS")
    me = await presence.announce(backend, presence.this_process("w-live", DEFAULT_NAMESPACE, "q", 4, 0))
    assert me.seen_ms >= now and me.started_ms == me.seen_ms and me.pid == os.getpid()
    for name, age_ms in (("w-quiet", presence.STALE_MS + 5_000), ("w-ancient", presence.FORGET_MS + 5_000)):
        old = presence.Presence(**{**asdict(me), "worker": name, "seen_ms": now - age_ms})
        await backend.redis.hset(key, name, json.dumps(asdict(old)))
    await backend.redis.hset(key, "w-foreign", b"not json")   # not a lessor worker's: skipped
    found = await fleet.workers(backend)
    assert [w.worker for w in found.rows] == ["w-live"] and found.gone == 2
    assert found.rows[0].last_heartbeat_ms == me.seen_ms
    assert await presence.forget_stale(backend, now) == 1      # only the one past FORGET_MS
    assert {p.worker for p in await presence.read(backend)} == {"w-live", "w-quiet"}
    await presence.withdraw(backend, "w-live")
    assert {p.worker for p in await presence.read(backend)} == {"w-quiet"}
