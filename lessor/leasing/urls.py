"""Server URLs: one function turns any supported URL into a redis-py asyncio client.

=====================================================  =========================================
``redis://[user:pass@]host:port[/db]``, ``rediss://``  one Redis >= 7.0 / Valkey >= 7.2
``unix:///path/to.sock``                               the same, on a unix socket
``redis+cluster://[user:pass@]h:p[,h:p...]``           Redis / Valkey Cluster (``rediss+cluster``: TLS)
``redis+sentinel://[user:pass@]h:p[,h:p...]/service``  the primary Sentinel names ``service``
=====================================================  =========================================

Nothing above ``leasing/backend.py`` knows which one is in use. Passwords are
never shown: ``redact(url)`` is what every message and log line prints.
``resolve_url`` picks the URL (``--redis-url``, else $LESSOR_REDIS_URL, else
None: the embedded server); ``shared_url`` is the same for commands that must
share a server with other processes, so it never answers None.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from lessor.errors import ConfigError, ServerError

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
URL_ENV = "LESSOR_REDIS_URL"


def resolve_url(url: str | None) -> str | None:
    """The server URL to use: ``url``, else $LESSOR_REDIS_URL, else None (the embedded server)."""
    return url or os.environ.get(URL_ENV) or None


def shared_url(url: str | None, command: str) -> str:
    """The URL of the shared server ``lessor <command>`` must use: ``url``, else $LESSOR_REDIS_URL.

    A private embedded server would vanish with the command (and a submitted
    run with it), so commands that talk to other processes need a real one.
    Raises ServerError saying how to start one when neither is given.
    """
    resolved = resolve_url(url)
    if resolved is None:
        raise ServerError(
            f"`lessor {command}` needs the shared server: start one with `lessor server` and export "
            f"the {URL_ENV} it prints (or pass --redis-url)")
    return resolved


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(//[^/@:]*:)[^@/]*@", r"\1***@", url or "")


@dataclass(frozen=True)
class ParsedUrl:
    """The parts of a multi-host URL (cluster, sentinel)."""

    scheme: str
    hosts: list[tuple[str, int]]
    username: str | None
    password: str | None
    path: str
    query: dict


def parse_multi(url: str) -> ParsedUrl:
    """Split ``scheme://[user:pass@]h:p[,h:p]/path?query`` (ConfigError saying what is wrong)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        username, _, password = auth.partition(":")
        username, password = unquote(username) or None, unquote(password) or None
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{redact(url)}: each host must be host:port, got {item!r}")
        hosts.append((host.strip("[]"), int(port)))
    return ParsedUrl(parts.scheme, hosts, username, password, parts.path.strip("/"),
                     {k: v[-1] for k, v in parse_qs(parts.query).items()})


def make_client(url: str, **kwargs: Any) -> aioredis.Redis | RedisCluster:
    """A redis-py asyncio client for ``url`` (bytes replies, sane timeouts).

    A command that fails on a broken connection is retried once on a fresh one:
    after a server restart every pooled connection is dead, and the first use of
    each must not surface as an error. Every lessor script is safe to repeat.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES:
        raise ConfigError(f"unsupported server URL {redact(url)}: use one of "
                          + ", ".join(f"{s}://" for s in SCHEMES))
    common = dict(decode_responses=False, socket_connect_timeout=5, socket_timeout=30)
    if scheme.endswith("+cluster"):
        p = parse_multi(url)
        # Per node, like one server's pool: unbounded. redis-py's cluster default (100 per node) is
        # too few for lessor's blocking reads (one per partition per follower and per idle worker), and
        # running out makes redis-py drop and re-learn every connection of the node.
        kwargs["max_connections"] = kwargs.get("max_connections") or 2 ** 31
        # A MOVED only patches the slot map (reinitialize_steps=0): redis-py's default re-learns the
        # whole topology every 5th MOVED by closing every connection, under every blocking read in
        # flight, and on Python 3.11 a read cancelled while it resends (asyncio.wait_for, gh-86296)
        # then runs to its full timeout. A slot migration sends each follower one MOVED per moved slot.
        kwargs.setdefault("reinitialize_steps", 0)
        return RedisCluster(startup_nodes=[ClusterNode(h, port) for h, port in p.hosts], username=p.username,
                            password=p.password, ssl=scheme.startswith("rediss"), **common, **kwargs)
    if scheme.endswith("+sentinel"):
        p = parse_multi(url)
        if not p.path:
            raise ConfigError(f"{redact(url)}: name the service, e.g. redis+sentinel://h:26379/mymaster")
        sentinel = Sentinel(p.hosts, sentinel_kwargs={"password": p.query.get("sentinel_password")},
                            username=p.username, password=p.password, ssl=scheme.startswith("rediss"), **common)
        return sentinel.master_for(p.path, **kwargs)
    retry = Retry(NoBackoff(), 1)
    return aioredis.from_url(url, retry=retry, retry_on_error=[RedisConnectionError, ConnectionResetError],
                             **common, **kwargs)


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client."""
    return isinstance(client, RedisCluster)
