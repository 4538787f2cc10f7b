"""Test fixtures: one real server for the session (embedded, or $LESSOR_TEST_REDIS_URL).

No fakes, no mocks: every test talks to a real Valkey/Redis and runs the real
Lua. Before each test the database is flushed (so with LESSOR_TEST_REDIS_URL,
point it at a server whose data you do not need). The suite reads only
LESSOR_TEST_REDIS_URL and removes LESSOR_REDIS_URL from its environment: a user's
everyday server is never used, let alone flushed.
"""

from __future__ import annotations

import os
import sys

import pytest
import redis

from lessor.leasing.backend import Backend, check_server, make_redis, read_partitions
from lessor.leasing.scripts import VIRTUAL_CLOCK_KEY, ClockMode
from lessor.server import EmbeddedServer

PARTITIONS = 4

# `from tests.servers import ...` (and tests.conftest, tests.app) must work under `.venv/bin/pytest`
# too, not only `python -m pytest`, which puts the current directory on sys.path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    # Never inherit the user's LESSOR_REDIS_URL. Every lessor entry point (lessor.connect(),
    # open_backend(), each `lessor` command and the subprocesses tests start) falls back to it,
    # so a test that means "a private embedded server" would otherwise write to, and the
    # `flushed` fixture FLUSHALL, the user's real server. The suite's server is named by
    # LESSOR_TEST_REDIS_URL only (see server_url); tests pass URLs explicitly.
    os.environ.pop("LESSOR_REDIS_URL", None)
    # `lessor server` keeps its data under the user data dir by default: point that (and the
    # subprocesses', which inherit it) at a temp dir, so no test writes into the real one.
    import tempfile

    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="lessor-test-xdg-")


@pytest.fixture(scope="session")
def server_url():
    """URL of the session's server: $LESSOR_TEST_REDIS_URL (flushed before each test), else an
    embedded one, stopped at the end. $LESSOR_REDIS_URL is never read (see pytest_configure)."""
    url = os.environ.get("LESSOR_TEST_REDIS_URL")
    if url:
        refuse_foreign_data(url)
        yield url
        return
    with EmbeddedServer() as server:
        yield server.url


TEST_MARK = "lessor-test:owned"


def refuse_foreign_data(url: str) -> None:
    """Stop the session before any FLUSHALL if the server holds data this suite did not create.

    The suite marks a server it flushed (TEST_MARK, kept across its own flushes
    by the `flushed` fixture); a server with other keys and no mark may be
    someone's real data, and is left alone.
    """
    client = redis.Redis.from_url(url)
    try:
        if client.dbsize() and not client.exists(TEST_MARK):
            pytest.exit(f"LESSOR_TEST_REDIS_URL={url} holds {client.dbsize()} keys this test suite did not "
                        f"create; refusing to FLUSHALL it. Point it at an empty server (or run "
                        f"`SET {TEST_MARK} 1` there to hand it to the suite)", returncode=3)
    finally:
        client.close()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def flushed(server_url):
    """The server, emptied before the test."""
    client = redis.Redis.from_url(server_url)
    client.flushall()
    client.set(TEST_MARK, 1)  # this server is the suite's now (refuse_foreign_data)
    client.close()
    return server_url


async def make_backend(url: str, clock: ClockMode = ClockMode.SERVER, **kwargs) -> Backend:
    client = make_redis(url, **kwargs)
    await check_server(client, url)
    partitions = await read_partitions(client, PARTITIONS)
    return Backend(redis=client, url=url, partitions=partitions, clock=clock)


@pytest.fixture
async def backend(flushed):
    """A Backend on the server clock."""
    b = await make_backend(flushed)
    yield b
    await b.redis.aclose()


class VirtualClock:
    """The server-side virtual clock the scripts read in ClockMode.VIRTUAL."""

    def __init__(self, backend: Backend, start_ms: int = 1_000_000) -> None:
        self.backend = backend
        self.now_ms = start_ms

    async def set(self, ms: int) -> None:
        self.now_ms = ms
        await self.backend.redis.set(VIRTUAL_CLOCK_KEY, ms)

    async def advance(self, delta_ms: int) -> None:
        await self.set(self.now_ms + delta_ms)


@pytest.fixture
async def vbackend(flushed):
    """A Backend whose scripts read the virtual clock (starts at 1,000,000 ms)."""
    b = await make_backend(flushed, clock=ClockMode.VIRTUAL)
    b.vclock = VirtualClock(b)
    await b.vclock.set(1_000_000)
    yield b
    await b.redis.aclose()
