"""Retention against the real server: finished runs retired, running ones never touched."""

from __future__ import annotations

import json

import anyio
import pytest

from lessor.core import events as ev
from lessor.errors import ConfigError
from lessor.leasing.client import LeaseClient
from lessor.leasing.replay import verify
from lessor.leasing.retention import RetentionPolicy, parse_duration, policies, retire_once, set_policy
from lessor.scheduler.query import get_action
from lessor.scheduler.submit import submit_run
from tests.test_leasing import CFG, NS, events_of

pytestmark = pytest.mark.anyio


def test_durations_and_policies_are_checked():
    assert parse_duration("7d") == 7 * 86_400_000 and parse_duration("500ms") == 500 and parse_duration("45") == 45_000
    for bad in ("", "7 days", "-1d", "1w"):
        with pytest.raises(ConfigError, match="duration must look like"):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="keep_runs must be an integer >= 0"):
        RetentionPolicy(keep_runs=-2)
    with pytest.raises(ConfigError, match="keep_ms must be"):
        RetentionPolicy(keep_ms=1.5)


async def finish(backend, n: int, worker: str = "w1") -> list[str]:
    """Submit and complete ``n`` single-action runs; their run ids, oldest first."""
    client = LeaseClient(backend, worker, CFG)
    ids = []
    for _ in range(n):
        run = await submit_run(backend, "t", namespace=NS)
        (lease,) = await client.acquire(NS, "default", 1)
        await client.complete(lease, b"\xc0")
        ids.append(run.run_id)
        await backend.vclock.advance(10)
    return ids


async def exists(backend, run_id: str) -> bool:
    ref = f"{NS}/{run_id}"
    return bool(await backend.redis.exists(backend.keys_for_ref(ref + "/a0").run_root(ref)))


async def test_keep_runs_retires_the_oldest_finished_runs_and_the_log_still_replays(vbackend):
    ids = await finish(vbackend, 12)
    keep = vbackend.partitions                      # a namespace keeps keep_runs / partitions in each
    await set_policy(vbackend, NS, RetentionPolicy(keep_runs=keep))
    assert (await policies(vbackend))[NS] == RetentionPolicy(keep_runs=keep)
    result = await retire_once(vbackend)
    newest = {}                                     # partition -> its newest finished run
    for r in ids:
        newest[vbackend.keys_for_run(NS, r).partition] = r
    assert [await exists(vbackend, r) for r in ids] == [r in newest.values() for r in ids]
    assert (result.retired, result.still_live) == (len(ids) - len(newest), 0)
    retired = await events_of(vbackend, ev.RunRetired)
    assert sorted(e.run for e in retired) == sorted(set(ids) - set(newest.values()))
    assert all(e.actions == 1 and e.reason.startswith("retention: finished") for e in retired)
    assert await verify(vbackend) == []                       # the fold retires them too
    assert (await retire_once(vbackend)).retired == 0          # nothing more is due


async def test_keep_ms_retires_by_age_only(vbackend):
    old = await finish(vbackend, 2)
    await vbackend.vclock.advance(60_000)
    new = await finish(vbackend, 2)
    await set_policy(vbackend, NS, RetentionPolicy(keep_ms=30_000))
    assert (await retire_once(vbackend)).retired == 2
    assert [await exists(vbackend, r) for r in old + new] == [False, False, True, True]
    assert await verify(vbackend) == []


async def test_a_running_run_is_never_retired_however_old(vbackend):
    await set_policy(vbackend, NS, RetentionPolicy(keep_ms=1, keep_runs=0))
    run = await submit_run(vbackend, "t", namespace=NS)
    client = LeaseClient(vbackend, "w1", CFG)
    (lease,) = await client.acquire(NS, "default", 1)
    for _ in range(20):                              # many passes while it runs for a long time
        await vbackend.vclock.advance(900)
        await client.renew([lease])
        assert (await retire_once(vbackend)).retired == 0
    assert (await get_action(vbackend, NS, run.run_id, "a0")).phase.value == "running"
    await client.complete(lease, b"\xc0")
    await vbackend.vclock.advance(10)
    assert (await retire_once(vbackend)).retired == 1  # finished: now it goes
    assert await verify(vbackend) == []


async def test_a_finished_root_with_a_live_child_waits_for_the_child(vbackend):
    await set_policy(vbackend, NS, RetentionPolicy(keep_runs=0))
    run = await submit_run(vbackend, "t", namespace=NS)
    client = LeaseClient(vbackend, "w1", CFG)
    (root,) = await client.acquire(NS, "default", 1)
    await vbackend.call("submit_child", [vbackend.keys(root.partition).prefix],
                        [root.ref, root.token, "w1", "c1", "t", b"", "default", 0, 0, 0, 0, 0, ""])
    (child,) = await client.acquire(NS, "default", 1)
    await client.complete(root, b"\xc0")             # the child is now being aborted, still running
    result = await retire_once(vbackend)
    assert (result.retired, result.still_live) == (0, 1)
    assert await exists(vbackend, run.run_id)
    await client.release(child, "aborted")            # the child ends
    assert (await retire_once(vbackend)).retired == 1
    assert not await vbackend.redis.keys(vbackend.keys(root.partition).prefix + "*" + run.run_id + "*")
    assert await verify(vbackend) == []


