"""Settings with inheritance against the real server: org -> domain -> project, ~unset, map
merging, versioned writes refused atomically when stale, events replayed, submit defaults."""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest

from lessor.core import events as ev
from lessor.core.settings import BadScope, BadSettingValue, UnknownSetting, resolve
from lessor.errors import ServerRefused
from lessor.leasing.backend import settings_keys
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.scheduler.api import Client
from lessor.scheduler.settings import (
    SettingsCache, SettingsConflict, effective, parse_assignment, read_scope, update_scope, write_scope,
)

pytestmark = pytest.mark.anyio
NS = "demo/production"


async def dump(backend) -> dict:
    """Every key of the server with its DUMP (to show a refused write left nothing behind)."""
    out = {}
    async for key in backend.redis.scan_iter(count=1000):
        out[key] = await backend.redis.dump(key)
    return out


async def test_resolution_through_org_domain_project_with_unset_and_map_merge(backend):
    await write_scope(backend, "*", {"run.default_queue": "org-q", "run.default_retries": 2, "run.timeout_s": 60,
                                     "fair_share.weight": 3, "run.labels": {"team": "core", "tier": "gold"}}, 0)
    await write_scope(backend, "*/production", {"run.default_queue": "prod-q", "run.timeout_s": "~unset",
                                                "run.labels": {"tier": "platinum", "env": "prod"}}, 0)
    await write_scope(backend, NS, {"run.default_retries": 5, "run.labels": {"team": "demo", "env": "~unset"}}, 0)
    got = await effective(backend, NS)
    assert (got["run.default_queue"].value, got["run.default_queue"].origin) == ("prod-q", "*/production")
    assert (got["run.default_retries"].value, got["run.default_retries"].origin) == (5, NS)
    assert (got["fair_share.weight"].value, got["fair_share.weight"].origin) == (3, "*")
    # ~unset at the domain blocks the org's timeout: the built-in default (none) applies.
    assert (got["run.timeout_s"].value, got["run.timeout_s"].origin, got["run.timeout_s"].unset_at) == \
        (0, "default", "*/production")
    # Maps merge, the child winning per entry; an entry set to ~unset is removed.
    assert got["run.labels"].value == {"team": "demo", "tier": "platinum"}
    assert got["run.labels"].origins == {"team": NS, "tier": "*/production"}
    assert got["run.labels"].origin == "merged"
    # Another domain sees only the org.
    other = await effective(backend, "demo/staging")
    assert other["run.default_queue"].value == "org-q" and other["run.timeout_s"].value == 60
    assert other["run.labels"].value == {"team": "core", "tier": "gold"}
    # A project's ~unset of the whole map blocks every scope above it.
    await update_scope(backend, NS, {"run.labels": "~unset"})
    assert (await effective(backend, NS))["run.labels"].value == {}
    # A key set nowhere: its default, origin "default".
    assert (got["retention.keep_runs"].value, got["retention.keep_runs"].origin) == (0, "default")


def test_resolution_is_pure_and_follows_the_scope_chain():
    docs = {"*": {"run.default_queue": "a"}, "*/dev": {"run.default_queue": "~unset"}, "x/dev": {}}
    assert resolve("x/dev", docs)["run.default_queue"].value == "default"
    assert resolve("x/prod", docs)["run.default_queue"].value == "a"


async def test_a_stale_version_is_refused_and_nothing_is_written(backend):
    assert await write_scope(backend, NS, {"run.default_queue": "q1"}, 0) == 1
    assert await write_scope(backend, NS, {"run.default_queue": "q2"}, 1) == 2
    before = await dump(backend)
    with pytest.raises(SettingsConflict, match=r"settings for demo/production changed since you read them "
                                               r"\(version 2, you had 1\): read again and reapply"):
        await write_scope(backend, NS, {"run.default_queue": "q3"}, 1)
    assert await dump(backend) == before
    # Two writers that read the same version: exactly one wins.
    outcomes = []

    async def writer(q):
        try:
            outcomes.append(await write_scope(backend, NS, {"run.default_queue": q}, 2))
        except SettingsConflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for q in ("a", "b", "c", "d"):
            tg.start_soon(writer, q)
    assert sorted(outcomes, key=str) == [3, "conflict", "conflict", "conflict"]
    assert (await read_scope(backend, NS)).version == 3


