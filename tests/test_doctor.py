"""`lessor doctor` on real servers: it finds what is wrong and names it, and changes nothing."""

from __future__ import annotations

import pytest
import redis

from lessor.doctor import run_checks, script_commands
from lessor.server import EmbeddedServer

pytestmark = pytest.mark.anyio


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


async def test_a_healthy_server_passes_and_nothing_is_written():
    with EmbeddedServer() as server:
        checks = by_name(await run_checks(server.url))
        assert {c.status for c in checks.values()} == {"ok"}, checks
        assert redis.Redis(unix_socket_path=server.socket_path).dbsize() == 0


async def test_a_missing_acl_permission_is_named_before_any_write():
    with EmbeddedServer() as server:
        admin = redis.Redis(unix_socket_path=server.socket_path)
        admin.execute_command("ACL", "SETUSER", "worker", "on", ">pw", "~lessor:*", "+@all", "-zrem")
        checks = by_name(await run_checks(f"redis://worker:pw@127.0.0.1:{server.port}"))
        assert checks["acl"].status == "fail" and "zrem" in checks["acl"].detail
        assert "pw" not in str(checks)                        # the password is never shown


async def test_durability_fsync_on_a_server_that_never_fsyncs_is_a_failure():
    with EmbeddedServer(appendfsync="no") as server:
        checks = by_name(await run_checks(server.url, "fsync"))
        assert checks["persistence"].status == "fail" and "appendfsync no" in checks["persistence"].detail


def test_the_commands_checked_come_from_the_scripts_themselves():
    assert {"xadd", "hset", "zadd", "zpopmin", "info"} <= script_commands()
