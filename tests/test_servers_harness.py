"""Facts about the real server that later code relies on, proven against the real binaries.

Through the tests/servers.py harness: replication ids across promotion, demotion
and restart; what replication lag loses; what WAIT and WAITAOF answer. Each test
starts its own processes (never the session's server) and waits by polling.
"""

from __future__ import annotations

import pytest

from lessor.server import EmbeddedServer
from tests.servers import (
    ReplicatedPair,
    answers,
    cli,
    command,
    connect,
    kill9,
    master_replid,
    replication,
    restart,
    run_id,
    wait_for,
)


def wait_link_down(server: EmbeddedServer) -> None:
    # A replica marks its link down when it reads EOF, after everything the dead primary's
    # kernel still delivered: what it has applied by then is all it will ever get.
    wait_for(lambda: replication(server)["master_link_status"] == "down", f"{server.url} to see its link down")


def test_a_replica_reports_its_primarys_replid_and_a_new_one_once_promoted():  # (a)
    with ReplicatedPair() as pair:
        command(pair.primary, "SET", "x", "1")
        pair.wait_synced()
        history = master_replid(pair.primary)
        assert master_replid(pair.replica) == history
        replica_run = run_id(pair.replica)

        pair.kill_primary()
        url = pair.promote_replica()

        promoted = replication(url)
        assert promoted["role"] == "master"
        assert promoted["master_replid"] != history
        assert promoted["master_replid2"] == history  # the old history, kept for partial resyncs
        assert run_id(url) == replica_run
        assert command(url, "GET", "x") == "1"


def test_demoting_and_repromoting_the_same_process_changes_replid_not_run_id():  # (b)
    with ReplicatedPair() as pair:
        primary = pair.primary
        command(primary, "SET", "x", "1")
        pid, run, history = primary.pid, run_id(primary), master_replid(primary)

        pair.demote_and_repromote(primary)  # REPLICAOF <nothing listens>, then REPLICAOF NO ONE

        after = replication(primary)
        assert after["role"] == "master" and primary.pid == pid
        assert run_id(primary) == run
        assert after["master_replid"] != history and after["master_replid2"] == history
        assert command(primary, "GET", "x") == "1"
        # Its replica reconnects and follows the new history (a partial resync).
        wait_for(lambda: master_replid(pair.replica) == after["master_replid"], "the replica to follow")


def test_demoting_to_another_primary_takes_its_data_and_repromoting_gives_a_third_replid():
    with ReplicatedPair() as pair:
        command(pair.primary, "SET", "who", "primary")
        pair.wait_synced()
        pair.promote_replica()  # two primaries now, one history each
        command(pair.replica, "SET", "who", "replica")
        run, ids = run_id(pair.primary), {master_replid(pair.primary), master_replid(pair.replica)}

        pair.demote_and_repromote(pair.primary, to=pair.replica)

        assert command(pair.primary, "GET", "who") == "replica"
        assert run_id(pair.primary) == run
        assert master_replid(pair.primary) not in ids


def test_a_restart_changes_run_id_and_replid_and_reloads_the_aof():  # (c)
    with EmbeddedServer(appendfsync="always") as server:
        with connect(server) as client:
            client.set("x", "1")
            assert client.execute_command("WAITAOF", 1, 0, 10_000) == [1, 0]
        run, history = run_id(server), master_replid(server)

        kill9(server)
        assert not answers(server)
        restart(server)

        assert run_id(server) != run
        assert master_replid(server) != history  # a restarted primary starts a new history too
        assert command(server, "GET", "x") == "1"
        assert cli(server, "GET", "x").strip() == "1"  # the valkey-cli next to the binary agrees


def test_writes_acknowledged_while_the_replica_is_stopped_are_lost_by_its_promotion():  # (d)
    with ReplicatedPair() as pair, connect(pair.primary) as writer:
        writer.set("confirmed", "1")
        assert writer.execute_command("WAIT", 1, 10_000) == 1
        with pair.replication_paused():
            keys = pair.write_until_unsent(writer)  # past the socket buffers, into the primary's process
            assert writer.set("last", "acknowledged")
            offset = writer.info("replication")["master_repl_offset"]
            pair.kill_primary()
        wait_link_down(pair.replica)
        assert replication(pair.replica)["master_repl_offset"] < offset  # the replica never got it all

        url = pair.promote_replica()

        with connect(url) as promoted:
            assert promoted.get("confirmed") == "1"
            assert promoted.get("last") is None
            present = sum(promoted.exists(k) for k in keys)
        assert present < len(keys)  # acknowledged, replicated partly: the tail is gone


def test_a_lag_within_the_socket_buffers_survives_a_sigkill_of_the_primary():
    # The other side of (d): SIGSTOP alone does not lose small writes. The dead primary's
    # kernel still delivers what it had accepted, and the resumed replica applies it.
    with ReplicatedPair() as pair, connect(pair.primary) as writer:
        with pair.replication_paused():
            for i in range(100):
                writer.set(f"small:{i}", i)
            assert writer.execute_command("WAIT", 1, 100) == 0  # not acknowledged by the replica
            writer.ping()  # the event-loop turn that wrote them to the replica's socket is over
            pair.kill_primary()
        wait_link_down(pair.replica)

        url = pair.promote_replica()

        with connect(url) as promoted:
            assert sum(promoted.exists(f"small:{i}") for i in range(100)) == 100


def test_wait_returns_0_while_the_replica_is_stopped():  # (e)
    with ReplicatedPair() as pair, connect(pair.primary) as writer:
        writer.set("k", "1")
        assert writer.execute_command("WAIT", 1, 10_000) == 1
        with pair.replication_paused():
            writer.set("k", "2")
            assert writer.execute_command("WAIT", 1, 200) == 0
            # WAIT counts acks of the offset of *this connection's* last write: on a
            # connection that wrote nothing it answers at once with every replica.
            assert command(pair.primary, "WAIT", 1, 200) == 1
        assert writer.execute_command("WAIT", 1, 10_000) == 1  # resumed, it catches up


@pytest.mark.parametrize("appendfsync, local", [("always", 1), ("everysec", 1), ("no", 0)])
def test_waitaof_local_is_1_when_the_server_fsyncs_and_0_with_appendfsync_no(appendfsync, local):  # (f)
    with EmbeddedServer(appendfsync=appendfsync) as server, connect(server) as writer:
        writer.set("k", "1")
        timeout_ms = 10_000 if local else 300  # with "no" it can only time out
        assert writer.execute_command("WAITAOF", 1, 0, timeout_ms) == [local, 0]
        # Same per-connection rule as WAIT: a connection that wrote nothing gets [1, 0] at once.
        assert command(server, "WAITAOF", 1, 0, 300) == [1, 0]
