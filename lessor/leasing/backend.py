"""The connection to the server: Redis client, partition count, scripts, key names.

``open_backend(url)`` yields a ready Backend. With no URL (and no
``LESSOR_REDIS_URL``) it starts the embedded server and stops it on exit.
The partition count is stored in the server the first time and read back by
every later client, so processes can never disagree about where a run lives.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import anyio
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import AskError, ClusterError, MovedError, NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lessor.core.ids import DEFAULT_PARTITIONS, KEY_ROOT, Keys, partition_of, partition_tag
from lessor.errors import ServerError, ServerRefused, StoreUnavailable
from lessor.leasing.durability import Durability
from lessor.leasing.outage import Outage, is_transient
from lessor.leasing.scripts import ClockMode, Function, Scripts, is_function_missing
from lessor.leasing.urls import is_cluster, make_client, redact, resolve_url

CONFIG_KEY = f"{KEY_ROOT}:config"
#: CONFIG_KEY's field saying every run lives on its root action's hash (laid out so, or migrated:
#: leasing/migrate.py), so `lessor doctor` need not scan for old-layout runs.
RUNS_ON_ROOT = "runs_on_root"
# A cluster's default: at least 8 partitions per primary for up to 6 primaries, so data and
# load can spread as the cluster grows (pick P >= 8 x the primaries you may ever run).
CLUSTER_PARTITIONS = 48
MIN_VERSIONS = {"redis": (7, 0), "valkey": (7, 2)}


@dataclass
class Backend:
    """Everything a lessor component needs to talk to the server."""

    redis: aioredis.Redis
    url: str
    partitions: int
    clock: ClockMode = ClockMode.SERVER
    durability: Durability = field(default_factory=Durability)
    placement: str = "spread"
    scripts: Scripts = field(init=False)

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.redis, self.clock)
        self.durability = Durability.parse(self.durability)
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._refreshing: anyio.Lock | None = None
        self.url = redact(self.url)  # what every message shows: never a password

    async def call(self, name: str, keys: list, args: list, *, durable: bool = True,
                   durability: Durability | None = None) -> Any:
        """Run lessor script ``name``; with ``durable`` (the default), wait for this backend's durability
        (or ``durability``, for this call: a namespace's ``run.durability`` setting at submit).

        One round trip either way: the script and its WAIT/WAITAOF go in one
        pipeline, on one connection. Raises StoreUnavailable for a transient
        failure (the call may or may not have run: repeat it), NotDurable when
        it ran but the durability asked for was not confirmed, and
        ServerRefused for an answer no retry can change (a bad argument, a
        missing ACL permission).
        """
        try:
            mode = durability or self.durability
            wait = durable and mode.waits
            if not wait and not self.cluster:
                return await getattr(self.scripts, name)(keys=keys, args=args)
            return await self._call_on_node(name, keys, args, wait, mode)
        except ResponseError as exc:
            if is_transient(exc):
                raise StoreUnavailable(f"{name}: the server at {self.url} cannot serve now ({exc}); retry") from exc
            raise ServerRefused(f"the server refused {name}: {exc}") from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"{name}: the server at {self.url} is unreachable "
                                   f"({type(exc).__name__}: {exc}); retry") from exc
        except (ClusterError, RedisClusterException, AttributeError, RuntimeError) as exc:  # see is_transient
            if not is_transient(exc):
                raise
            raise StoreUnavailable(f"{name}: the cluster at {self.url} cannot serve now "
                                   f"({type(exc).__name__}: {exc}); retry") from exc

    async def _call_on_node(self, name: str, keys: list, args: list, wait: bool,
                            mode: Durability | None = None) -> Any:
        """The script, and with ``wait`` its WAIT/WAITAOF, in one pipeline on the node serving ``keys[0]``.

        On a cluster every script goes this way, so that an ASK is never followed. ASK means
        the partition's slot is migrating and its keys are split between two nodes: a script
        on either would see half a partition. ``keys[0]``, the partition prefix, is never a key
        itself, so the source answers every script of a migrating slot with ASK before running
        any of it; the call fails as StoreUnavailable (callers retry) until SETSLOT NODE ends the
        migration and MOVED sends it to the new owner. (redis-py 8.1's asyncio cluster client
        follows ASK by sending ASKING and the command on two pooled connections.)
        """
        mode = mode or self.durability
        script = getattr(self.scripts, name)
        client = self.client_for(keys[0])
        reply: Any = None
        for _ in range(3):  # again only after loading a missing script or learning where a slot moved
            pipe = client.pipeline(transaction=False)
            if isinstance(script, Function):
                pipe.fcall(script.name, len(keys), *keys, *args)
            else:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if wait:
                pipe.execute_command(*mode.wait_command())
            try:
                reply, *answer = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, OSError):
                await self._forget_node(keys[0])
                raise
            if isinstance(reply, AskError):
                raise StoreUnavailable(f"{name}: the slot of {keys[0]!r} is migrating to "
                                       f"{reply.host}:{reply.port}; retry once the migration ends")
            if isinstance(reply, MovedError) and self.cluster:
                await self._forget_node(keys[0])  # the slot moved (failover, migration): learn where
                client = self.client_for(keys[0])
                continue
            if isinstance(reply, NoScriptError):
                await client.script_load(script.script)
                continue
            if is_function_missing(reply):   # a restart without it, FUNCTION FLUSH, a new node
                await script.library.load(client)
                continue
            if isinstance(reply, Exception):
                raise reply
            if wait and isinstance(answer[0], Exception):
                raise ServerRefused(f"{name} was applied, but the server refused "
                                    f"{mode.wait_command()[0]} ({answer[0]}): durability "
                                    f"{mode} needs Redis >= 7.2 or Valkey >= 7.2 with appendonly yes")
            if wait:
                mode.check(answer[0], name, reply)
            return reply
        if isinstance(reply, MovedError):
            raise StoreUnavailable(f"{name}: the slot of {keys[0]!r} keeps moving ({reply}); retry")
        raise ServerRefused(f"the server at {self.url} keeps losing script {name} (NOSCRIPT or Function not found after loading it)")

    def keys(self, partition: int) -> Keys:
        return Keys(partition, tag=partition_tag(partition, self.partitions, self.placement))

    def keys_for_run(self, namespace: str, run_id: str) -> Keys:
        return self.keys(partition_of(namespace, run_id, self.partitions))

    def keys_for_ref(self, ref: str) -> Keys:
        ns_project, ns_domain, run_id = ref.split("/")[:3]
        return self.keys_for_run(f"{ns_project}/{ns_domain}", run_id)

    def all_keys(self) -> list[Keys]:
        return [self.keys(p) for p in range(self.partitions)]

    @property
    def cluster(self) -> bool:
        """True on a Redis / Valkey Cluster (one client per primary behind one object)."""
        return is_cluster(self.redis)

    async def _forget_node(self, key: str) -> None:
        """On a cluster: drop the per-node client serving ``key`` and refresh the slot map (once at a time)."""
        if not self.cluster:
            return
        client = self._node_clients.pop(self.redis.get_node_from_key(key).name, None)
        if client is not None:
            await client.aclose()
        if self._refreshing is None:
            self._refreshing = anyio.Lock()
        if self._refreshing.locked():  # another call is refreshing it right now: that will do
            return
        async with self._refreshing:
            await self.redis.nodes_manager.initialize()

    async def aclose(self) -> None:
        """Close the client and any per-node clients (cluster durability waits)."""
        clients = list(self._node_clients.values())
        self._node_clients.clear()
        for client in clients:
            await client.aclose()
        await self.redis.aclose()

    def client_for(self, key: str) -> aioredis.Redis:
        """A plain client on the node serving ``key`` (the backend's own client when not a cluster).

        WAIT and WAITAOF have no key, so on a cluster they must go down the very
        connection of the node that took the write.
        """
        if not self.cluster:
            return self.redis
        node = self.redis.get_node_from_key(key)
        client = self._node_clients.get(node.name)
        if client is None:
            kwargs = {k: v for k, v in self.redis.connection_kwargs.items()
                      if k in ("username", "password", "ssl", "ssl_ca_certs", "ssl_ca_data", "ssl_cert_reqs",
                               "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")}
            if self.redis.connection_kwargs.get("connection_class") is SSLConnection:
                kwargs["ssl"] = True  # rediss+cluster: the durability wait goes over TLS too
            client = aioredis.Redis(host=node.host, port=node.port, decode_responses=False,
                                    socket_connect_timeout=5, socket_timeout=30, **kwargs)
            self._node_clients[node.name] = client
        return client


def settings_keys(backend: "Backend") -> Keys:
    """The partition that holds every settings scope: partition 0.

    Settings are global, not per namespace, so they need one fixed home. One partition
    for all scopes means a namespace's three scopes (org, domain, project) share one hash
    tag, so they can be read in one round trip and each scope's version check and write
    are one script call on one Cluster slot. Partition 0 exists for every partition
    count. Settings are few, small and rarely written, so the partition they add to
    gains no hot spot.
    """
    return backend.keys(0)


def make_redis(url: str, **kwargs) -> aioredis.Redis:
    """A redis-py asyncio client for any lessor URL (see leasing/urls.py)."""
    return make_client(url, **kwargs)


async def check_server(redis: aioredis.Redis, url: str) -> None:
    """Raise ServerError with one clear line if the server is unreachable or too old."""
    url = redact(url)
    try:
        if is_cluster(redis):
            await redis.initialize()
            info = await redis.execute_command("INFO", "server", target_nodes=redis.get_default_node())
        else:
            info = await redis.info("server")
        if not is_cluster(redis) and (await redis.info("cluster")).get("cluster_enabled") == 1:
            raise ServerError(f"{url} is a Redis Cluster node: use redis+cluster://host:port[,host:port] "
                              "so every partition reaches the node that serves it")
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise ServerError(
            f"cannot reach the server at {url}: {redact(str(exc)).rstrip('.')}. Start one with `lessor server` "
            "and export the LESSOR_REDIS_URL it prints"
        ) from None
    except ResponseError as exc:
        raise ServerError(f"the server at {url} refused INFO ({exc}): lessor needs +info (see the README's "
                          "minimal ACL)") from None
    flavour = "valkey" if "valkey_version" in info else "redis"
    version_text = str(info.get("valkey_version") or info.get("redis_version") or "0")
    version = tuple(int(x) for x in version_text.split(".")[:2])
    if version < MIN_VERSIONS[flavour]:
        need = ".".join(map(str, MIN_VERSIONS[flavour]))
        raise ServerError(f"{flavour} {version_text} at {url} is too old: lessor needs {flavour} >= {need}")


async def warn_durability_limits(redis: aioredis.Redis, durability: Durability, url: str) -> None:
    """Log what the server's persistence settings make of ``fsync`` durability (nothing otherwise)."""
    if not durability.fsync or is_cluster(redis):
        return
    try:
        reply = await redis.config_get("appendfsync")
        policy = reply.get("appendfsync") or reply.get(b"appendfsync") or b""
        policy = policy.decode() if isinstance(policy, bytes) else policy
        flavour = "valkey" if "valkey_version" in await redis.info("server") else "redis"
    except ResponseError:  # no +config permission: nothing to say
        return
    log = logging.getLogger("lessor.backend")
    if policy == "no":
        log.warning("%s has appendfsync no: it never confirms an fsync, so every write will raise "
                    "NotDurable under durability %s; set appendfsync everysec or always", redact(url), durability)
    elif policy == "everysec" and flavour == "valkey":
        # Measured on Valkey 8.1: WAITAOF answers before the fsync under everysec (Redis >= 8.0 fixed it).
        log.warning("%s is Valkey with appendfsync everysec: it confirms WAITAOF before the fsync, so "
                    "durability %s holds against a server crash but not a machine crash; use appendfsync "
                    "always for that", redact(url), durability)


async def read_layout(redis: aioredis.Redis, wanted: int | None) -> tuple[int, str]:
    """(partition count, placement) stored on the server; stores ``wanted`` (or the default) if none is.

    Reads first: on a read-only replica an existing layout is read without any write.
    Data from before placement existed reads as ``legacy`` (``{pN}`` tags).
    """
    stored, placement = await redis.hmget(CONFIG_KEY, "partitions", "placement")
    if stored is None:
        default = CLUSTER_PARTITIONS if is_cluster(redis) else DEFAULT_PARTITIONS
        try:
            # Placement first: `partitions` is what marks a layout as written, so a process that
            # reads between the two writes must find the placement already there. The other way
            # round it read a count without a placement, took the server for a legacy one, and
            # used {pN} keys while the process laying it out used the spread tags: a submit and
            # a worker started together on a fresh server under load never met (tests/test_layout.py).
            await redis.hsetnx(CONFIG_KEY, RUNS_ON_ROOT, "1")   # a fresh server holds no old-layout runs
            await redis.hsetnx(CONFIG_KEY, "placement", "spread")
            await redis.hsetnx(CONFIG_KEY, "partitions", wanted or default)
        except ResponseError as exc:
            if "read only" in str(exc).lower():
                raise ServerError("this server is a read-only replica and holds no lessor data yet: point "
                                  "writers (submit, worker, reaper) at the primary") from None
            raise
        stored, placement = await redis.hmget(CONFIG_KEY, "partitions", "placement")
    stored = int(stored)
    if wanted is not None and wanted != stored:
        raise ServerError(
            f"this server's lessor data uses {stored} partitions, not {wanted}: drop the "
            "--partitions option (or use a fresh server)"
        )
    return stored, (placement or b"legacy").decode()


async def read_partitions(redis: aioredis.Redis, wanted: int | None) -> int:
    """The partition count stored on the server (see ``read_layout``)."""
    return (await read_layout(redis, wanted))[0]


@contextlib.asynccontextmanager
async def open_backend(
    url: str | None = None,
    *,
    partitions: int | None = None,
    clock: ClockMode = ClockMode.SERVER,
    appendfsync: str = "everysec",
    max_connections: int | None = None,
    durability: str | Durability = "memory",
    wait_for_server: bool = False,
) -> AsyncIterator[Backend]:
    """Yield a Backend on ``url`` (or the embedded server, started and stopped here).

    ``durability``: when writes count as acknowledged (see leasing/durability.py):
    ``memory`` (default), ``fsync``, ``replicas:N`` or ``fsync+replicas:N``.
    ``wait_for_server``: a server that cannot be reached yet is waited for (capped
    backoff, one log line) instead of raising: long-running processes (worker,
    reaper) then start before their server does, as they outlive it later.
    """
    durability = Durability.parse(durability)
    url = resolve_url(url)
    server = None
    if url is None:
        from lessor.server import EmbeddedServer

        server = EmbeddedServer(appendfsync=appendfsync).start()
        url = server.url
    redis = make_redis(url, max_connections=max_connections)
    backend = None
    try:
        outage = Outage("startup", url)
        while True:
            try:
                await check_server(redis, url)
                outage.ok()
                break
            except ServerError as exc:
                if not (wait_for_server and str(exc).startswith("cannot reach")):
                    raise
                await anyio.sleep(outage.failed(exc) / 1000)
        await warn_durability_limits(redis, durability, url)
        count, placement = await read_layout(redis, partitions)
        backend = Backend(redis=redis, url=url, partitions=count, clock=clock, durability=durability,
                          placement=placement)
        yield backend
    finally:
        if backend is not None:
            await backend.aclose()
        else:
            await redis.aclose()
        if server is not None:
            server.stop()
