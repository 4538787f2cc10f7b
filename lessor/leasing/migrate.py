"""Moving state an older lessor wrote into today's layout.

Runs. Up to the lessor of 2026-11-27 each run had a hash of its own,
``<prefix>r:<ns>/<run>``. Today a run lives on its root action a0's hash (core/fold.py
``RUN_ON_ROOT``): readers already see such a run from a0 (phase, task, queue, inputs,
creation time); only its own two fields, the idempotency key and the abort mark, are
still in the old hash, so ``replay --verify`` reports them missing on a0. ``move_runs``
copies them onto a0's hash and deletes the old hash, one atomic script call per run (a
run retired meanwhile just loses its old hash). Run it once every old writer has stopped
(``lessor doctor --migrate``): an old writer still creates old-layout runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from lessor.core.fold import RUN_ON_ROOT
from lessor.core.ids import KEY_ROOT
from lessor.core.keyspace import KEY_FAMILIES
from lessor.leasing.backend import CONFIG_KEY, RUNS_ON_ROOT

#: Where an old lessor kept a run: ``<KEY_ROOT>:{<tag>}:r:<ns>/<run>`` (a key family it had).
OLD_RUN_SUFFIX = "r:"
OLD_RUN_PATTERN = KEY_ROOT + ":{*}:" + OLD_RUN_SUFFIX + "*"
_ACTION_SUFFIX = next(f.suffix for f in KEY_FAMILIES if f.lua == "akey")

# KEYS[1] the old run hash, KEYS[2] its root action's hash (one partition: one hash tag).
# Atomic, so a run retired between the read and the write is not recreated as a stray hash.
_MOVE = f"""
local h = redis.call('HMGET', KEYS[1], 'idempotency_key', 'aborting')
local rooted = redis.call('EXISTS', KEYS[2])
if rooted == 1 then
  if h[1] and h[1] ~= '' then redis.call('HSET', KEYS[2], '{RUN_ON_ROOT["idempotency_key"]}', h[1]) end
  if h[2] == '1' then redis.call('HSET', KEYS[2], '{RUN_ON_ROOT["aborting"]}', '1') end
end
redis.call('DEL', KEYS[1])
return rooted
"""


@dataclass(frozen=True)
class MoveReport:
    """What ``move_runs`` did: runs moved onto their root action, and old hashes of runs whose
    root was gone already (retired: the hash only went)."""

    moved: int
    orphans: int


def _root_of(old_key: str) -> str:
    head, _, ref = old_key.partition("}:" + OLD_RUN_SUFFIX)
    return f"{head}}}:{_ACTION_SUFFIX}{ref}/a0"


async def old_runs(redis, limit: int | None = None) -> list[str]:
    """The keys of runs still in the old layout (at most ``limit``): a SCAN of every primary
    (``redis``: a redis-py asyncio client, or a cluster one)."""
    found: list[str] = []
    async for raw in redis.scan_iter(match=OLD_RUN_PATTERN, count=1000, _type="hash"):
        found.append(raw.decode())
        if limit is not None and len(found) >= limit:
            break
    return found


async def move_runs(redis, on_progress=None) -> MoveReport:
    """Move every old-layout run onto its root action's hash (see the module's docstring) in
    one SCAN pass (deleting what it has returned is safe for SCAN); ``on_progress(done)`` every
    500 runs. Idempotent: a second pass finds nothing."""
    move = redis.register_script(_MOVE)
    moved = orphans = 0
    async for raw in redis.scan_iter(match=OLD_RUN_PATTERN, count=1000, _type="hash"):
        old = raw.decode()
        # One call per run (a cluster client pipelines no scripts): a one-off.
        if await move(keys=[old, _root_of(old)]):
            moved += 1
        else:
            orphans += 1
        if on_progress is not None and (moved + orphans) % 500 == 0:
            on_progress(moved + orphans)
    await redis.hset(CONFIG_KEY, RUNS_ON_ROOT, "1")   # doctor need not look again
    return MoveReport(moved, orphans)
