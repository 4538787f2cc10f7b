"""The key schema: every Redis key lessor uses, defined once.

All keys of a partition start with its prefix, ``lessor:{tag}:``, so they share
one hash tag (one Cluster slot) and a script needs to declare only the prefix.
Python builds key names from these tables (``core/ids.py: Keys``), and the Lua
prelude gets them generated (``leasing/scripts.py``): the partition keys as
constants, the families as functions. Each script's header lists, on its
``Touches:`` line, the keys (by these Lua names) it reads or writes; a test
runs every script with key tracing on and compares.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionKey:
    """One key per partition."""

    lua: str      # its name in Lua (a constant of the prelude)
    suffix: str   # after the partition prefix
    kind: str     # Redis type
    what: str


@dataclass(frozen=True)
class KeyFamily:
    """Many keys per partition, one per entity: ``<prefix><suffix><arg>[:<arg>]``."""

    lua: str                 # its Lua function, e.g. akey(ref)
    suffix: str
    args: tuple[str, ...]    # joined with ':' after the suffix
    kind: str
    what: str


PARTITION_KEYS = (
    PartitionKey("STREAM", "events", "stream", "the partition's event log"),
    PartitionKey("LEASES", "leases", "zset", "reap index: action ref -> expiry lower bound (deadline + grace at grant)"),
    PartitionKey("DELAYED", "delayed", "zset", "backoffs: action ref -> ready at (server ms)"),
    PartitionKey("TIMEOUTS", "timeouts", "zset", "attempt timeouts: action ref -> timed out at (server ms)"),
    PartitionKey("TOKENS", "token", "hash", "the fencing-token counter: last, epoch, at"),
    PartitionKey("SEQ", "seq", "string", "FIFO sequence of enqueues"),
    PartitionKey("EPOCH", "epoch", "string", "the server epoch this partition's leases were last judged in"),
    PartitionKey("REAP_DUE", "reap_due", "string", "when the next reap pass of this partition is due"),
    PartitionKey("SNAPSHOT", "snapshot", "hash", "the latest snapshot: the fold of this partition at a stream id"),
    PartitionKey("ARCHIVED", "archived", "string", "the stream id through which events are archived durably"),
    PartitionKey("COMPACTING", "compacting", "string", "held by the one compactor of this partition (a lock)"),
    PartitionKey("SCHEDULES", "schedules", "zset", "this partition's schedules (ns/name) by next due tick (ms)"),
    PartitionKey("TICKER", "ticker", "hash", "the ticker lease of this partition: token, worker, deadline_ms"),
    PartitionKey("WORKERS", "workers", "hash",
                 "partition 0 only: worker id -> its presence (JSON: host, pid, version, seen_ms); "
                 "scheduler/presence.py"),
)

KEY_FAMILIES = (
    KeyFamily("akey", "a:", ("ref",), "hash", "an action's projection"),
    KeyFamily("qkey", "q:", ("ns", "queue"), "zset", "a queue: action refs by priority, then FIFO"),
    KeyFamily("wake_key", "wake:", ("ns", "queue"), "list",
              "a queue's wake-up signal: at most one token, pushed on enqueue, popped (BLPOP) by an idle worker"),
    KeyFamily("runs_key", "runs:", ("ns",), "zset", "a namespace's runs by creation time"),
    KeyFamily("run_actions_key", "ra:", ("run_ref",), "set", "the non-root actions of a run"),
    KeyFamily("children_key", "ch:", ("ref",), "set", "the children of an action"),
    KeyFamily("cache_hash", "cache:", ("ns",), "hash", "a namespace's result cache: cache key -> result"),
    KeyFamily("cache_times", "cache_at:", ("ns",), "zset", "when each cache entry was stored (for its retention)"),
    KeyFamily("done_key", "done:", ("ns",), "zset", "a namespace's finished runs by completion time (for retention)"),
    KeyFamily("skey", "s:", ("ref",), "hash", "a schedule's projection (ref: ns/name)"),
    KeyFamily("tkey", "t:", ("ref",), "hash", "a trigger's projection (ref: ns/name)"),
    KeyFamily("trigger_runs", "tr:", ("ref",), "hash",
              "a trigger's live dedup keys: dedup key -> the run its first fire in the window started"),
    KeyFamily("trigger_until", "tu:", ("ref",), "zset", "a trigger's live dedup keys by the end of their window (ms)"),
    KeyFamily("setkey", "set:", ("scope",), "hash",
              "a settings scope's projection: version and document (scope: *, */domain or project/domain; "
              "in the settings partition only, scheduler/settings.py)"),
    KeyFamily("fair_key", "fq:", ("queue",), "zset",
              "a queue's fair-share rotation: the namespaces with queued work, by their pass (virtual time)"),
    KeyFamily("share_key", "fs:", ("queue",), "hash",
              "a queue's fair-share settings: w:<ns> weight, max:<ns> and max (running limits, this "
              "partition's share), p:<ns> the pass a namespace left the rotation at, blocked"),
    KeyFamily("running_key", "running:", ("queue",), "hash",
              "a queue's leases running in this partition: <ns> -> count, * -> total"),
)

#: Keys scripts need before the lazily built library (the renewal hot path, an idle
#: acquire, a skipped reap pass, which still answers when the partition's next item
#: falls due): generated at the top of the prelude.
HOT = frozenset({"akey", "qkey", "fair_key", "REAP_DUE", "LEASES", "TIMEOUTS", "DELAYED"})


def key_name(prefix: str, key: str) -> str:
    """The Lua name (STREAM, akey, ...) of a full key of the partition with ``prefix``."""
    rest = key[len(prefix):]
    for pk in PARTITION_KEYS:
        if rest == pk.suffix:
            return pk.lua
    for fam in sorted(KEY_FAMILIES, key=lambda f: -len(f.suffix)):
        if rest.startswith(fam.suffix):
            return fam.lua
    raise KeyError(f"{key!r} is not a key of lessor's schema (lessor/core/keyspace.py)")
