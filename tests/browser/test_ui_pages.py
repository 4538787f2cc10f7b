"""The dashboard over HTTP, without a browser (part of ``make test``): every page answers, the
read-only mode refuses an abort, and the live tail delivers new events and resumes without a gap."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import anyio
import pytest

from lessor.scheduler.submit import submit_run
from lessor.scheduler.values import pack_value
from tests.browser.stack import NS
from tests.conftest import make_backend


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def submit(url: str, task: str = "square", queue: str = "default", **inputs) -> str:
    async def go():
        backend = await make_backend(url)
        try:
            return (await submit_run(backend, task, inputs=pack_value(inputs), namespace=NS, queue=queue)).run_id
        finally:
            await backend.redis.aclose()

    return anyio.run(go)


def test_every_page_answers(stack):
    base, _, story = stack
    pages = ["/runs", "/runs?phase=failed", "/runs?phase=queued", "/runs?task=sq*&since=1h", "/runs?limit=2",
             f"/runs/{NS}/{story.failover}", f"/runs/{NS}/{story.failover}/a0", f"/runs/{NS}/{story.fanout}",
             f"/runs/{NS}/{story.long}", "/workers", "/queues", "/queues?queues=backlog,other", "/activity", "/tail",
             "/healthz"]
    for page in pages:
        status, body = get(base + page)
        assert status == 200, (page, body[:500])
    assert story.failed in get(base + "/runs?phase=failed")[1]
    for page in (f"/runs/{NS}/{story.failed}", f"/runs/{NS}/{story.failed}/a0"):  # the task's traceback, stored
        body = get(base + page)[1]
        assert "traceback of a0" in body and "raise ValueError(&quot;bad things&quot;)" in body, page
    assert story.succeeded[0] not in get(base + "/runs?phase=failed")[1]
    assert all(r in get(base + "/runs?phase=queued")[1] for r in story.backlog)


def test_errors_say_what_was_wrong(stack):
    base, _, _ = stack
    assert get(f"{base}/runs/{NS}/rnosuchrun")[0] == 404
    assert get(f"{base}/runs/{NS}/rnosuchrun/a0")[0] == 404
    status, body = get(base + "/runs?ns=not-a-namespace")
    assert status == 400 and "project/domain" in body
    assert get(base + "/runs?cursor=garbage")[0] == 400
    assert get(base + "/runs?phase=sleeping")[0] == 400
    assert get(base + "/runs?until=yesterday")[0] == 400


def test_read_only_refuses_abort(stack):
    base, _, story = stack
    req = urllib.request.Request(f"{base}/runs/{NS}/{story.long}/abort", method="POST",
                                 headers={"X-Lessor-Abort": "1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403


def test_a_foreign_host_name_is_refused(stack):
    base, _, _ = stack
    assert get(base + "/runs", headers={"Host": "evil.example"})[0] == 400  # DNS rebinding


class Sse:
    """A reader of the tail's server-sent events (blocking, with a socket timeout)."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        self.resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=20)

    def messages(self):
        fields: dict[str, str] = {}
        for raw in self.resp:
            line = raw.decode().rstrip("\n")
            if not line:
                if fields:
                    yield fields
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value

    def close(self) -> None:
        self.resp.close()


def test_the_tail_delivers_a_new_submit_and_resumes_without_a_gap(stack):
    base, url, _ = stack
    sse = Sse(f"{base}/events/stream?ns={NS}")
    messages = sse.messages()
    assert next(messages) == {"retry": "2000"}  # sent once the follow's start is fixed: later events all come
    run_id = submit(url, x=3)
    seen = []
    for m in messages:
        event = json.loads(m["data"])
        if event["run"] == run_id:
            seen.append((event["type"], m["id"]))
            if event["type"] == "run_created":
                break
    sse.close()
    resume_at = seen[-1][1]
    assert re.fullmatch(r"(\d+:[\d-]+(\.\d+)?,?)+", resume_at)

    # A reconnect with Last-Event-ID goes on right after it: the run's next event is the first of its own,
    # though it is in the same stream entry as run_created (one entry holds one script call's events).
    sse = Sse(f"{base}/events/stream?ns={NS}", headers={"Last-Event-ID": resume_at})
    messages = sse.messages()
    next(messages)
    types = []
    for m in messages:
        event = json.loads(m["data"])
        if event["run"] == run_id:
            types.append(event["type"])
            if event["type"] == "run_completed":
                break
    sse.close()
    assert types[0] == "action_created" and "run_created" not in types
    assert types[-2:] == ["action_succeeded", "run_completed"]


def test_a_tail_that_was_away_too_long_goes_on_from_now(stack):
    base, url, _ = stack
    submit(url, queue="parked", x=4)   # events from before the tail (on a queue no worker serves: no more follow)
    long_ago = ",".join(f"{p}:1000-0" for p in range(4))   # stream ids are server ms: 1970
    sse = Sse(f"{base}/events/stream?ns={NS}", headers={"Last-Event-ID": long_ago})
    messages = sse.messages()
    assert next(messages) == {"retry": "2000"}
    assert next(messages)["event"] == "gap"
    run_id = submit(url, queue="parked", x=5)
    first = json.loads(next(messages)["data"])   # nothing from before: the next event is the new run's
    sse.close()
    assert first["run"] == run_id and first["type"] == "run_created"


def test_lessor_ui_serves_until_sigterm(stack):
    """The command itself: `lessor ui` on a port, read-only by default; SIGTERM stops it with exit 0."""
    import signal
    import subprocess
    import time

    from lessor.scheduler.launch import lessor_command
    from lessor.server import free_port

    _, url, story = stack
    port = free_port()
    proc = subprocess.Popen(lessor_command("ui", "--redis-url", url, "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # polls: the command prints before it listens; /healthz answers once it does
            try:
                status, body = get(f"http://127.0.0.1:{port}/runs")
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        assert status == 200 and story.failover in body and "read-only" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/ (read-only)" in out


def test_lessor_ui_needs_a_server(monkeypatch):
    from lessor.cli import main

    monkeypatch.delenv("LESSOR_REDIS_URL", raising=False)
    assert main(["ui"]) == 3
