"""Durability modes: when a write counts as acknowledged.

=====================  ===============================================================
``memory``             applied in the server's memory (today's default). A crash loses
                       the unsynced AOF tail (about 1 s with ``appendfsync everysec``);
                       a failover loses what the replicas had not received yet.
``fsync``              ``WAITAOF 1 0``: the server's AOF holds the write on disk.
``replicas:N``         ``WAIT N``: N replicas hold the write in memory.
``fsync+replicas:N``   ``WAITAOF 1 N``: the server's AOF and N replicas' AOFs hold it.
=====================  ===============================================================

The wait is sent in the same pipeline as the script (one round trip, one
connection: ``WAIT``/``WAITAOF`` only cover writes of their own connection).
It applies to every fenced write: submit, acquire, complete, fail, release,
abort and reap. On-time renewals stay out of it on purpose: they are soft
state, and a renewal lost in a crash or failover is harmless because the first
script on a new server epoch gives every live lease its full ttl back
(``ensure_epoch`` in ``_prelude.lua``) before anything can expire.

An answer below what was asked raises ``NotDurable`` (the write *was*
applied in memory and may or may not survive a crash).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lessor.errors import ConfigError, NotDurable

_PATTERN = re.compile(r"^(memory|fsync|replicas:(\d+)|fsync\+replicas:(\d+))$")


@dataclass(frozen=True)
class Durability:
    """A parsed durability mode; ``Durability.parse("fsync")``."""

    fsync: bool = False
    replicas: int = 0
    timeout_ms: int = 5000

    @classmethod
    def parse(cls, text: "str | Durability | None", timeout_ms: int = 5000) -> "Durability":
        """Parse ``memory``, ``fsync``, ``replicas:N`` or ``fsync+replicas:N`` (ConfigError otherwise)."""
        if isinstance(text, Durability):
            return text
        m = _PATTERN.match((text or "memory").strip())
        if not m:
            raise ConfigError(f"durability must be memory, fsync, replicas:N or fsync+replicas:N, got {text!r}")
        replicas = int(m.group(2) or m.group(3) or 0)
        if (m.group(2) or m.group(3)) and replicas < 1:
            raise ConfigError(f"durability {text!r}: N must be >= 1 replica")
        if timeout_ms <= 0:
            raise ConfigError(f"durability timeout must be > 0 ms, got {timeout_ms}")
        return cls(fsync=m.group(1).startswith("fsync"), replicas=replicas, timeout_ms=timeout_ms)

    @property
    def waits(self) -> bool:
        """True unless this is ``memory`` (nothing to wait for)."""
        return self.fsync or self.replicas > 0

    def __str__(self) -> str:
        if not self.waits:
            return "memory"
        if not self.fsync:
            return f"replicas:{self.replicas}"
        return "fsync" if not self.replicas else f"fsync+replicas:{self.replicas}"

    def wait_command(self) -> tuple:
        """The command to pipeline after a write: WAITAOF or WAIT."""
        if self.fsync:
            return ("WAITAOF", 1, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, answer: object, what: str, reply: object = None) -> None:
        """Raise NotDurable unless the wait's ``answer`` meets this mode."""
        if self.fsync:
            local, replicas = (int(x) for x in answer)  # type: ignore[union-attr]
        else:
            local, replicas = 1, int(answer)  # type: ignore[arg-type]
        if local >= 1 and replicas >= self.replicas:
            return
        missing = []
        if local < 1:
            missing.append("the server's AOF did not fsync it (is appendonly on, with appendfsync "
                           "everysec or always? `appendfsync no` never confirms)")
        if replicas < self.replicas:
            missing.append(f"{replicas} of {self.replicas} replicas confirmed it")
        raise NotDurable(f"{what} was applied but is not durable ({self}) after {self.timeout_ms} ms: "
                         + "; ".join(missing) + ". It may be lost if the server fails now; "
                         "retry (lessor writes are safe to repeat) or check the server", reply)
