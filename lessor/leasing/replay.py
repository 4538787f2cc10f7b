"""Replay: rebuild all state from the streams alone and compare it with the live projection.

Guarantee 5: scheduling state is a pure function of the log. ``replay`` folds
every partition's stream with the Python fold; ``verify`` compares the result
field by field with the hashes the Lua scripts maintain, and lists every
difference (also keys that exist live but not in the log, and vice versa).
A run has no hash of its own: its fields are expected on its root action's hash, and
what a reader derives from it (``run_view``) must match the log's run. Left out on
purpose: ``deadline_ms`` (on-time renewals move it without an
event) and bookkeeping fields starting with ``_``. A field missing on one side
equals "" or "0" on the other: the scripts do not store default values.
"""

from __future__ import annotations

from dataclasses import dataclass

from lessor.core.fold import (
    World, action_projection, run_projection, run_view, run_view_of, schedule_projection, settings_projection,
    trigger_projection,
)
from lessor.leasing.backend import Backend, settings_keys
from lessor.leasing.archive import Archive
from lessor.leasing.snapshots import read_start
from lessor.leasing.eventlog import EventLog


@dataclass(frozen=True)
class Difference:
    """One field (or key) where the fold of the log and the live projection disagree."""

    key: str
    field: str
    from_log: object
    live: object

    def __str__(self) -> str:
        return f"{self.key} {self.field}: log says {self.from_log!r}, live says {self.live!r}"


async def replay(backend: Backend, archive: Archive | None = None) -> World:
    """The state the log gives: each partition's latest snapshot (if compaction took one)
    plus the events after it, folded (IllegalTransition if the log breaks the table).

    Its cost follows live state and the tail, not all-time history. Entries that
    do not decode are skipped and listed in ``world.bad_entries`` (``verify``
    reports each as a difference). A snapshot that does not decode, or has an
    unknown version, is replaced by the previous one or, given ``archive``, by
    the archive; each such fallback is listed in ``world.fell_back``. With
    neither, SnapshotError names what to do.
    """
    world = World()
    log = EventLog(backend)
    for p in range(backend.partitions):
        start = await read_start(backend.redis, backend.keys(p).named("SNAPSHOT"), p, archive)
        if start.fell_back:
            world.fell_back.append(f"partition {p}: {start.fell_back}")
        world.merge(start.world)
        async for event in log.scan(p, "(" + start.at if start.at is not None else "-"):
            world.apply(event)
    world.bad_entries = list(log.bad)
    return world


def _norm(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


_READ_BATCH = 500
_DEFAULTS = (b"", b"0")  # the scripts do not store fields at their default value


def _compare(key: str, expected: dict, live: dict) -> list[Difference]:
    if not live:
        return [Difference(key, "<key>", "exists", "missing")]
    want = {name: _norm(v) for name, v in expected.items()}
    have = {k.decode(): v for k, v in live.items() if not k.startswith(b"_")}
    diffs = []
    for name in sorted(set(want) | set(have)):
        if name == "deadline_ms":
            continue
        w, h = want.get(name, b""), have.get(name, b"")
        if w != h and not (w in _DEFAULTS and h in _DEFAULTS):
            diffs.append(Difference(key, name, want.get(name), have.get(name)))
    return diffs


async def verify(backend: Backend, world: World | None = None, archive: Archive | None = None) -> list[Difference]:
    """Every difference between the fold of the log and the live projection (empty = equal).
    ``archive``: where to rebuild a partition whose snapshots are unusable (see ``replay``)."""
    world = world or await replay(backend, archive)
    diffs: list[Difference] = [Difference(backend.keys(b.partition).stream, f"entry {b.entry_id}", "decodes", b.why)
                               for b in world.bad_entries]
    expected: list[tuple[str, dict]] = []
    at: dict[str, dict] = {}   # action ref -> its expected fields (a run's own join its root's)
    for ref, state in world.actions.items():
        at[ref] = action_projection(state) | {"phase": state.phase.value}
        expected.append((backend.keys_for_ref(ref).action(ref), at[ref]))
    for ref, state in world.runs.items():
        # A run lives on its root action's hash: its own fields are expected there, and what
        # a reader derives from that hash (run_view) must be what the log says of the run.
        root = backend.keys_for_ref(ref + "/a0").run_root(ref)
        if ref + "/a0" not in at:
            diffs.append(Difference(root, "<key>", f"holds run {ref}", "no root action in the log"))
            continue
        at[ref + "/a0"].update(run_projection(state))
        view, want = run_view(at[ref + "/a0"]), run_view_of(state)
        diffs += [Difference(root, f"run {name}", want[name], (view or {}).get(name))
                  for name in want if view is None or view[name] != want[name]]
    for ref in at:
        run = ref.rsplit("/", 1)[0]
        if ref.endswith("/a0") and run not in world.runs:   # a0 reads as a run the log never created
            diffs.append(Difference(backend.keys_for_ref(ref).run_root(run), "<run>", "none in the log",
                                    "a0 reads as one"))
    for ref, state in world.schedules.items():
        ns, name = ref.rsplit("/", 1)
        expected.append((backend.keys_for_run(ns, name).schedule(ref),
                         schedule_projection(state) | {"phase": state.phase.value}))
    for ref, state in world.triggers.items():
        ns, name = ref.rsplit("/", 1)
        expected.append((backend.keys_for_run(ns, name).trigger(ref),
                         trigger_projection(state) | {"phase": state.phase.value}))
    for scope, state in world.settings.items():
        expected.append((settings_keys(backend).settings(scope),
                         settings_projection(state) | {"phase": state.phase.value}))
    expected_keys = {key for key, _ in expected}
    for i in range(0, len(expected), _READ_BATCH):   # pipelined: one round trip per batch, not per key
        chunk = expected[i:i + _READ_BATCH]
        async with backend.redis.pipeline(transaction=False) as pipe:
            for key, _ in chunk:
                pipe.hgetall(key)
            lives = await pipe.execute()
        for (key, want), live in zip(chunk, lives):
            diffs += _compare(key, want, live)
    for keys in backend.all_keys():
        for pattern in (keys.action("*"), keys.schedule("*"), keys.settings("*"),
                        keys.trigger("*")):
            async for raw in backend.redis.scan_iter(match=pattern, count=1000):
                name = raw.decode()
                if name not in expected_keys:
                    diffs.append(Difference(name, "<key>", "missing", "exists"))
    return diffs
