"""What the dashboard reads from the server. Every read is bounded, whatever the store holds.

- ``runs_page``: the namespace's runs index (one ZSET per partition, scored by
  creation time), newest first from a cursor, in chunks; at most ``budget``
  runs are examined per page, so a rare filter costs a bounded page with a
  cursor to go on from, never a full scan. The time filter is the index's
  own score range.
- ``run_window``: a run's events. The log has no per-run index: a run's
  events sit in its partition's stream between its creation and its end
  (stream ids are the server's clock, and ``done:<ns>`` holds when each run
  ended). That window is read from both ends, at most ``budget`` entries,
  and entries of other runs are dropped before they are decoded.
- ``live_leases``: the lease index (``LEASES``, one ZSET per partition) and
  the held actions' hashes: the workers page.
- ``queue_stats``: ``ZCARD`` and the head of each queue key per partition.
- ``recent_events``: the newest N entries of each partition (``XREVRANGE COUNT``).
"""

from __future__ import annotations

import asyncio
import fnmatch
from dataclasses import dataclass, field

from lessor.core.codec import decode_entry
from lessor.core.events import Event, ReportRejected
from lessor.core.fold import RUN_ON_ROOT
from lessor.core.ids import action_ref, run_ref, stream_id_key
from lessor.core.keyspace import KEY_FAMILIES
from lessor.core.phases import Phase, TERMINAL, run_phase_of
from lessor.errors import EventDecodeError
from lessor.leasing.backend import Backend
from lessor.scheduler.query import ActionInfo, action_info

_DONE_SUFFIX = next(f.suffix for f in KEY_FAMILIES if f.lua == "done_key")  # when each run ended
_CHILDREN_SUFFIX = next(f.suffix for f in KEY_FAMILIES if f.lua == "children_key")  # an action's children
RUNS_BUDGET = 1_000         # runs examined per runs page at most (filters that rarely match)
WINDOW_BUDGET = 4_000       # stream entries read for one run's events at most (about 5 us each, in Python)
WINDOW_MAX = 200_000        # ... when the page is asked for more (?window=N)
WINDOW_CHUNK = 1_000
LEASES_CAP = 2_000          # live leases read for the workers page at most, over all partitions
RECENT_EVENTS = 4_000       # newest events read for the activity chart, over all partitions


def _resp(command: tuple) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def raw_commands(backend: Backend, commands: list[tuple]) -> list:
    """Send ``commands`` in one round trip and return the server's replies as the parser gives them.

    Why not a redis-py pipeline: its per-command packing and reply callbacks
    cost about twice the whole round trip for the thousands of small reads a
    page makes (measured: 2000 HMGETs, 57-75 ms pipelined against 26-33 ms
    here). Replies keep the protocol's shape: HMGET a list of bytes or None,
    XRANGE a list of ``[id, [field, value, ...]]``. An error reply raises and
    drops the connection (its other replies are unread). On a cluster, whose
    commands must go to the node of each key, this falls back to a pipeline.
    """
    if not commands:
        return []
    if backend.cluster:
        pipe = backend.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()
    pool = backend.redis.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(b"".join(_resp(c) for c in commands))
        return [await conn.read_response() for _ in commands]
    except BaseException:  # cleanup, then re-raised: nothing is swallowed
        await conn.disconnect()  # replies may be left unread on it: never hand it out again as is
        raise
    finally:
        await pool.release(conn)


def _entry_data(row) -> bytes:
    """The event bytes (field ``e``) of a stream entry, raw (``[id, [k, v, ...]]``) or parsed (``(id, {k: v})``)."""
    fields = row[1]
    if isinstance(fields, dict):
        return fields.get(b"e", b"")
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == b"e":
            return fields[i + 1]
    return b""


@dataclass(frozen=True)
class RunRow:
    """One line of the runs page: the run (from its root action's hash: run_view) and its root
    action's phase, attempt, worker, error."""

    namespace: str
    run_id: str
    task: str
    queue: str
    phase: str
    created_ms: int
    aborting: bool
    root_phase: str
    attempt: int
    worker: str
    error: str


