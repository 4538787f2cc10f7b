"""Workers and queues: the one query behind the dashboard's /workers and /queues pages and the
``lessor workers`` and ``lessor queues`` commands (both render what these return; neither reads
the store another way).

- ``workers``: the lease index (``reads.live_leases``: who holds what, and the
  latest renewal) joined with the workers' presence entries
  (``scheduler/presence.py``: host, pid, version, last seen). A worker is
  listed if it holds a lease or announced itself within ``presence.STALE_MS``;
  its last heartbeat is the later of its latest renewal and its latest
  announcement (both server time).
- ``queues``: depth and head of each queue (``reads.queue_stats``), for the
  queues named by the namespace's newest runs, by live leases, or by the
  caller; leases per second from the newest ``action_leased`` events.

Every read is bounded (``reads.py`` says the cost of each); none scans the keyspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lessor.core.events import ActionLeased
from lessor.core.ids import check_id
from lessor.leasing.backend import Backend
from lessor.scheduler import presence
from lessor.ui import reads
from lessor.ui.reads import LeaseRow, LiveLeases, QueueRow

RATE_WINDOW_MS = 60_000  # leases/s: over the last minute of the activity read


@dataclass
class WorkerView:
    """One worker: what it announced (None: it holds leases but never announced, e.g. an older
    lessor) and the live leases it holds."""

    worker: str
    presence: presence.Presence | None
    leases: list[LeaseRow] = field(default_factory=list)

    @property
    def last_heartbeat_ms(self) -> int:
        """Its latest lease grant or renewal, or announcement, whichever is later (server ms)."""
        renewed = max((lease.renewed_ms for lease in self.leases), default=0)
        return max(renewed, self.presence.seen_ms if self.presence else 0)

    def overdue(self, now_ms: int) -> int:
        """Leases past their deadline (inside or beyond grace: not renewed on time)."""
        return sum(now_ms > lease.deadline_ms for lease in self.leases)

    def to_json(self, now_ms: int) -> dict:
        """A JSON-ready dict (what ``lessor workers --json`` prints per worker)."""
        p = self.presence
        return {"worker": self.worker, "host": p.host if p else None, "pid": p.pid if p else None,
                "version": p.version if p else None, "namespace": p.namespace if p else None,
                "queue": p.queue if p else None, "concurrency": p.concurrency if p else None,
                "leases_held": len(self.leases), "past_deadline": self.overdue(now_ms),
                "last_heartbeat_ms": self.last_heartbeat_ms,
                "last_heartbeat_age_ms": max(now_ms - self.last_heartbeat_ms, 0),
                "tasks": sorted({lease.task for lease in self.leases}),
                "leases": [{"ref": lease.ref, "token": lease.token, "attempt": lease.attempt, "task": lease.task,
                            "queue": lease.queue, "deadline_ms": lease.deadline_ms} for lease in self.leases]}


@dataclass
class Workers:
    now_ms: int
    rows: list[WorkerView]
    live: LiveLeases
    gone: int          # presence entries older than presence.STALE_MS with no lease (not in rows)


async def workers(backend: Backend) -> Workers:
    """The live workers, busiest first: by their leases and their presence entries."""
    live = await reads.live_leases(backend)
    announced = {p.worker: p for p in await presence.read(backend)}
    rows = {w.worker: WorkerView(w.worker, announced.get(w.worker), list(w.leases)) for w in live.workers}
    gone = 0
    for name, p in announced.items():
        if name in rows:
            continue
        if p.stale(live.now_ms):
            gone += 1
        else:
            rows[name] = WorkerView(name, p)
    ordered = sorted(rows.values(), key=lambda w: (-len(w.leases), w.worker))
    return Workers(live.now_ms, ordered, live, gone)


@dataclass
class QueueView:
    row: QueueRow
    leased: int               # live leases of the queue (of those read)
    per_s: float              # leases per second over the window

    def to_json(self, now_ms: int) -> dict:
        """A JSON-ready dict (what ``lessor queues --json`` prints per queue)."""
        q = self.row
        return {"queue": q.queue, "depth": q.depth, "head": q.head_ref,
                "oldest_waiting_age_ms": max(now_ms - q.head_created_ms, 0) if q.head_created_ms else None,
                "head_attempt": q.head_attempt, "leased_now": self.leased, "leases_per_s": round(self.per_s, 3)}


@dataclass
class Queues:
    namespace: str
    now_ms: int
    rows: list[QueueView]
    live: LiveLeases
    delayed: int              # actions waiting out a retry backoff, every queue
    found: str                # how the queues were found, in words
    window_s: float


async def queues(backend: Backend, namespace: str, named: set[str] = frozenset()) -> Queues:
    """Depth, head age, leases held and leases/s of the namespace's queues (and of ``named``)."""
    for q in named:
        check_id("queue", q)
    live = await reads.live_leases(backend)
    from_runs = await reads.recent_queues(backend, namespace)
    mine = [lease for lease in live.leases if lease.ref.startswith(namespace + "/")]
    leased_queues = {lease.queue for lease in mine}
    rows = await reads.queue_stats(backend, namespace, from_runs | leased_queues | set(named))
    now_ms = await reads.server_ms(backend)
    recent = await reads.recent_events(backend, types=("action_leased",), since_ms=now_ms - RATE_WINDOW_MS)
    rates = await _lease_rates(backend, namespace, recent)
    held: dict[str, int] = {}
    for lease in mine:
        held[lease.queue] = held.get(lease.queue, 0) + 1
    found = (f"{len(from_runs)} named by the namespace's newest runs (50 per partition), "
             f"{len(leased_queues - from_runs)} more by live leases, {len(named)} named by you; "
             "no SCAN of the keyspace")
    return Queues(namespace, now_ms, [QueueView(r, held.get(r.queue, 0), rates.get(r.queue, 0.0)) for r in rows],
                  live, await reads.delayed_count(backend), found, RATE_WINDOW_MS / 1000)


async def _lease_rates(backend: Backend, ns: str, recent: reads.RecentEvents) -> dict[str, float]:
    """Leases per second per queue over the last RATE_WINDOW_MS (or the part of it the read covers)."""
    start = max(recent.now_ms - RATE_WINDOW_MS, recent.since_ms or 0)
    leased = [e for e in recent.events if isinstance(e, ActionLeased) and e.ns == ns and e.ts >= start]
    refs = sorted({f"{e.ns}/{e.run}/{e.action}" for e in leased})
    pipe = backend.redis.pipeline(transaction=False)
    for ref in refs:
        pipe.hget(backend.keys_for_ref(ref).action(ref), "queue")
    queue_of = {ref: (q or b"?").decode() for ref, q in zip(refs, await pipe.execute() if refs else [])}
    seconds = max((recent.now_ms - start) / 1000, 1)
    rates: dict[str, float] = {}
    for e in leased:
        q = queue_of[f"{e.ns}/{e.run}/{e.action}"]
        rates[q] = rates.get(q, 0) + 1 / seconds
    return rates
