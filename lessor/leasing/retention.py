"""Retention: how long finished runs (and cached results) stay in the server.

A policy per namespace, stored in the server (one hash, ``lessor:retention``),
so every process that reaps applies the same one. ``retire.lua`` applies it to
one namespace of one partition in bounded calls: only a finished run whose
every action is terminal is retired (``run_retired``); a running run, however
old, is never in its index. The events of a retired run stay in the log until
compaction (``leasing/compaction.py``) archives and trims them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass

from lessor.core.ids import check_namespace
from lessor.errors import ConfigError
from lessor.leasing.backend import Backend
from lessor.leasing.scripts import ClockMode

POLICY_KEY = "lessor:retention"
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_MS = 100 * 365 * 86_400_000


def parse_duration(text: str) -> int:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"500ms"`` -> milliseconds (``"0"`` = no limit)."""
    found = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)?\s*", text or "")
    if not found:
        raise ConfigError(f"duration must look like 7d, 12h, 30m, 45s or 500ms, got {text!r}")
    ms = int(found.group(1)) * _UNITS[found.group(2) or "s"]
    if ms > _MAX_MS:
        raise ConfigError(f"duration {text!r} is longer than 100 years")
    return ms


@dataclass(frozen=True)
class RetentionPolicy:
    """How much finished work a namespace keeps. 0 / -1 mean "no limit" for times / counts."""

    keep_ms: int = 0          # finished runs older than this are retired
    keep_runs: int = -1       # beyond the newest this many finished runs, the oldest are retired
    cache_keep_ms: int = 0    # cached results older than this are dropped
    cache_max: int = -1       # beyond this many cached results, the oldest are dropped

    def __post_init__(self) -> None:
        for name in ("keep_ms", "cache_keep_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_MS:
                raise ConfigError(f"{name} must be an integer number of ms in 0..{_MAX_MS} (0 = no limit), got {value!r}")
        for name in ("keep_runs", "cache_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= 2**53 - 1:
                raise ConfigError(f"{name} must be an integer >= 0, or -1 for no limit, got {value!r}")

    @property
    def retains_everything(self) -> bool:
        return self.keep_ms == 0 and self.keep_runs < 0 and self.cache_keep_ms == 0 and self.cache_max < 0


async def set_policy(backend: Backend, namespace: str, policy: RetentionPolicy) -> None:
    """Store ``policy`` for ``namespace`` (every reaper applies it from its next pass)."""
    check_namespace(namespace)
    await backend.redis.hset(POLICY_KEY, namespace, json.dumps(asdict(policy)))


async def clear_policy(backend: Backend, namespace: str) -> bool:
    """Remove ``namespace``'s policy (it then keeps everything). True if there was one."""
    return bool(await backend.redis.hdel(POLICY_KEY, namespace))


async def policies(backend: Backend) -> dict[str, RetentionPolicy]:
    """Every namespace's stored policy."""
    raw = await backend.redis.hgetall(POLICY_KEY)
    out = {}
    for ns, text in raw.items():
        try:
            out[ns.decode()] = RetentionPolicy(**json.loads(text))
        except (ValueError, TypeError, ConfigError) as exc:
            raise ConfigError(f"the stored retention policy of {ns.decode()} is unreadable ({exc}): "
                              f"set it again with `lessor retention set`") from None
    return out


@dataclass
class RetentionResult:
    """What one retention pass did (all namespaces, all partitions), and how long its calls took."""

    retired: int = 0
    still_live: int = 0
    cache_dropped: int = 0
    calls: int = 0
    max_call_ms: float = 0.0


async def retire_once(backend: Backend, limit: int = 100, budget_ms: float | None = 2.0) -> RetentionResult:
    """One pass: every namespace with a policy, every partition, until nothing is due.

    Each script call handles at most ``limit`` runs (and cache entries) and stops
    after about ``budget_ms`` of server CPU time (None: no budget; a virtual
    clock passes none, so replays stay alike), so it holds the server for a
    bounded time; the pass repeats calls while one says there is more.
    """
    if budget_ms is not None and not 0 < budget_ms <= 60_000:
        raise ValueError(f"retention needs 0 < budget_ms <= 60000 (or None), got {budget_ms}")
    budget_us = round(budget_ms * 1000) if budget_ms is not None and backend.clock is ClockMode.SERVER else 0
    result = RetentionResult()
    for ns, policy in (await policies(backend)).items():
        if policy.retains_everything:
            continue
        # Counts are kept per partition: a namespace's runs spread evenly over the partitions
        # (by hash), so each keeps its share, rounded up.
        share = (lambda n: n if n < 0 else -(-n // backend.partitions))
        args = [ns, policy.keep_ms, share(policy.keep_runs), limit, policy.cache_keep_ms, share(policy.cache_max),
                budget_us]
        for partition in range(backend.partitions):
            more = 1
            while more:
                started = time.perf_counter()  # a measurement of the call, not a deadline
                retired, still_live, dropped, more = await backend.call(
                    "retire", [backend.keys(partition).prefix], args)
                result.max_call_ms = max(result.max_call_ms, (time.perf_counter() - started) * 1000)
                result.calls += 1
                result.retired += retired
                result.still_live += still_live
                result.cache_dropped += dropped
                if retired == 0 and dropped == 0:
                    break  # all that is due is still live: the next pass looks again
    return result
