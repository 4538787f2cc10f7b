"""Read-only commands work against a read replica: nothing writes before it reads."""

from __future__ import annotations

import json

from tests.servers import ReplicatedPair, command
from tests.test_cli import lessor


def test_runs_show_events_and_replay_work_on_a_read_replica():
    with ReplicatedPair() as pair:
        primary, replica = pair.primary, pair.replica
        submitted = json.loads(lessor("submit", "t", "--json", url=primary.url, check=True).stdout)
        pair.wait_synced()
        assert command(replica, "ROLE")[0] in ("slave", b"slave", "replica", b"replica")
        runs = json.loads(lessor("runs", "--json", url=replica.url, check=True).stdout)
        assert [r["run"] for r in runs["runs"]] == [submitted["run"]]
        shown = lessor("run", "show", submitted["run"], "--json", url=replica.url, check=True)
        assert json.loads(shown.stdout)["phase"] == "running"
        events = [json.loads(line) for line in lessor("events", "--json", url=replica.url, check=True).stdout.splitlines()]
        assert [e["type"] for e in events] == ["run_created", "action_created"]
        assert lessor("replay", "--verify", url=replica.url).returncode == 0
        refused = lessor("submit", "t", url=replica.url)        # a write says what is wrong, in one line
        assert refused.returncode == 3 and "Traceback" not in refused.stderr
        assert "read only replica" in refused.stderr.lower().replace("-", " ")


def test_an_empty_replica_says_so_instead_of_a_traceback():
    with ReplicatedPair() as pair:
        refused = lessor("runs", url=pair.replica.url)
        assert refused.returncode == 3 and "Traceback" not in refused.stderr
        assert "read-only replica" in refused.stderr and "primary" in refused.stderr
