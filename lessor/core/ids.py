"""Ids, partitions and key names.

- namespace: ``project/domain``; run ids are unique inside a namespace.
- action ids live inside a run (``a0`` is the root); attempts count from 1.
- an action's ref is ``project/domain/run/action``; a run's ref ``project/domain/run``.
- the partition of a run is a stable hash of its ref; every key of a partition
  shares one hash tag so each script touches one Redis Cluster slot. The tags
  are chosen so that the P partitions' slots are evenly spaced over the 16384
  slots (``spread_tags``): a cluster's primaries then hold equal shares of the
  partitions (a cluster splits its slots into contiguous ranges). Data written
  before placement existed keeps its ``{pN}`` tags (``legacy``).
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
import zlib
from dataclasses import dataclass

from lessor.core.keyspace import KEY_FAMILIES, PARTITION_KEYS

ROOT_ACTION = "a0"
DEFAULT_PARTITIONS = 4
KEY_ROOT = "lessor"

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}"
_NAMESPACE_RE = re.compile(rf"^{_NAME}/{_NAME}$")
_ID_RE = re.compile(rf"^{_NAME}$")


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is ``project/domain``; raise ValueError saying why not."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise ValueError(
            f"namespace must look like 'project/domain' (letters, digits, _ . -), got {namespace!r}"
        )
    return namespace


#: The namespace a worker names to take work of every namespace of its queue, by fair share.
ANY_NAMESPACE = "*"


def check_worker_namespace(namespace: str) -> str:
    """Return ``namespace`` if a worker may take work from it: ``project/domain``, or
    ``*`` (every namespace of the queue, by fair share); raise ValueError saying why not."""
    if namespace == ANY_NAMESPACE:
        return namespace
    try:
        return check_namespace(namespace)
    except ValueError:
        raise ValueError(f"namespace must look like 'project/domain' (letters, digits, _ . -), or be "
                         f"'*' for every namespace by fair share, got {namespace!r}") from None


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid run/action/queue/worker id; raise ValueError otherwise."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(
            f"{kind} id must be 1-63 letters, digits, _ . - (starting with a letter or digit), "
            f"got {value!r}"
        )
    return value


def new_run_id() -> str:
    """A fresh random run id (unique per namespace with overwhelming probability)."""
    return "r" + secrets.token_hex(6)


def run_ref(namespace: str, run_id: str) -> str:
    return f"{namespace}/{run_id}"


def action_ref(namespace: str, run_id: str, action_id: str) -> str:
    return f"{namespace}/{run_id}/{action_id}"


def split_action_ref(ref: str) -> tuple[str, str, str]:
    """Split ``project/domain/run/action`` into (namespace, run, action)."""
    parts = ref.split("/")
    if len(parts) != 4:
        raise ValueError(f"action ref must be 'project/domain/run/action', got {ref!r}")
    return f"{parts[0]}/{parts[1]}", parts[2], parts[3]


def partition_of(namespace: str, run_id: str, partitions: int) -> int:
    """Stable partition number of a run: crc32 of its ref modulo ``partitions``."""
    return zlib.crc32(run_ref(namespace, run_id).encode()) % partitions


def run_id_beside(namespace: str, owner: str, base: str, partitions: int) -> str:
    """A run id derived from ``base`` alone (``base-k``, the first k that fits) that lives in the
    partition of ``owner`` (a schedule or trigger name): the owner's write and the run it starts
    are then one atomic script. Deterministic, so every caller derives the same id."""
    target = partition_of(namespace, owner, partitions)
    for k in range(100 * partitions):
        run = f"{base}-{k}"
        if partition_of(namespace, run, partitions) == target:
            return run
    raise AssertionError(f"no run id in the partition of {owner}")   # 1 - (1 - 1/P)^(100P): never


CLUSTER_SLOTS = 16384
PLACEMENTS = ("spread", "legacy")


def slot_of(tag: str) -> int:
    """The Redis Cluster slot of a hash tag: CRC16 (XMODEM) of it, mod 16384."""
    return binascii.crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS


@functools.lru_cache(maxsize=64)
def spread_tags(partitions: int) -> tuple[str, ...]:
    """One hash tag per partition, partition i's slot inside the i-th of P equal slot ranges.

    Found by trying ``p<i>.<k>`` for k = 0, 1, ... (about P tries each): the
    tags are a pure function of P, so every process derives the same ones.
    """
    tags = []
    for i in range(partitions):
        low, high = i * CLUSTER_SLOTS // partitions, (i + 1) * CLUSTER_SLOTS // partitions
        k = 0
        while not low <= slot_of(f"p{i}.{k}") < high:
            k += 1
        tags.append(f"p{i}.{k}")
    return tuple(tags)


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """A Redis stream id ("<ms>-<seq>") as a pair that sorts as the stream does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