@dataclass(frozen=True)
class RunsPage:
    """A page of runs, the cursor of the next one, and how much of the index it took."""

    rows: list[RunRow]
    next_cursor: str | None
    examined: int
    budget_spent: bool           # the page stopped at the budget, not at ``limit`` rows or the index's end


@dataclass(frozen=True)
class RunFilter:
    """What the runs page asks for. ``phase``: a run phase; ``queued``/``running`` are the
    root action's (a run is ``running`` from its submission on). ``task``: a name or a
    glob (``etl.*``). ``since_ms``/``until_ms``: creation time bounds (server ms, inclusive)."""

    phase: str | None = None
    task: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, phase: str, task: str, root_phase: str) -> bool:
        """Whether a run with this phase, task and root action phase is wanted."""
        if self.phase in (Phase.QUEUED, Phase.RUNNING):
            if root_phase != self.phase:
                return False
        elif self.phase and phase != self.phase:
            return False
        return not self.task or fnmatch.fnmatchcase(task, self.task)

    @property
    def selective(self) -> bool:
        return bool(self.phase or self.task)


def parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    """``created_ms:run_id`` (the cursor ``query.list_runs`` also uses) as a pair; ValueError if malformed."""
    if not cursor:
        return None
    created, _, run_id = cursor.partition(":")
    if not created.isdigit() or not run_id:
        raise ValueError(f"bad cursor {cursor!r}: use the link of the previous page")
    return int(created), run_id


async def _partition_chunk(backend: Backend, key: str, top: float | str, bottom: float | str,
                           before: tuple[int, str] | None, n: int) -> list[tuple[int, str]]:
    """Up to ``n`` (created_ms, run id) of one partition's index, newest first, strictly before ``before``.

    Runs created in the same ms as the cursor come first in the range and are
    skipped by offset, so a burst of same-ms runs cannot stall the paging.
    """
    out: list[tuple[int, str]] = []
    offset = 0
    while len(out) < n:
        rows = await backend.redis.zrevrangebyscore(key, top, bottom, start=offset, num=n, withscores=True)
        out += [item for item in ((int(s), m.decode()) for m, s in rows) if before is None or item < before]
        if len(rows) < n:
            break
        offset += n
    return out[:n]


async def _index_chunk(backend: Backend, namespace: str, filt: RunFilter, before: tuple[int, str] | None,
                       n: int) -> tuple[list[tuple[int, str]], bool]:
    """The next ``n`` runs of the namespace, newest first, merged over partitions; and whether
    the index holds nothing after them. One ZREVRANGEBYSCORE per partition, in flight together."""
    top: float | str = "+inf" if filt.until_ms is None else filt.until_ms
    if before is not None:
        top = before[0] if top == "+inf" else min(int(top), before[0])
    bottom: float | str = "-inf" if filt.since_ms is None else filt.since_ms
    chunks = await asyncio.gather(*(_partition_chunk(backend, keys.runs(namespace), top, bottom, before, n)
                                    for keys in backend.all_keys()))
    merged = sorted((item for chunk in chunks for item in chunk), reverse=True)
    exhausted = len(merged) <= n and all(len(c) < n for c in chunks)
    return merged[:n], exhausted


# A run lives on its root action's hash (core/fold.py run_view): one HMGET gives its row.
_ROW_FIELDS = ("task", "queue", "phase", "created_ms", RUN_ON_ROOT["aborting"], "attempt", "worker", "error")


async def _run_rows(backend: Backend, namespace: str, ids: list[str]) -> list[RunRow | None]:
    """The rows of these runs (None for one retired meanwhile): an HMGET of each run's root
    action, one pipeline."""
    commands = [("HMGET", backend.keys_for_run(namespace, run_id).run_root(run_ref(namespace, run_id)), *_ROW_FIELDS)
                for run_id in ids]
    replies = await raw_commands(backend, commands)
    rows: list[RunRow | None] = []
    for run_id, reply in zip(ids, replies):
        phase = run_phase_of(reply[2])
        if phase is None:
            rows.append(None)
            continue
        text = [v.decode("utf-8", "replace") if v is not None else "" for v in reply]
        rows.append(RunRow(namespace=namespace, run_id=run_id, task=text[0], queue=text[1], phase=phase.value,
                           created_ms=int(text[3] or 0), aborting=text[4] == "1", root_phase=text[2],
                           attempt=int(text[5] or 0), worker=text[6], error=text[7]))
    return rows


