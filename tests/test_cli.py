"""The `lessor` command as a user runs it: help, JSON output, exit codes, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lessor(*args: str, url: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LESSOR_REDIS_URL", None)
    if url:
        env["LESSOR_REDIS_URL"] = url
    env["COLUMNS"] = "200"
    proc = subprocess.run([sys.executable, "-m", "lessor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
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