async def test_bad_keys_types_and_scopes_are_refused_by_name(backend):
    before = await dump(backend)
    with pytest.raises(UnknownSetting, match="unknown setting 'run.default_queu'; the settings are: "
                                             "run.default_queue, run.default_retries"):
        await write_scope(backend, NS, {"run.default_queu": "x"}, 0)
    with pytest.raises(BadSettingValue, match="run.default_retries must be an integer within 0..1000"):
        await write_scope(backend, NS, {"run.default_retries": "3"}, 0)
    with pytest.raises(BadSettingValue, match="run.default_retries must be an integer"):
        await write_scope(backend, NS, {"run.default_retries": True}, 0)
    with pytest.raises(BadSettingValue, match="run.durability"):
        await write_scope(backend, NS, {"run.durability": "sometimes"}, 0)
    with pytest.raises(BadSettingValue, match="run.labels"):
        await write_scope(backend, NS, {"run.labels": {"team": 3}}, 0)
    with pytest.raises(BadScope, match=r"'\*/DOMAIN' \(a domain\)"):
        await write_scope(backend, "production", {}, 0)
    with pytest.raises(UnknownSetting, match="the settings are"):
        parse_assignment("nope=1")
    with pytest.raises(BadSettingValue, match="cannot read 'x' as an integer"):
        parse_assignment("run.default_retries=x")
    assert parse_assignment('run.labels={"a":"b"}') == ("run.labels", {"a": "b"})
    assert parse_assignment("run.timeout_s=~unset") == ("run.timeout_s", "~unset")
    # The script checks again, for a client that calls it directly.
    prefix = settings_keys(backend).prefix
    for document, why in (('{"nope":1}', "unknown setting nope"), ('[1]', "unknown setting"),
                          ('{"run.default_retries":1.5}', "must be a number"), ("{", "JSON object")):
        with pytest.raises(ServerRefused, match=why):
            await backend.call("settings", [prefix], [NS, 0, document])
    assert await dump(backend) == before


async def test_changes_are_events_that_replay_with_no_difference(backend):
    await write_scope(backend, "*", {"run.default_queue": "a"}, 0)
    await write_scope(backend, "*", {"run.default_queue": "b", "run.labels": {"x": "ü"}}, 1)
    await write_scope(backend, "*/production", {"run.default_retries": 1}, 0)
    await update_scope(backend, NS, {"fair_share.weight": 7})
    events = [e.event for e in await EventLog(backend).read_all() if isinstance(e.event, ev.SettingsChanged)]
    assert [(e.ns, e.version, e.previous) for e in events] == [("*", 1, 0), ("*", 2, 1), ("*/production", 1, 0),
                                                                 (NS, 1, 0)]
    assert events[1].document == '{"run.default_queue":"b","run.labels":{"x":"ü"}}'
    assert await verify(backend) == []
    # And a hand-edited hash is found.
    await backend.redis.hset(settings_keys(backend).settings("*"), "version", 9)
    assert [d.field for d in await verify(backend)] == ["version"]


async def root(client, run_id, ns=NS) -> tuple:
    """(queue, user retries left, timeout_ms) of a run's root action."""
    a0 = await client.get_action(run_id, "a0", namespace=ns)
    timeout = await client.backend.redis.hget(client.backend.keys_for_run(ns, run_id).action(f"{ns}/{run_id}/a0"),
                                              "timeout_ms")
    return a0.queue, a0.user_left, int(timeout or 0)


