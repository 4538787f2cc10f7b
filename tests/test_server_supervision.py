"""`lessor server` never sits up silently with a dead valkey-server child.

A real `lessor server` process; its real valkey-server child is SIGKILLed (its pid
read from `INFO server` over the socket). With the default `--on-crash restart` the
same URL answers again with the data written before (AOF reload); with
`--on-crash exit`, or at the `--max-crashes`-th crash, the command exits non-zero
naming the log. SIGTERM and a terminal's Ctrl-C stop the child and exit 0.
Ordering is by polling with generous deadlines; nothing asserts a duration.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

from tests.servers import DEADLINE_S, connect, process_id, run_id, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lessor_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "lessor")  # .venv/bin/lessor
    return [script] if os.path.exists(script) else [sys.executable, "-m", "lessor"]


class LessorServer:
    """A `lessor server` subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, *args: str, new_session: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"}
        self.proc = subprocess.Popen(
            [*lessor_command(), "server", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=new_session)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for t in self._readers:
            t.start()
        ready = self.wait_line(self.stdout, "export LESSOR_REDIS_URL=")
        self.url = ready.split("export LESSOR_REDIS_URL=", 1)[1].strip()
        self.log_path = re.search(r"log: (\S+)", self.wait_line(self.stdout, "log: ")).group(1)
        self.data_dir = os.path.dirname(self.log_path)

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_line(self, lines: list[str], needle: str) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and not any(needle in line for line in lines):
                for t in self._readers:  # the process is gone: its last lines are in (or never come)
                    t.join(timeout=DEADLINE_S)
            return next((line for line in lines if needle in line), None)
        return wait_for(found, f"a line with {needle!r} from `lessor server` (stdout {self.stdout}, "
                               f"stderr {self.stderr})")

    def lines_with(self, needle: str) -> list[str]:
        return [line for line in self.stderr if needle in line]

    def child_pid(self, not_this: int | None = None) -> int:
        """The pid of the valkey-server answering on the URL (waiting for one other than ``not_this``)."""
        def probe() -> int | None:
            pid = process_id(self.url)
            return pid if pid != not_this else None
        return wait_for(probe, f"{self.url} to answer INFO server from a process other than {not_this}")

    def wait_exit(self) -> int:
        code = self.proc.wait(timeout=DEADLINE_S)
        for t in self._readers:
            t.join(timeout=DEADLINE_S)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # its child dies with it (PR_SET_PDEATHSIG)
        self.wait_exit()


@pytest.fixture
def start_server():
    started: list[LessorServer] = []

    def start(*args: str, new_session: bool = False) -> LessorServer:
        server = LessorServer(*args, new_session=new_session)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_a_killed_child_is_restarted_on_the_same_url_with_its_data(start_server, tmp_path):
    data = tmp_path / "data"
    srv = start_server("--dir", str(data), "--appendfsync", "always")
    assert srv.url == f"unix://{data}/valkey.sock"
    with connect(srv.url) as client:
        client.set("written", "before the crash")
        client.xadd("stream", {"n": "1"})
        assert client.execute_command("WAITAOF", 1, 0, 10_000)[0] == 1  # fsynced to the local AOF
    first_pid, first_run = srv.child_pid(), run_id(srv.url)

    os.kill(first_pid, signal.SIGKILL)

    second_pid = srv.child_pid(not_this=first_pid)  # the same URL answers, from a new process
    with connect(srv.url) as client:
        assert client.get("written") == "before the crash"
        assert client.xlen("stream") == 1
    assert run_id(srv.url) != first_run
    srv.wait_line(srv.stderr, "is back")
    [crash] = srv.lines_with("died unexpectedly")  # one line per crash
    assert f"pid {first_pid}" in crash and "SIGKILL" in crash and "exit code -9" in crash
    assert str(data / "valkey.log") in crash and "restarting" in crash
    assert srv.proc.poll() is None

    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    wait_for(lambda: gone(second_pid), f"valkey-server {second_pid} to be stopped with `lessor server`")
    assert srv.lines_with("died unexpectedly") == [crash]  # being stopped is not a crash


def test_on_crash_exit_exits_non_zero_at_once_naming_the_log(start_server):
    srv = start_server("--on-crash", "exit", "--ephemeral")  # a temp data dir: kept, so the log can be read
    try:
        pid = srv.child_pid()
        os.kill(pid, signal.SIGKILL)
        assert srv.wait_exit() == 3
        message = " ".join(srv.stderr)
        assert f"pid {pid}" in message and "SIGKILL" in message and "not restarting" in message
        assert srv.log_path in message and os.path.exists(srv.log_path)
        assert not srv.lines_with("restarting it in")
    finally:
        shutil.rmtree(srv.data_dir, ignore_errors=True)


def test_gives_up_loudly_at_the_max_crashes_th_crash_within_a_minute(start_server, tmp_path):
    srv = start_server("--dir", str(tmp_path / "data"), "--max-crashes", "2")
    first = srv.child_pid()
    os.kill(first, signal.SIGKILL)
    second = srv.child_pid(not_this=first)
    srv.wait_line(srv.stderr, "is back")  # else the kill lands while it starts: "did not come back"
    os.kill(second, signal.SIGKILL)
    assert srv.wait_exit() == 3
    assert len(srv.lines_with("restarting it in")) == 1
    [final] = srv.lines_with("giving up")
    assert f"pid {second}" in final and "2 crashes within 60 s" in final and srv.log_path in final


def test_ctrl_c_stops_the_child_and_exits_0_it_is_not_a_crash(start_server, tmp_path):
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the child
    # has its own group, so only `lessor server` gets it and stops the child itself.
    srv = start_server("--dir", str(tmp_path / "data"), new_session=True)
    pid = srv.child_pid()
    os.killpg(srv.proc.pid, signal.SIGINT)
    assert srv.wait_exit() == 0
    wait_for(lambda: gone(pid), f"valkey-server {pid} to be stopped")
    assert not srv.lines_with("died unexpectedly")


def test_the_server_keeps_its_data_and_url_across_a_restart_under_the_user_data_dir(start_server, tmp_path):
    """`lessor server` with no dir: the user data dir (here a temp $XDG_DATA_HOME, as for every test),
    the same socket URL and TCP port after a stop and a start, and the run submitted before is there."""
    import json as json_

    import redis

    xdg = os.environ["XDG_DATA_HOME"]
    assert xdg.startswith(tempfile.gettempdir())   # conftest: never the user's real data dir
    first = start_server()
    assert first.data_dir == os.path.join(xdg, "lessor", "server") and "(kept" in "\n".join(first.stdout)
    env = {k: v for k, v in os.environ.items() if k != "LESSOR_REDIS_URL"} | {"LESSOR_REDIS_URL": first.url}
    submitted = subprocess.run([*lessor_command(), "submit", "square", "--inputs", '{"x": 3}', "--json"], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    run = json_.loads(submitted.stdout)["run"]
    tcp = next(line for line in first.stdout if "tcp: " in line).split("tcp: ")[1].split()[0]
    # A second server on the same dir is refused, naming the one that runs.
    twice = subprocess.run([*lessor_command(), "server"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert twice.returncode == 3 and "already runs on" in twice.stderr and first.url in twice.stderr
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit() == 0

    second = start_server()
    assert second.url == first.url and second.data_dir == first.data_dir
    assert next(line for line in second.stdout if "tcp: " in line).split("tcp: ")[1].split()[0] == tcp
    shown = subprocess.run([*lessor_command(), "run", "show", run, "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and json_.loads(shown.stdout)["run"] == run, shown.stderr
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait_exit() == 0

    # --ephemeral: a temp dir, removed on exit.
    third = start_server("--ephemeral")
    assert third.url != first.url and not third.data_dir.startswith(xdg)
    with redis.Redis.from_url(third.url) as client:
        assert client.dbsize() == 0
    third.proc.send_signal(signal.SIGTERM)
    assert third.wait_exit() == 0
    assert not os.path.exists(third.data_dir)


def test_a_server_started_from_a_short_lived_thread_outlives_that_thread():
    """PR_SET_PDEATHSIG fires when the forking *thread* exits: a node restarted through
    anyio.to_thread was SIGKILLed when the pool thread idled out, and the next test found
    it dead. spawn_child forks off the main thread from a thread that lives as long as we do."""
    from lessor.server import EmbeddedServer

    server = EmbeddedServer()
    try:
        starter = threading.Thread(target=server.start)
        starter.start()
        starter.join()                  # the thread that asked for the fork has exited
        assert server.wait(timeout=2.0) is None, f"the server died with its starting thread: {server.poll()}"
        assert server.running
    finally:
        server.stop()
