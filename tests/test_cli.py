"""The `lessor` command as a user runs it: help, JSON output, exit codes, clear errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lessor(*args: str, url: str | None = None, check: bool = False, columns: str | None = "200",
           timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LESSOR_REDIS_URL", None)
    env.pop("COLUMNS", None)
    if url:
        env["LESSOR_REDIS_URL"] = url
    if columns:
        env["COLUMNS"] = columns
    proc = subprocess.run([sys.executable, "-m", "lessor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_every_command():
    out = lessor("--help", check=True).stdout
    for command in ("server", "events", "replay", "submit", "runs", "run", "abort", "worker", "reaper",
                    "bench", "demo"):
        assert command in out
    assert "usage: lessor bench heartbeat" in lessor("bench", "heartbeat", "--help", check=True).stdout


def test_submit_runs_show_events_replay_as_json(flushed):
    sub = json.loads(lessor("submit", "square", "--inputs", '{"x": 4}', "--json", url=flushed, check=True).stdout)
    assert sub["created"] and sub["namespace"] == "proj/development"
    again = json.loads(lessor("submit", "square", "--inputs", '{"x": 4}', "--idempotency-key", "k1", "--json",
                              url=flushed, check=True).stdout)
    runs = json.loads(lessor("runs", "--json", url=flushed, check=True).stdout)
    assert {r["run"] for r in runs["runs"]} == {sub["run"], again["run"]}
    assert all(r["phase"] == "running" and r["root"]["phase"] == "queued" for r in runs["runs"])
    shown = json.loads(lessor("run", "show", sub["run"], "--json", url=flushed, check=True).stdout)
    assert shown["tree"]["action"] == "a0" and shown["tree"]["children"] == []
    lines = [json.loads(line) for line in lessor("events", "--json", url=flushed, check=True).stdout.splitlines()]
    assert [e["type"] for e in lines].count("run_created") == 2
    assert next(e for e in lines if e["type"] == "action_created" and e["run"] == sub["run"])["inputs"] == {"x": 4}
    replay = json.loads(lessor("replay", "--verify", "--json", url=flushed, check=True).stdout)
    assert replay["events"] == 4 and replay["differences"] == []
    tree_text = lessor("run", "show", sub["run"], url=flushed, check=True).stdout
    assert "a0 square" in tree_text and "queued" in tree_text


def test_replay_verify_exits_1_and_prints_every_difference(flushed):
    run = json.loads(lessor("submit", "square", "--json", url=flushed, check=True).stdout)["run"]
    client = redis.Redis.from_url(flushed)
    key = next(k for k in client.scan_iter(match=f"lessor:*:a:proj/development/{run}/a0"))
    client.hset(key, "phase", "succeeded")
    proc = lessor("replay", "--verify", url=flushed)
    assert proc.returncode == 1
    assert "phase: log says b'queued', live says b'succeeded'" in proc.stdout
    client.close()


def test_abort_and_unknown_run_errors_are_one_clear_line(flushed):
    run = json.loads(lessor("submit", "square", "--json", url=flushed, check=True).stdout)["run"]
    out = json.loads(lessor("abort", run, "--json", url=flushed, check=True).stdout)
    assert out == {"aborted_now": 1, "abort_requested": 0}
    proc = lessor("abort", "rdoesnotexist", url=flushed)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lessor: no run proj/development/rdoesnotexist: check the id and --namespace with "
        "`lessor runs --namespace proj/development`"]
    # The full form `lessor submit` prints works too.
    shown = json.loads(lessor("run", "show", f"proj/development/{run}", "--json", url=flushed, check=True).stdout)
    assert shown["run"] == run and shown["phase"] == "aborted"


def test_client_commands_refuse_to_run_without_the_shared_server():
    proc = lessor("submit", "square")
    assert proc.returncode == 3
    assert "needs the shared server: start one with `lessor server`" in proc.stderr


def test_a_server_that_is_down_gives_one_line_not_a_traceback():
    proc = lessor("runs", url="redis://127.0.0.1:1")
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lessor: cannot reach the server at redis://127.0.0.1:1") and "lessor server" in line


def test_bad_arguments_are_named():
    proc = lessor("submit", "square", "--inputs", "{not json", url="redis://127.0.0.1:1")
    assert proc.returncode == 2 and "--inputs must be JSON" in proc.stderr
    proc = lessor("worker", "--app", "nomodule_here:registry", "--redis-url", "redis://127.0.0.1:1")
    assert proc.returncode == 2 and "cannot import 'nomodule_here'" in proc.stderr
    proc = lessor("worker", "--app", "tests.app:registry", "--ttl-ms", "100", "--heartbeat-ms", "100",
                  "--redis-url", "redis://127.0.0.1:1")
    assert proc.returncode == 2 and "heartbeat_ms must be > 0 and < ttl_ms" in proc.stderr


def test_worker_command_builds_what_lessor_worker_parses():
    from lessor.cli.parser import build_parser
    from lessor.scheduler.launch import worker_command

    argv = worker_command("redis://h:1", "tests.app:registry", worker_id="w-1", queue="q", namespace="p/staging",
                          concurrency=3, durability="fsync", ttl_ms=600, grace_ms=400, margin_ms=50, drain_s=0.5,
                          reap=False, truth_log="/tmp/t.jsonl", extra=("--otel", "console"))
    assert argv[:4] == [sys.executable, "-m", "lessor", "worker"]
    args = build_parser().parse_args(argv[3:])
    assert (args.redis_url, args.app, args.worker_id, args.queue, args.namespace, args.concurrency) == (
        "redis://h:1", "tests.app:registry", "w-1", "q", "p/staging", 3)
    assert (args.durability, args.ttl_ms, args.grace_ms, args.margin_ms, args.drain_s) == ("fsync", 600, 400, 50, 0.5)
    assert (args.no_reap, args.truth_log, args.otel) == (True, "/tmp/t.jsonl", "console")
    defaults = build_parser().parse_args(worker_command("redis://h:1", "m:r")[3:])
    assert (defaults.queue, defaults.concurrency, defaults.no_reap) == ("default", 8, False)


# --- issue 12: submit --wait and its options, phase filters, events --namespace, exit codes,
# --- the runs table at any width, a silent or foreign service at the URL


def test_submit_waits_with_retries_timeout_priority_and_inputs_from_a_file(flushed, tmp_path):
    from lessor.scheduler.launch import worker_command

    (tmp_path / "inputs.json").write_text('{"x": 7}')
    worker_log = tmp_path / "worker.log"
    # Its log lines go to stdout, its tracebacks to stderr: both to the file.
    worker = subprocess.Popen(worker_command(flushed, "tests.app:registry", queue="waits", reap=False), cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=open(worker_log, "w"), stderr=subprocess.STDOUT)
    try:
        try:
            first = lessor("submit", "square", "--queue", "waits", "--inputs", f"@{tmp_path}/inputs.json",
                           "--retries", "2", "--timeout", "30", "--priority", "5", "--wait", "--json",
                           url=flushed, check=True)
        except subprocess.TimeoutExpired:  # (once, on a loaded machine): say what the worker was doing
            raise AssertionError(f"submit --wait timed out; worker exit code {worker.poll()}, its log:\n"
                                 + worker_log.read_text()[-3000:]) from None
        done = json.loads(first.stdout)
        assert (done["status"], done["result"], done["error"]) == ("succeeded", 49, None)
        client = redis.Redis.from_url(flushed)
        key = next(client.scan_iter(match=f"lessor:*:a:proj/development/{done['run']}/a0"))
        assert client.hmget(key, "user_left", "priority", "timeout_ms") == [b"2", b"5", b"30000"]
        client.close()
        failed = lessor("submit", "boom", "--queue", "waits", "--wait", url=flushed)
        assert failed.returncode == 1, failed.stderr
        assert "failed: ValueError: bad things" in failed.stdout and failed.stdout.startswith("submitted: run r")
        piped = subprocess.run([sys.executable, "-m", "lessor", "submit", "square", "--queue", "waits", "--inputs",
                                "@-", "--wait", "--redis-url", flushed], input='{"x": 3}', capture_output=True,
                               text=True, cwd=ROOT, timeout=120)
        assert piped.returncode == 0 and piped.stdout.rstrip().endswith("succeeded: 9"), piped
        quiet = lessor("submit", "square", "--queue", "waits", "--inputs", '{"x": 2}', "--wait", "-q", url=flushed,
                       check=True).stdout.splitlines()
        assert len(quiet) == 1 and re.fullmatch(r"r[0-9a-f]{12}", quiet[0]), quiet   # for run=$(lessor submit -q)
    finally:
        worker.kill()
        worker.wait()
    proc = lessor("submit", "square", "--inputs", f"@{tmp_path}/missing.json", url=flushed)
    assert proc.returncode == 2 and "--inputs @" in proc.stderr and "cannot read it" in proc.stderr
    proc = lessor("submit", "square", "--priority", "5000", url=flushed)
    assert proc.returncode == 2 and "priority" in proc.stderr


def _lease_and_fail(url: str, queue: str, error: str | None = None) -> None:
    """Take the first action of ``queue`` as a worker would (an attempt starts); fail it with ``error``."""
    import anyio

    from lessor.leasing.backend import open_backend
    from lessor.leasing.client import LeaseClient

    async def run() -> None:
        async with open_backend(url) as backend:
            client = LeaseClient(backend, "w-test")
            (lease,) = await client.acquire("proj/development", queue, 1)
            if error:
                await client.fail(lease, error, retryable=False)

    anyio.run(run)


def test_runs_phase_queued_means_no_attempt_started_and_pages_by_it(flushed):
    started = json.loads(lessor("submit", "square", "--queue", "q", "--json", url=flushed, check=True).stdout)["run"]
    _lease_and_fail(flushed, "q")
    queued = {json.loads(lessor("submit", "square", "--queue", "q", "--json", url=flushed, check=True).stdout)["run"]
              for _ in range(3)}
    listed = json.loads(lessor("runs", "--phase", "queued", "--json", url=flushed, check=True).stdout)
    assert {r["run"] for r in listed["runs"]} == queued and listed["next_cursor"] is None
    assert {(r["phase"], r["status"]) for r in listed["runs"]} == {("running", "queued")}
    running = json.loads(lessor("runs", "--phase", "running", "--json", url=flushed, check=True).stdout)["runs"]
    assert [r["run"] for r in running] == [started] and running[0]["root"]["attempt"] == 1
    seen, cursor = [], None
    for _ in range(5):   # one queued run per page, and nothing else
        page = json.loads(lessor("runs", "--phase", "queued", "--limit", "1", "--json",
                                 *(["--cursor", cursor] if cursor else []), url=flushed, check=True).stdout)
        seen += [r["run"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(queued) and len(seen) == 3
    table = lessor("runs", url=flushed, check=True).stdout
    assert f"{started}  square  q      running" in table and table.count(" queued ") == 3


def test_events_namespace_works_without_run(flushed):
    mine = json.loads(lessor("submit", "square", "--namespace", "mine/dev", "--json", url=flushed, check=True).stdout)
    lessor("submit", "square", "--namespace", "other/dev", url=flushed, check=True)
    lines = [json.loads(line) for line in lessor("events", "--namespace", "mine/dev", "--json", url=flushed,
                                                 check=True).stdout.splitlines()]
    assert [e["type"] for e in lines] == ["run_created", "action_created"]
    assert {(e["ns"], e["run"]) for e in lines} == {("mine/dev", mine["run"])}
    every = lessor("events", "--json", url=flushed, check=True).stdout.splitlines()
    assert len(every) == 4   # without --namespace: every namespace's
    proc = lessor("events", "--namespace", "not-a-namespace", url=flushed)
    assert proc.returncode == 2 and "project/domain" in proc.stderr


def test_exit_codes_are_in_every_commands_help():
    from lessor.cli import build_parser
    from lessor.cli.reference import commands

    parser = build_parser()
    every = {path: command for path, command, _ in commands(parser)} | {(): parser}
    for path, command in every.items():
        out = " ".join(command.format_help().split())
        assert "exit codes: 0 ok;" in out and "3 the server cannot be reached" in out and "130 interrupted" in out, path
        assert ("; 1 " in out) == (not path or path[0] in ("submit", "replay", "doctor", "demo", "simulate",
                                                           "chaos", "bench")), path
    shown = " ".join(lessor("submit", "--help", check=True).stdout.split())   # what the command itself prints
    assert "exit codes: 0 ok; 1 with --wait, the run ended other than succeeded; 2 bad usage" in shown
    assert "1 --verify found differences" in " ".join(every[("replay",)].format_help().split())


def test_the_runs_table_keeps_one_line_per_run_at_80_columns_and_in_a_pipe(flushed):
    error = "RuntimeError: " + "the upstream service answered 503 again and again " * 3
    runs = [json.loads(lessor("submit", "a_task_with_a_rather_long_name", "--queue", "w", "--json",
                              url=flushed, check=True).stdout)["run"] for _ in range(2)]
    _lease_and_fail(flushed, "w", error)
    _lease_and_fail(flushed, "w", error)
    narrow = lessor("runs", url=flushed, columns="80", check=True).stdout.splitlines()
    assert all(len(line) <= 80 for line in narrow), narrow
    rows = [line for line in narrow if line.split() and line.split()[0] in runs]
    assert len(rows) == 2 and all("failed" in row and "RuntimeError" in row and row.endswith("…") for row in rows)
    assert len(narrow) == 4, narrow   # title, header, two runs: nothing wrapped
    piped = lessor("runs", url=flushed, columns=None, check=True).stdout.splitlines()
    assert len(piped) == 4 and all(error.strip() in line for line in piped[2:]), piped


def _listener(answer: bytes | None):
    """A loopback TCP listener that never answers (None) or answers every connection with ``answer``."""
    import socket
    import threading

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.sendall(answer)
            conn.close()

    if answer is not None:
        threading.Thread(target=serve, daemon=True).start()
    return sock


def test_a_silent_port_or_a_non_redis_service_fails_in_one_line_within_seconds():
    # Before: a listener that never answers held every command for 2 x 30 s, and an HTTP
    # service gave a protocol traceback. The subprocess timeout bounds the wait, generously.
    silent, http = _listener(None), _listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    try:
        for sock, expect, commands in (
                (silent, "within 3 s: something listens there but does not speak Redis", (["runs"], ["submit", "x"])),
                (http, "is not a Redis or Valkey server", (["runs"], ["submit", "x"], ["events"], ["doctor"]))):
            url = f"redis://127.0.0.1:{sock.getsockname()[1]}"
            for command in commands:
                proc = lessor(*command, "--redis-url", url, timeout_s=30)
                assert proc.returncode == 3, proc.stderr
                (line,) = proc.stderr.strip().splitlines()
                assert line.startswith("lessor: ") and url in line and expect in line, line
    finally:
        silent.close()
        http.close()