async def test_submit_takes_queue_retries_and_timeout_from_the_settings(backend):
    await write_scope(backend, "*", {"run.default_queue": "org-q", "run.timeout_s": 30}, 0)
    await write_scope(backend, "*/production", {"run.default_retries": 4, "run.default_queue": "prod-q"}, 0)
    async with anyio.create_task_group() as tg:
        client = Client(backend, tg, settings_ttl_s=0)
        run = await client.submit_run("t", namespace=NS)
        assert await root(client, run.run_id) == ("prod-q", 4, 30_000)
        # Explicit values win; timeout_s=0 means none whatever the settings say.
        from lessor import Retries
        run = await client.submit_run("t", namespace=NS, queue="mine", retries=Retries(user=1), timeout_s=0)
        assert await root(client, run.run_id) == ("mine", 1, 0)
        # No settings for the namespace's domain: the org's.
        run = await client.submit_run("t", namespace="demo/staging")
        assert await root(client, run.run_id, "demo/staging") == ("org-q", 0, 30_000)
        tg.cancel_scope.cancel()


async def test_the_client_cache_keeps_settings_for_its_ttl(backend):
    cache = SettingsCache(backend, ttl_s=3600)
    await write_scope(backend, NS, {"run.default_queue": "q1"}, 0)
    assert (await cache.get(NS))["run.default_queue"].value == "q1"
    await write_scope(backend, NS, {"run.default_queue": "q2"}, 1)
    assert (await cache.get(NS))["run.default_queue"].value == "q1"   # cached
    cache.forget()
    assert (await cache.get(NS))["run.default_queue"].value == "q2"


async def test_a_snapshot_keeps_the_settings_scopes(backend):
    from lessor.core.snapshot import decode_snapshot, encode_snapshot
    from lessor.leasing.replay import replay
    await write_scope(backend, "*/production", {"run.default_retries": 1}, 0)
    world = await replay(backend)
    again = decode_snapshot(encode_snapshot("1-0", world)).world
    assert again.settings == world.settings and world.settings["*/production"].version == 1


# --- the command line (in process: lessor.cli.main, as `python -m lessor` runs it) ---------


@pytest.fixture
def cli(flushed, monkeypatch, capsys):
    """Run `lessor ARGS` in this process against the suite's server: (exit code, stdout, stderr)."""
    from lessor.cli import main

    monkeypatch.setenv("LESSOR_REDIS_URL", flushed)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args, code=0):
        got = main(list(args))
        out, err = capsys.readouterr()
        assert got == code, err
        return out, " ".join(err.split())
    return run