async def test_the_cache_has_its_own_bound(vbackend):
    client = LeaseClient(vbackend, "w1", CFG)
    for i in range(4):
        await submit_run(vbackend, "t", namespace=NS, cache_key=f"k{i}")
        (lease,) = await client.acquire(NS, "default", 1)
        await client.complete(lease, b"\xc0")
        await vbackend.vclock.advance(10)
    cache = vbackend.keys(0).cache(NS)
    counts = [sum([await vbackend.redis.hlen(k.cache(NS)) for k in vbackend.all_keys()])]
    await set_policy(vbackend, NS, RetentionPolicy(cache_max=1))
    result = await retire_once(vbackend)
    counts.append(sum([await vbackend.redis.hlen(k.cache(NS)) for k in vbackend.all_keys()]))
    assert counts[0] == 4 and counts[1] <= vbackend.partitions and result.cache_dropped == 4 - counts[1]
    assert cache  # (the key name exists for every partition)


async def test_housekeeping_runs_once_per_interval_for_the_whole_fleet(vbackend, tmp_path):
    from lessor.leasing.archive import Archive
    from lessor.leasing.housekeeping import Housekeeper
    await finish(vbackend, 6)
    await set_policy(vbackend, NS, RetentionPolicy(keep_runs=0))
    a = Housekeeper(vbackend, Archive(str(tmp_path / "a")), interval_ms=60_000, keep_window_ms=0)
    b = Housekeeper(vbackend, interval_ms=60_000)
    first, second = await a.run_once(), await b.run_once()
    assert (first.skipped, first.retention.retired, second.skipped) == (False, 6, True)
    assert sum(c.archived for c in first.compaction) > 0 and sum(c.trimmed for c in first.compaction) > 0
    assert await verify(vbackend) == []


def test_the_retention_commands_end_to_end(flushed, tmp_path):
    """set, show, run --once with an archive; then the retired run is read back and named as retired."""
    from tests.test_cli import lessor

    assert lessor("retention", "set", NS, "--keep-runs", "0", "--cache-max", "10", url=flushed, check=True).stdout \
        == f"{NS}: keep the newest 0 finished runs; keep at most 10 cached results\n"
    assert json.loads(lessor("retention", "show", "--json", url=flushed, check=True).stdout)[NS]["keep_runs"] == 0
    run = json.loads(lessor("submit", "t", "--json", url=flushed, check=True).stdout)["run"]
    anyio.run(_complete_all, flushed)
    archive = str(tmp_path / "archive")
    figures = json.loads(lessor("retention", "run", "--once", "--archive", archive, "--keep-window", "0",
                                "--json", url=flushed, check=True).stdout)
    assert figures["retired"] == 1 and figures["archived"] >= 5 and figures["trimmed"] >= 1
    shown = lessor("run", "show", run, "--archive", archive, url=flushed)
    assert shown.returncode == 2 and "was retired by retention" in shown.stderr and archive in shown.stderr
    events = [json.loads(x) for x in lessor("events", "--run", run, "--archive", archive, "--json",
                                           url=flushed, check=True).stdout.splitlines()]
    assert [e["type"] for e in events][:2] == ["run_created", "action_created"]
    assert events[-1]["type"] == "run_retired"
    assert lessor("replay", "--verify", url=flushed).returncode == 0
    assert "policy removed" in lessor("retention", "clear", NS, url=flushed, check=True).stdout


async def _complete_all(url: str) -> None:
    from tests.conftest import make_backend
    b = await make_backend(url)
    client = LeaseClient(b, "w1", CFG)
    for lease in await client.acquire(NS, "default", 10):
        await client.complete(lease, b"\xc0")
    await b.redis.aclose()


async def test_a_retire_call_stops_at_its_time_budget_and_the_pass_finishes_the_rest(backend):
    """retire.lua's budget (server CPU µs, checked after each run): a 1 µs budget retires one run a
    call and says there is more; retire_once keeps calling until every due run is gone."""
    client = LeaseClient(backend, "w1", CFG)
    for _ in range(4 * backend.partitions):
        await submit_run(backend, "t", namespace=NS)
        (lease,) = await client.acquire(NS, "default", 1)
        await client.complete(lease, b"\xc0")
    await set_policy(backend, NS, RetentionPolicy(keep_runs=0))
    # Run ids spread at random: take the partition with the most finished runs (at least 4 of 4P).
    dues = [await backend.redis.zcard(backend.keys(p).named("done_key") + NS) for p in range(backend.partitions)]
    busiest = max(range(backend.partitions), key=dues.__getitem__)
    prefix = backend.keys(busiest).prefix
    assert dues[busiest] >= 2, "a partition needs two finished runs for this test"
    retired, still_live, _, more = await backend.call("retire", [prefix], [NS, 0, 0, 100, 0, -1, 1])
    assert (retired, still_live, more) == (1, 0, 1)
    result = await retire_once(backend)
    assert result.retired == 4 * backend.partitions - 1
    assert await verify(backend) == []