def partition_tag(partition: int, partitions: int, placement: str = "spread") -> str:
    """The hash tag of one partition under a placement (``spread``, or ``legacy`` = ``pN``)."""
    return spread_tags(partitions)[partition] if placement == "spread" else f"p{partition}"


@dataclass(frozen=True)
class Keys:
    """Key names of one partition. All share the partition's hash tag (one cluster slot)."""

    partition: int
    root: str = KEY_ROOT
    tag: str = ""

    @property
    def prefix(self) -> str:
        return f"{self.root}:{{{self.tag or 'p' + str(self.partition)}}}:"

    def named(self, lua_name: str) -> str:
        """A partition key by its name in the key schema (core/keyspace.py), e.g. ``named("SNAPSHOT")``."""
        return self.prefix + _SUFFIX[lua_name]

    @property
    def stream(self) -> str:
        return self.prefix + _SUFFIX["STREAM"]

    @property
    def leases(self) -> str:
        """ZSET: action ref -> expiry (deadline + grace, server ms)."""
        return self.prefix + _SUFFIX["LEASES"]

    @property
    def delayed(self) -> str:
        """ZSET: action ref -> time it becomes ready (backoff), server ms."""
        return self.prefix + _SUFFIX["DELAYED"]

    def action(self, ref: str) -> str:
        return self.prefix + _SUFFIX["akey"] + ref

    def run_root(self, run_ref: str) -> str:
        """HASH: the run's root action a0, which holds the run too (there is no run hash: its
        phase is ``run_phase_of`` a0's, its own fields are a0's under ``RUN_ON_ROOT``'s names)."""
        return self.action(run_ref + "/a0")

    def queue(self, namespace: str, queue: str) -> str:
        return self.prefix + _SUFFIX["qkey"] + f"{namespace}:{queue}"

    def wake(self, namespace: str, queue: str) -> str:
        """LIST: the queue's wake-up signal (at most one token; idle workers BLPOP it)."""
        return self.prefix + _SUFFIX["wake_key"] + f"{namespace}:{queue}"

    def fair(self, queue: str) -> str:
        """ZSET: the queue's fair-share rotation: namespaces with queued work -> pass."""
        return self.prefix + _SUFFIX["fair_key"] + queue

    def share(self, queue: str) -> str:
        """HASH: the queue's fair-share weights and running limits in this partition."""
        return self.prefix + _SUFFIX["share_key"] + queue

    def running(self, queue: str) -> str:
        """HASH: the queue's running leases in this partition: namespace -> count, ``*`` -> total."""
        return self.prefix + _SUFFIX["running_key"] + queue

    def schedule(self, ref: str) -> str:
        """HASH: a schedule's projection (ref: ns/name)."""
        return self.prefix + _SUFFIX["skey"] + ref

    def trigger(self, ref: str) -> str:
        """HASH: a trigger's projection (ref: ns/name)."""
        return self.prefix + _SUFFIX["tkey"] + ref

    def settings(self, scope: str) -> str:
        """HASH: a settings scope's version and document (only in the settings partition)."""
        return self.prefix + _SUFFIX["setkey"] + scope

    def runs(self, namespace: str) -> str:
        """ZSET: a namespace's run ids by creation time."""
        return self.prefix + _SUFFIX["runs_key"] + namespace

    def run_actions(self, run_ref_: str) -> str:
        """SET: the non-root action ids of a run."""
        return self.prefix + _SUFFIX["run_actions_key"] + run_ref_

    def cache(self, namespace: str) -> str:
        """HASH: a namespace's result cache."""
        return self.prefix + _SUFFIX["cache_hash"] + namespace


# Key suffixes by Lua name, from the one key schema.
_SUFFIX = {k.lua: k.suffix for k in (*PARTITION_KEYS, *KEY_FAMILIES)}
