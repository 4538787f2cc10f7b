"""Options several ``lessor`` commands share, and the server URL they resolve to."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_NAMESPACE = "proj/development"   # lessor.scheduler.api's too
NS_HELP = f"project/domain the run lives in (default: {DEFAULT_NAMESPACE})"

#: How long a command waits for the server's first answer before it says so (exit 3).
PROBE_TIMEOUT_S = 3.0

#: Commands that wait for their server to come up (and outlive it): they are not probed.
_WAITING_COMMANDS = ("worker", "reaper")


def add_url(p: argparse.ArgumentParser) -> None:
    """--redis-url: the shared server (url_of resolves it)."""
    p.add_argument("--redis-url", metavar="URL",
                   help="the shared server (default: $LESSOR_REDIS_URL; start one with `lessor server`)")


def add_namespace(p: argparse.ArgumentParser) -> None:
    """--namespace: project/domain, default proj/development."""
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help=NS_HELP)


def add_durability(p: argparse.ArgumentParser) -> None:
    """--durability MODE, default $LESSOR_DURABILITY or memory (checked where it is used)."""
    p.add_argument("--durability", default=os.environ.get("LESSOR_DURABILITY", "memory"),
                   metavar="MODE",
                   help="when a write counts as acknowledged: memory (default), fsync (WAITAOF: on the "
                        "server's disk), replicas:N (WAIT: on N replicas) or fsync+replicas:N "
                        "(default: $LESSOR_DURABILITY or memory)")


def url_of(args: argparse.Namespace) -> str:
    """The shared server's URL for this command: --redis-url, else $LESSOR_REDIS_URL.

    Raises ServerError saying how to start one if neither is given, and (except
    for worker and reaper, which wait for their server) if something at the URL
    answers but is not Redis, or does not answer within PROBE_TIMEOUT_S.
    """
    from lessor.leasing.urls import shared_url

    url = shared_url(getattr(args, "redis_url", None), args.command)
    if args.command not in _WAITING_COMMANDS and not getattr(args, "_probed", False):
        probe_server(url)
        args._probed = True
    return url


def probe_server(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ServerError in one line if the service at ``url`` is silent or is not Redis/Valkey.

    One PING with a ``timeout_s`` connect and read timeout: without it a
    listener that never answers holds a command for the client's 30 s socket
    timeout (twice, with the retry), and a non-Redis service surfaces as a
    protocol traceback. A refused connection, a wrong password or any Redis
    error reply is left to the real connection, which already says it well. For
    Cluster and Sentinel URLs the first host that answers settles it.
    """
    import redis
    from redis.exceptions import InvalidResponse, RedisError, ResponseError, TimeoutError as RedisTimeout

    from lessor.errors import ServerError
    from lessor.leasing.urls import parse_multi, redact

    options: dict[str, Any] = dict(socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                   retry_on_timeout=False, retry=None)
    if "+" in url.split("://", 1)[0]:
        p = parse_multi(url)
        clients = [redis.Redis(host=h, port=port, username=p.username, password=p.password,
                               ssl=url.startswith("rediss"), **options) for h, port in p.hosts]
    else:
        clients = [redis.Redis.from_url(url, **options)]
    problem = None
    for client in clients:
        try:
            client.ping()
            return
        except (ResponseError, ConnectionRefusedError):
            return   # a Redis that refuses us (NOAUTH, NOPERM...): the real connection says why
        except RedisTimeout:
            problem = (f"no answer from {redact(url)} within {timeout_s:g} s: something listens there but "
                       "does not speak Redis (check the host and port, or the server is hung)")
        except InvalidResponse as exc:
            problem = (f"{redact(url)} is not a Redis or Valkey server (its reply: {exc}): check the host "
                       "and port")
        except (RedisError, OSError):
            return   # refused, unknown host...: the real connection says so
        finally:
            client.close()
    raise ServerError(problem)


def read_inputs(text: str) -> Any:
    """The value of ``--inputs``: JSON, ``@path`` (a JSON file) or ``@-`` (JSON on stdin).

    Raises ValueError naming what is wrong.
    """
    source = "--inputs"
    if text.startswith("@"):
        path = text[1:]
        source = "stdin" if path == "-" else path
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        except OSError as exc:
            raise ValueError(f"--inputs @{path}: cannot read it ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--inputs must be JSON ({source}: {exc}); e.g. --inputs '{{\"uri\": \"s3://b/k\"}}' "
                         "or --inputs @inputs.json") from None
