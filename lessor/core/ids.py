"""Ids, partitions and key names.

- namespace: ``project/domain``; run ids are unique inside a namespace.
- action ids live inside a run (``a0`` is the root); attempts count from 1.
- an action's ref is ``project/domain/run/action``; a run's ref ``project/domain/run``.
- the partition of a run is a stable hash of its ref; every key of a partition
  shares one hash tag ``{pN}`` so each script touches one Redis Cluster slot.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Keys:
    """Key names of one partition. All share the hash tag ``{pN}``."""

    partition: int
    root: str = KEY_ROOT

    @property
    def prefix(self) -> str:
        return f"{self.root}:{{p{self.partition}}}:"

    @property
    def stream(self) -> str:
        return self.prefix + "events"

    @property
    def leases(self) -> str:
        """ZSET: action ref -> expiry (deadline + grace, server ms)."""
        return self.prefix + "leases"

    @property
    def delayed(self) -> str:
        """ZSET: action ref -> time it becomes ready (backoff), server ms."""
        return self.prefix + "delayed"

    def action(self, ref: str) -> str:
        return self.prefix + "a:" + ref

    def run(self, ref: str) -> str:
        return self.prefix + "r:" + ref

    def queue(self, namespace: str, queue: str) -> str:
        return self.prefix + f"q:{namespace}:{queue}"
