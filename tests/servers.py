"""Real-process harness for tests: replicated pairs, SIGSTOP/SIGCONT, SIGKILL and restart.

Every server is a real ``valkey-server`` (``lessor.server.find_server_binary()``)
started through ``lessor.server.EmbeddedServer``; nothing is mocked. Helpers take
an ``EmbeddedServer`` or a URL. Waiting is always polling with a generous
deadline (the test machine is small and shared): no sleeps for ordering, and
nothing here measures durations.

    from tests.servers import ReplicatedPair, master_replid, run_id

    with ReplicatedPair() as pair:
        before = master_replid(pair.replica)
        url = pair.promote_replica()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, Union

import redis

from lessor.server import EmbeddedServer, find_server_binary, free_port

T = TypeVar("T")
Target = Union[EmbeddedServer, str]

DEADLINE_S = 30.0  # generous: a loaded 2-core machine can stall a process for seconds


# --- talking to a server -------------------------------------------------------------------


def url_of(target: Target) -> str:
    return target.url if isinstance(target, EmbeddedServer) else target


def connect(target: Target, **kwargs) -> redis.Redis:
    """A redis-py client (str replies) on a server or URL. Close it, or use it as a context manager."""
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("socket_timeout", DEADLINE_S + 10)  # longer than any WAIT a test makes
    kwargs.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(url_of(target), **kwargs)


def command(target: Target, *args) -> object:
    """Run one command on a fresh connection and return its reply."""
    with connect(target) as client:
        return client.execute_command(*args)


def info(target: Target, section: str = "server") -> dict:
    """``INFO <section>`` as a dict (values parsed by redis-py)."""
    with connect(target) as client:
        return client.info(section)


def run_id(target: Target) -> str:
    """The server's ``run_id``: random at each process start, never changes while it runs."""
    return info(target, "server")["run_id"]


def process_id(target: Target) -> int:
    """The pid the server reports (``INFO server`` process_id)."""
    return int(info(target, "server")["process_id"])


def replication(target: Target) -> dict:
    """``INFO replication`` as a dict (role, master_replid, master_replid2, master_repl_offset, ...)."""
    return info(target, "replication")


def master_replid(target: Target) -> str:
    """The replication id of the history the server is on (a replica reports its primary's)."""
    return replication(target)["master_replid"]


def valkey_cli() -> str:
    """Path of the valkey-cli next to the server binary (redis-cli for a redis-server)."""
    server = Path(find_server_binary())
    return str(server.with_name(server.name.replace("-server", "-cli")))


def cli(target: EmbeddedServer, *args: str) -> str:
    """Run valkey-cli against the server's unix socket; its stdout."""
    proc = subprocess.run([valkey_cli(), "-s", target.socket_path, *args], capture_output=True, text=True,
                          timeout=DEADLINE_S, check=True)
    return proc.stdout


def wait_for(predicate: Callable[[], T], what: str, timeout_s: float = DEADLINE_S, interval_s: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming ``what``
    after ``timeout_s``. Connection errors while polling count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


def wait_aof_settled(target: Target, timeout_s: float = DEADLINE_S) -> None:
    """Wait until no AOF rewrite is running or scheduled on the server.

    A replica with AOF on rewrites its AOF after each full sync; until that is done
    it refuses to shut down ("Writing initial AOF, can't exit.") and *ignores* the
    SIGTERM, so a test ending right after a sync would wait for stop()'s fallback.
    """
    def settled() -> bool:
        p = info(target, "persistence")
        return not p["aof_rewrite_in_progress"] and not p["aof_rewrite_scheduled"]
    wait_for(settled, f"{url_of(target)} to finish its AOF rewrite", timeout_s)


def answers(target: Target) -> bool:
    """True when the server answers PING now."""
    try:
        with connect(target, socket_timeout=1) as client:
            return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError):
        return False


# --- processes -----------------------------------------------------------------------------


def sigstop(server: EmbeddedServer) -> None:
    """Freeze the server process (SIGSTOP): it answers nothing, its sockets stay open."""
    os.kill(_pid(server), signal.SIGSTOP)
    wait_for(lambda: _proc_state(server.pid) in ("T", "t"), f"pid {server.pid} to be stopped")