def test_cli_set_get_with_origins_from_file_and_stale_version(cli, tmp_path):
    def run(*args, code=0):
        return cli("settings", *args, code=code)

    assert "version 1" in run("set", "*", "run.default_queue=org-q", "run.default_retries=2",
                              'run.labels={"team": "core"}')[0]
    toml = tmp_path / "prod.toml"
    toml.write_text('run.default_queue = "prod-q"\n"run.timeout_s" = 90.5\n[run.labels]\nenv = "prod"\n')
    out = run("set", "*/production", "--from-file", str(toml))[0]
    assert "+ run.default_queue = prod-q" in out and "+ run.timeout_s = 90.5" in out
    (tmp_path / "p.json").write_text(json.dumps({"run.default_retries": 7, "run.labels": {"team": "~unset"}}))
    run("set", NS, "--from-file", str(tmp_path / "p.json"))
    got = json.loads(run("get", NS, "--json")[0])
    assert got["run.default_queue"] == {"value": "prod-q", "origin": "*/production"}
    assert got["run.default_retries"] == {"value": 7, "origin": NS}
    assert got["run.labels"]["value"] == {"env": "prod"}
    text = run("get", NS)[0]
    assert "run.default_queue = prod-q  (from */production)" in text
    assert "run.labels.env = prod  (from */production)" in text
    assert "fair_share.weight = 1  (default)" in text
    run("set", "*/production", "run.timeout_s=~unset")
    assert "run.timeout_s = 0  (default, ~unset at */production)" in run("get", NS)[0]
    local = json.loads(run("get", "*/production", "--json")[0])
    assert local["version"] == 2 and local["settings"]["run.timeout_s"] == "~unset"
    # A write from a stale read: refused, exit 2, the message says what to do; nothing written.
    err = run("set", "*/production", "run.default_queue=x", "--version", "1", code=2)[1]
    assert "settings for */production changed since you read them (version 2, you had 1): read again and " \
           "reapply" in err
    assert json.loads(run("get", "*/production", "--json")[0])["version"] == 2
    # Bad key, bad type, bad scope, bad file: named, exit 2.
    assert "unknown setting 'run.queue'; the settings are: run.default_queue" in run("set", NS, "run.queue=x", code=2)[1]
    assert "cannot read 'many' as an integer" in run("set", NS, "run.default_retries=many", code=2)[1]
    assert "settings scope must be" in run("get", "production", code=2)[1]
    (tmp_path / "bad.toml").write_text("run.default_queue = \n")
    assert "is not valid TOML" in run("set", NS, "--from-file", str(tmp_path / "bad.toml"), code=2)[1]
    run("set", NS, "--clear", "run.default_retries")
    assert json.loads(run("get", NS, "--json")[0])["run.default_retries"]["origin"] == "*"


def test_cli_edit_writes_with_the_version_it_read_and_keeps_a_refused_edit(cli, tmp_path, monkeypatch):
    cli("settings", "set", NS, "run.default_queue=q1")
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nsed -i \'s/"q1"/"q2"/; s/^# "fair_share.weight" = .*/"fair_share.weight" = 4/\' "$1"\n')
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    out = cli("settings", "edit", NS)[0]
    assert "version 2" in out and "~ run.default_queue: q1 -> q2" in out and "+ fair_share.weight = 4" in out
    # Another writer changes the scope while the editor is open: the edit is refused and kept.
    editor.write_text(f'#!/bin/sh\n{sys.executable} -m lessor settings set {NS} run.default_retries=1 '
                      f'>/dev/null\nsed -i \'s/"q2"/"q3"/\' "$1"\n')
    err = cli("settings", "edit", NS, code=2)[1]
    assert "changed since you read them (version 3, you had 2)" in err and "Your edit is kept in" in err
    kept = err.split("Your edit is kept in ")[1].split(":")[0]
    assert '"q3"' in open(kept).read()
    os.unlink(kept)


def test_cli_submit_takes_the_default_queue_from_the_settings(cli):
    cli("settings", "set", "*/production", "run.default_queue=prod-q", "run.default_retries=3")
    sub = json.loads(cli("submit", "t", "--namespace", NS, "--json")[0])
    shown = json.loads(cli("run", "show", sub["run"], "--namespace", NS, "--json")[0])
    assert shown["queue"] == "prod-q"


async def test_submit_waits_for_the_durability_the_settings_name(backend):
    """run.durability reaches the submit's call (the wait itself is tested in test_store_faults)."""
    await write_scope(backend, "*/production", {"run.durability": "replicas:2"}, 0)
    seen = []
    real_call = backend.call

    async def spy(name, keys, args, **kwargs):
        seen.append((name, str(kwargs.get("durability"))))
        kwargs["durability"] = None        # the suite's server has no replicas: do not wait for them
        return await real_call(name, keys, args, **kwargs)

    backend.call = spy
    async with anyio.create_task_group() as tg:
        client = Client(backend, tg, settings_ttl_s=0)
        await client.submit_run("t", namespace=NS)
        await client.submit_run("t", namespace=NS, durability="memory")
        await client.submit_run("t", namespace="demo/staging")
        tg.cancel_scope.cancel()
    assert seen == [("submit", "replicas:2"), ("submit", "memory"), ("submit", "None")]