async def _wanted(backend: Backend, namespace: str, filt: RunFilter, ids: list[str]) -> list[bool]:
    """Which of these runs ``filt`` wants: an HMGET of each run's root action, one pipeline. A
    run retired meanwhile is not wanted."""
    commands = [("HMGET", backend.keys_for_run(namespace, run_id).run_root(run_ref(namespace, run_id)), "phase", "task")
                for run_id in ids]
    out = []
    for root_phase, task in await raw_commands(backend, commands):
        phase = run_phase_of(root_phase)
        out.append(phase is not None and filt.matches(phase.value, (task or b"").decode("utf-8", "replace"),
                                                      root_phase.decode()))
    return out


async def runs_page(backend: Backend, namespace: str, filt: RunFilter = RunFilter(), *, limit: int = 50,
                    cursor: str | None = None, budget: int = RUNS_BUDGET) -> RunsPage:
    """A page of the namespace's runs, newest first, that match ``filt``.

    Stops at ``limit`` rows, at the end of the index, or after examining
    ``budget`` runs (``budget_spent``): the next cursor then goes on from the
    last run examined. Cost per chunk: one ZREVRANGEBYSCORE per partition and
    one pipeline (an HMGET per run examined, with a filter); then two HMGETs
    per row shown. Chunks grow while a filter keeps missing. Raises
    ValueError for a bad cursor.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    before = parse_cursor(cursor)
    picked: list[str] = []
    examined, n = 0, max(limit * 4, 100) if filt.selective else limit
    while True:
        n = max(min(n, budget - examined), 1)
        chunk, exhausted = await _index_chunk(backend, namespace, filt, before, n)
        ids = [run_id for _, run_id in chunk]
        wanted = await _wanted(backend, namespace, filt, ids) if filt.selective else [True] * len(chunk)
        next_cursor, stop = None, False
        for item, ok in zip(chunk, wanted):
            examined += 1
            before = item
            if ok:
                picked.append(item[1])
                if len(picked) == limit:
                    stop = True
                    next_cursor = None if exhausted and item == chunk[-1] else f"{item[0]}:{item[1]}"
                    break
        spent = not stop and not exhausted and examined >= budget
        if spent:
            next_cursor = f"{before[0]}:{before[1]}"
        if stop or exhausted or spent:
            rows = [row for row in await _run_rows(backend, namespace, picked) if row is not None]
            return RunsPage(rows, next_cursor, examined, spent)
        n = min(n * 2, 1000)


@dataclass
class RunWindow:
    """A run's events as read from its window of the stream."""

    events: list[Event]
    entries_read: int
    complete: bool                  # the whole window was read
    gap: tuple[str, str] | None     # the stream ids between which entries were not read
    trimmed: bool                   # compaction trimmed the stream past the run's start: older events archived


async def _read_forward(backend: Backend, stream: str, start: str, end: str, budget: int,
                        keep) -> tuple[int, str | None]:
    """XRANGE ``start``..``end`` in chunks, ``keep`` each row: (entries read, the last id read if the
    budget ran out first, else None)."""
    read, last = 0, None
    while read < budget:
        count = min(WINDOW_CHUNK, budget - read)
        (rows,) = await raw_commands(backend, [("XRANGE", stream, start, end, "COUNT", count)])
        read += len(rows)
        for row in rows:
            keep(row)
        if len(rows) < count:
            return read, None
        last = rows[-1][0].decode()
        start = "(" + last
    return read, last if last is not None else start


async def _read_backward(backend: Backend, stream: str, end: str, stop_after: str, budget: int,
                         keep) -> tuple[int, str]:
    """XREVRANGE from ``end`` back to (not including) ``stop_after``, ``keep`` each row: (entries
    read, the oldest id read; ``stop_after`` itself if everything back to it was read)."""
    read, oldest = 0, stop_after
    while read < budget:
        count = min(WINDOW_CHUNK, budget - read)
        (rows,) = await raw_commands(backend, [("XREVRANGE", stream, end, "(" + stop_after, "COUNT", count)])
        read += len(rows)
        for row in rows:
            keep(row)
        if len(rows) < count:
            return read, stop_after
        oldest = rows[-1][0].decode()
        end = "(" + oldest
    return read, oldest