def sigcont(server: EmbeddedServer) -> None:
    """Resume a SIGSTOPped server."""
    os.kill(_pid(server), signal.SIGCONT)
    wait_for(lambda: _proc_state(server.pid) not in ("T", "t"), f"pid {server.pid} to run again")


@contextlib.contextmanager
def stopped(server: EmbeddedServer) -> Iterator[EmbeddedServer]:
    """SIGSTOP the server for the block; SIGCONT it on the way out, whatever happens."""
    sigstop(server)
    try:
        yield server
    finally:
        if server.running:
            sigcont(server)


def kill9(server: EmbeddedServer) -> None:
    """SIGKILL the server (no shutdown, no save) and reap it; its dir, port and AOF stay."""
    server.crash()


def restart(server: EmbeddedServer) -> EmbeddedServer:
    """Start a killed server again on the same dir, port and socket: it reloads its AOF (new run_id)."""
    return server.start()


def _pid(server: EmbeddedServer) -> int:
    if not server.running:
        raise AssertionError(f"server on {server.url} is not running")
    return server.pid


def _proc_state(pid: int) -> str:
    """The one-letter state of a process from /proc (R, S, T, Z, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# --- a replicated pair ---------------------------------------------------------------------


class ReplicatedPair:
    """Two valkey-server processes: ``primary`` and ``replica`` (``--replicaof 127.0.0.1 <primary port>``).

    ``start()`` (or ``with``) returns once the replica reports ``master_link_status:up``
    and has acknowledged a write (``barrier()``): the primary streams to it. Both run
    with AOF on (``appendfsync``) and ``repl-diskless-sync-delay 0`` so a (re)sync
    starts at once. ``__exit__`` resumes a stopped process and stops both.
    """

    def __init__(self, appendfsync: str = "everysec", extra_args: tuple[str, ...] = ()) -> None:
        common = ("--repl-diskless-sync-delay", "0", *extra_args)
        self.primary = EmbeddedServer(appendfsync=appendfsync, extra_args=common)
        self.replica = EmbeddedServer(
            appendfsync=appendfsync,
            extra_args=(*common, "--replicaof", "127.0.0.1", str(self.primary.port)))

    @property
    def servers(self) -> tuple[EmbeddedServer, EmbeddedServer]:
        return self.primary, self.replica

    def start(self) -> "ReplicatedPair":
        try:
            self.primary.start()
            self.replica.start()
            self.wait_link_up()
            self.barrier()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            if server.running and _proc_state(server.pid) in ("T", "t"):
                os.kill(server.pid, signal.SIGCONT)
            server.stop()

    def __enter__(self) -> "ReplicatedPair":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- replication state --

    def wait_link_up(self, replica: EmbeddedServer | None = None, timeout_s: float = DEADLINE_S) -> None:
        """Wait until ``replica`` (default: the pair's) reports master_link_status:up and has
        written its initial AOF (see ``wait_aof_settled``)."""
        replica = replica or self.replica
        wait_for(lambda: replication(replica).get("master_link_status") == "up",
                 f"{replica.url} to report master_link_status:up", timeout_s)
        wait_aof_settled(replica, timeout_s)

    def barrier(self, timeout_s: float = DEADLINE_S) -> None:
        """Return once the replica has acknowledged a write made now: ``PUBLISH`` (replicated,
        stores nothing) and ``WAIT 1`` on the same connection.

        ``master_link_status:up`` alone is not enough: after a full sync the primary
        holds the command stream in its own process until it reads the replica's first
        REPLCONF ACK, so a SIGSTOP of the replica or a SIGKILL of the primary just after
        "up" can lose writes that a lag within the socket buffers would not.
        """
        with connect(self.primary, socket_timeout=timeout_s + 10) as client:
            client.publish("__lessor_tests:barrier", "")
            acked = client.execute_command("WAIT", 1, int(timeout_s * 1000))
        if acked < 1:
            raise AssertionError(f"the replica did not acknowledge a write within {timeout_s:g} s")

    def wait_synced(self, timeout_s: float = DEADLINE_S) -> int:
        """Wait until the replica has applied everything the primary had when called; that offset.

        Compares offsets (``master_repl_offset`` of both). Not ``WAIT`` on a fresh
        connection: WAIT counts acknowledgements of *that connection's* last write,
        so on a connection that wrote nothing it returns at once, even with the
        replica SIGSTOPped.
        """
        target = replication(self.primary)["master_repl_offset"]
        wait_for(lambda: replication(self.replica)["master_repl_offset"] >= target,
                 f"the replica to reach the primary's offset {target}", timeout_s)
        return target

    # -- failover --

    def promote_replica(self) -> str:
        """``REPLICAOF NO ONE`` on the replica; returns its URL (it is now a primary)."""
        command(self.replica, "REPLICAOF", "NO", "ONE")
        wait_for(lambda: replication(self.replica)["role"] == "master", "the replica to report role:master")
        return self.replica.url

    def kill_primary(self) -> None:
        """SIGKILL the primary (its dir and AOF stay; ``restart(pair.primary)`` brings it back)."""
        kill9(self.primary)

    def demote_and_repromote(self, server: EmbeddedServer, to: EmbeddedServer | None = None) -> str:
        """Make the same running process a replica and then a primary again, without restarting it.

        ``to=None``: ``REPLICAOF`` a loopback port where nothing listens (it never
        syncs, its data stays); ``to=<server>``: ``REPLICAOF`` that server and wait
        for the link (it then holds that server's data). Then ``REPLICAOF NO ONE``.
        Returns the server's URL.
        """
        if to is None:
            command(server, "REPLICAOF", "127.0.0.1", str(free_port()))
            wait_for(lambda: replication(server)["role"] == "slave", f"{server.url} to report role:slave")
        else:
            command(server, "REPLICAOF", "127.0.0.1", str(to.port))
            self.wait_link_up(server)
        command(server, "REPLICAOF", "NO", "ONE")
        wait_for(lambda: replication(server)["role"] == "master", f"{server.url} to report role:master")
        return server.url

    # -- lag --

    def pause_replication(self) -> None:
        """SIGSTOP the replica: it stops reading the replication stream and acknowledging it.

        What the primary sends meanwhile waits in the kernel's socket buffers
        (several MB on loopback) and then in the primary's output buffer for the
        replica; only what is still in the primary's process when it dies is lost.
        """
        sigstop(self.replica)

    def resume_replication(self) -> None:
        """SIGCONT the replica."""
        sigcont(self.replica)

    @contextlib.contextmanager
    def replication_paused(self) -> Iterator["ReplicatedPair"]:
        """The replica SIGSTOPped for the block (SIGCONT on the way out, unless it was killed)."""
        with stopped(self.replica):
            yield self

    def unsent_bytes(self) -> int:
        """Bytes of the replication stream the primary holds in its own process for the replica,
        not yet written to the socket: ``omem`` of the replica's connection (CLIENT LIST TYPE
        replica), counted in 16 KiB blocks, so about 16 KiB even when nothing is pending."""
        with connect(self.primary) as client:
            replicas = client.client_list(_type="replica")
        return max((int(r["omem"]) for r in replicas), default=0)

    def write_until_unsent(self, client: redis.Redis, min_bytes: int = 2 << 20, value_bytes: int = 256 << 10,
                           prefix: str = "lag:") -> list[str]:
        """With the replication paused: SET ``prefix<n>`` (``value_bytes`` each) through ``client``, a
        connection to the primary, until at least ``min_bytes`` of the stream sit in the primary's
        process, past every socket buffer. Returns the keys written, in order; each SET was
        acknowledged. A SIGKILL of the primary now loses about the last ``min_bytes`` of them, and
        every write made after this returns, whatever the kernel still delivers to the replica."""
        value = "x" * value_bytes
        keys: list[str] = []
        limit = 2 * socket_buffer_bytes() + 4 * min_bytes
        while self.unsent_bytes() < min_bytes:
            if len(keys) * value_bytes > limit:
                raise AssertionError(f"wrote {len(keys) * value_bytes} bytes and the primary still holds less "
                                     f"than {min_bytes} for the replica: is the replication paused?")
            key = f"{prefix}{len(keys)}"
            assert client.set(key, value)
            keys.append(key)
        return keys


def socket_buffer_bytes() -> int:
    """The most loopback TCP can hold between two processes (max receive + max send buffer), from
    /proc/sys/net/ipv4/tcp_{r,w}mem: writes beyond this while a replica is stopped are still in the
    primary's process, so a SIGKILL of the primary loses them."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            total += int(f.read().split()[2])
    return total