async def run_window(backend: Backend, namespace: str, run_id: str, created_ms: int, *,
                     rejected: int = 0, budget: int = WINDOW_BUDGET) -> RunWindow:
    """The run's events, in log order, read from its window of its partition's stream.

    The window is [created_ms, the run's end in ``done:<ns>``] (to the stream's
    end for a live run); when the run's actions count more refused reports
    (``rejected``) than the window shows, it goes on past the end for them (a
    late report of a worker that lost its lease comes after the run ended).
    Half the budget reads forward from the start, the rest back from the end;
    a window longer than the budget leaves a ``gap``. Entries of other runs are
    dropped by a byte test on the raw entry before anything is decoded.
    """
    keys = backend.keys_for_run(namespace, run_id)
    pipe = backend.redis.pipeline(transaction=False)
    pipe.zscore(keys.prefix + _DONE_SUFFIX + namespace, run_id)
    pipe.hget(keys.named("SNAPSHOT"), "trimmed")
    done, trimmed_mark = await pipe.execute()
    needle = run_id.encode()
    found: dict[bytes, list[Event]] = {}   # entry id -> this run's events in it (an entry: one call's)

    def keep(row) -> None:
        data = _entry_data(row)
        if needle not in data or row[0] in found:
            return
        try:
            events = decode_entry(data, row[0].decode())
        except EventDecodeError:
            return
        mine = [e for e in events if e.run == run_id and e.ns == namespace]
        if mine:
            found[row[0]] = mine

    start, end = str(created_ms), str(int(done)) if done is not None else "+"
    read, stopped = await _read_forward(backend, keys.stream, start, end, budget // 2, keep)
    gap = None
    if stopped is not None:
        more, oldest = await _read_backward(backend, keys.stream, end, stopped, budget - read, keep)
        read += more
        gap = (stopped, oldest) if oldest != stopped else None
    if done is not None and sum(isinstance(e, ReportRejected) for es in found.values() for e in es) < rejected:
        more, _ = await _read_forward(backend, keys.stream, "(" + _last_id(end), "+", max(budget - read, WINDOW_CHUNK),
                                      keep)
        read += more
    events = [e for k in sorted(found, key=lambda i: stream_id_key(i.decode())) for e in found[k]]
    trimmed = trimmed_mark is not None and stream_id_key(trimmed_mark.decode()) >= (created_ms, 0)
    return RunWindow(events, read, gap is None, gap, trimmed)


def _last_id(ms: str) -> str:
    """The last possible stream id of a ms (XRANGE's end ``ms`` includes every sequence of it)."""
    return f"{ms}-18446744073709551615"


async def children(backend: Backend, namespace: str, run_id: str, action_id: str) -> list[ActionInfo]:
    """The children of one action (its ``ch:`` set, then their hashes pipelined), in id order."""
    keys = backend.keys_for_run(namespace, run_id)
    ids = sorted(c.decode() for c in await backend.redis.smembers(
        keys.prefix + _CHILDREN_SUFFIX + action_ref(namespace, run_id, action_id)))
    pipe = backend.redis.pipeline(transaction=False)
    for child in ids:
        pipe.hgetall(keys.action(action_ref(namespace, run_id, child)))
    return [action_info(h) for h in (await pipe.execute() if ids else []) if h]


@dataclass(frozen=True)
class LeaseRow:
    """A live lease, as the lease index and the action's hash have it."""

    ref: str
    worker: str
    token: int
    attempt: int
    task: str
    queue: str
    deadline_ms: int
    ttl_ms: int
    grace_ms: int

    @property
    def renewed_ms(self) -> int:
        """When the lease was last granted or renewed: a renewal sets deadline = now + ttl."""
        return self.deadline_ms - self.ttl_ms


@dataclass
class WorkerRow:
    """A worker as its leases show it."""

    worker: str
    leases: list[LeaseRow] = field(default_factory=list)

    @property
    def last_heartbeat_ms(self) -> int:
        return max(lease.renewed_ms for lease in self.leases)

    def overdue(self, now_ms: int) -> int:
        """Leases past their deadline (inside or beyond grace: not renewed on time)."""
        return sum(now_ms > lease.deadline_ms for lease in self.leases)


@dataclass
class LiveLeases:
    now_ms: int
    workers: list[WorkerRow]
    leases: list[LeaseRow]
    total: int               # live leases in the lease index (ZCARD): more than ``leases`` when the read was capped

    @property
    def truncated(self) -> bool:
        return self.total > len(self.leases)


_LEASE_FIELDS = ("worker", "token", "attempt", "task", "queue", "deadline_ms", "ttl_ms", "grace_ms", "phase")


async def server_ms(backend: Backend) -> int:
    """The server's clock (it judges every deadline), in ms."""
    seconds, micros = await backend.redis.time()
    return seconds * 1000 + micros // 1000


async def live_leases(backend: Backend, cap: int = LEASES_CAP) -> LiveLeases:
    """The live leases, grouped by worker, busiest first: all of them, or the ``cap`` (shared
    evenly by the partitions) lowest in the lease index, the oldest grants not yet re-scored.

    Cost: one ZRANGE + ZCARD per partition, then one HMGET per lease, pipelined.
    """
    now_ms = await server_ms(backend)
    pipe = backend.redis.pipeline(transaction=False)
    for keys in backend.all_keys():
        pipe.zrange(keys.leases, 0, max(cap // backend.partitions, 1) - 1)
        pipe.zcard(keys.leases)
    replies = await pipe.execute()
    refs = [r.decode() for i in range(0, len(replies), 2) for r in replies[i]]
    total = sum(replies[i + 1] for i in range(0, len(replies), 2))
    commands = [("HMGET", backend.keys_for_ref(ref).action(ref), *_LEASE_FIELDS) for ref in refs]
    leases = []
    for ref, h in zip(refs, await raw_commands(backend, commands)):
        v = [x.decode("utf-8", "replace") if x is not None else "" for x in h]
        if v[8] != Phase.RUNNING:
            continue  # ended between the two reads
        leases.append(LeaseRow(ref=ref, worker=v[0], token=int(v[1] or 0), attempt=int(v[2] or 0), task=v[3],
                               queue=v[4], deadline_ms=int(v[5] or 0), ttl_ms=int(v[6] or 0), grace_ms=int(v[7] or 0)))
    by_worker: dict[str, WorkerRow] = {}
    for lease in leases:
        by_worker.setdefault(lease.worker, WorkerRow(lease.worker)).leases.append(lease)
    workers = sorted(by_worker.values(), key=lambda w: (-len(w.leases), w.worker))
    return LiveLeases(now_ms, workers, leases, total)


@dataclass(frozen=True)
class QueueRow:
    """One queue of a namespace: how many actions wait, and the head (the next to be leased)."""

    queue: str
    depth: int
    head_ref: str | None
    head_created_ms: int | None
    head_attempt: int


async def recent_queues(backend: Backend, namespace: str, per_partition: int = 50) -> set[str]:
    """The queues named by the namespace's newest runs (``per_partition`` of each partition's index).

    Queues have no registry and an empty queue has no key; this finds the
    queues recent runs were submitted to (child actions on other queues show
    up through their leases, or by name in the page's queue box).
    """
    pipe = backend.redis.pipeline(transaction=False)
    for keys in backend.all_keys():
        pipe.zrevrange(keys.runs(namespace), 0, per_partition - 1)
    ids = [r.decode() for reply in await pipe.execute() for r in reply]
    commands = [("HGET", backend.keys_for_run(namespace, run_id).run_root(run_ref(namespace, run_id)), "queue")
                for run_id in ids]
    return {q.decode() for q in await raw_commands(backend, commands) if q}


async def queue_stats(backend: Backend, namespace: str, queues: set[str]) -> list[QueueRow]:
    """Depth and head of each queue, summed over partitions: a ZCARD and a ZRANGE 0 0 per
    queue and partition, then an HMGET per head, pipelined. The head is the action the
    next acquire takes (top priority, then first enqueued); its age is since its creation."""
    names = sorted(queues)
    pipe = backend.redis.pipeline(transaction=False)
    for q in names:
        for keys in backend.all_keys():
            pipe.zcard(keys.queue(namespace, q))
            pipe.zrange(keys.queue(namespace, q), 0, 0, withscores=True)
    replies = iter(await pipe.execute() if names else [])
    heads: dict[str, list[tuple[float, str]]] = {}
    depth: dict[str, int] = {}
    for q in names:
        depth[q], heads[q] = 0, []
        for _ in backend.all_keys():
            depth[q] += next(replies)
            heads[q] += [(score, ref.decode()) for ref, score in next(replies)]
    head_refs = {q: min(h)[1] for q, h in heads.items() if h}
    pipe = backend.redis.pipeline(transaction=False)
    for ref in head_refs.values():
        pipe.hmget(backend.keys_for_ref(ref).action(ref), "created_ms", "attempt")
    info = dict(zip(head_refs.values(), await pipe.execute() if head_refs else []))
    rows = []
    for q in names:
        ref = head_refs.get(q)
        created, attempt = info.get(ref, (None, None)) if ref else (None, None)
        rows.append(QueueRow(q, depth[q], ref, int(created) if created else None, int(attempt or 0)))
    return rows


async def delayed_count(backend: Backend) -> int:
    """Actions waiting out a retry backoff (every namespace and queue): ZCARD DELAYED per partition."""
    pipe = backend.redis.pipeline(transaction=False)
    for keys in backend.all_keys():
        pipe.zcard(keys.delayed)
    return sum(await pipe.execute())


@dataclass
class RecentEvents:
    """The newest events of every partition, and since when they are complete for all of them."""

    events: list[Event]        # oldest first (only the types asked for)
    since_ms: int | None       # from here on no partition's events were cut off by the read's COUNT
    now_ms: int
    read: int = 0              # log entries read
    oldest_ms: int | None = None   # the oldest entry read


def recent_per_partition(partitions: int) -> int:
    """How many of each partition's newest events the activity read takes: RECENT_EVENTS in all, 100 to 1000 each."""
    return max(100, min(1000, RECENT_EVENTS // partitions))


async def recent_events(backend: Backend, per_partition: int | None = None, *, types: tuple[str, ...] = (),
                        since_ms: int | None = None) -> RecentEvents:
    """The newest ``per_partition`` events of each partition (no older than ``since_ms``): one
    XREVRANGE COUNT each, pipelined. With ``types``, entries of other types are dropped by a byte
    test before they are decoded."""
    per_partition = per_partition or recent_per_partition(backend.partitions)
    now_ms = await server_ms(backend)
    commands = [("XREVRANGE", keys.stream, "+", since_ms if since_ms is not None else "-", "COUNT", per_partition)
                for keys in backend.all_keys()]
    wanted = [t.encode() for t in types]
    events: list[Event] = []
    since = oldest = None
    read = 0
    for rows in await raw_commands(backend, commands):
        read += len(rows)
        if rows:
            last = stream_id_key(rows[-1][0].decode())[0]
            oldest = last if oldest is None else min(oldest, last)
        if len(rows) == per_partition:  # cut off: complete only from its oldest entry on
            oldest = stream_id_key(rows[-1][0].decode())[0]
            since = oldest if since is None else max(since, oldest)
        for row in rows:
            data = _entry_data(row)
            if wanted and not any(t in data for t in wanted):
                continue
            try:
                entry = decode_entry(data, row[0].decode())
            except EventDecodeError:
                continue  # not lessor's, or damaged: the event log's readers skip it the same way
            events += [e for e in entry if not types or e.TYPE in types]
    events.sort(key=lambda e: (e.ts, stream_id_key(e.id), e.index))
    return RecentEvents(events, since, now_ms, read, oldest)


async def log_positions(backend: Backend) -> dict[int, str]:
    """The newest stream id of every partition ("0" if empty): one XREVRANGE COUNT 1 each, pipelined."""
    pipe = backend.redis.pipeline(transaction=False)
    for keys in backend.all_keys():
        pipe.xrevrange(keys.stream, "+", "-", count=1)
    return {p: rows[0][0].decode() if rows else "0" for p, rows in enumerate(await pipe.execute())}


def is_terminal(phase: str) -> bool:
    return phase in TERMINAL
