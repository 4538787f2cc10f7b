"""The dashboard's bounded reads and its drawings, on a real server (part of ``make test``)."""

from __future__ import annotations

import pytest

from lessor.core import events as ev
from lessor.core.ids import new_run_id
from lessor.scheduler.query import list_runs
from lessor.scheduler.submit import RunSpec, submit_runs
from lessor.ui import chart, reads, timeline

pytestmark = pytest.mark.anyio
NS = "proj/development"


async def burst(backend, n: int, task: str = "square") -> list[str]:
    """``n`` runs in one call per partition: each partition's runs share one creation ms."""
    return [s.run_id for s in await submit_runs(backend, [RunSpec(task=task, namespace=NS) for _ in range(n)])]


async def all_pages(backend, filt=reads.RunFilter(), limit: int = 7, budget: int = reads.RUNS_BUDGET):
    pages, cursor = [], None
    while True:
        page = await reads.runs_page(backend, NS, filt, limit=limit, cursor=cursor, budget=budget)
        pages.append(page)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


async def test_paging_walks_every_run_once_in_list_runs_order_through_same_ms_bursts(backend):
    ids = await burst(backend, 120) + await burst(backend, 40, task="other")
    pages = await all_pages(backend)
    seen = [r.run_id for p in pages for r in p.rows]
    assert sorted(seen) == sorted(ids)                      # every run once
    expected, cursor = [], None                             # the same order and cursor as the API's list_runs
    while True:
        page, cursor = await list_runs(backend, NS, limit=25, cursor=cursor)
        expected += [r.run_id for r in page]
        if cursor is None:
            break
    assert seen == expected
    assert all(len(p.rows) == 7 for p in pages[:-1]) and not any(p.budget_spent for p in pages)


async def test_a_filter_that_rarely_matches_costs_a_bounded_page(backend):
    others = await burst(backend, 150, task="other")
    wanted = await burst(backend, 3, task="rare")
    await burst(backend, 150, task="other")
    filt = reads.RunFilter(task="ra*")
    first = await reads.runs_page(backend, NS, filt, limit=10, budget=100)
    assert first.examined == 100 and first.budget_spent and first.next_cursor and first.rows == []
    pages = await all_pages(backend, filt, limit=10, budget=100)
    assert sorted(r.run_id for p in pages for r in p.rows) == sorted(wanted)
    assert sum(p.examined for p in pages) == len(others) + 150 + 3 and all(p.examined <= 100 for p in pages)


async def test_the_time_filter_is_the_index_range(backend):
    await burst(backend, 10)
    now = await reads.server_ms(backend)
    assert len((await reads.runs_page(backend, NS, reads.RunFilter(since_ms=now + 1000))).rows) == 0
    assert len((await reads.runs_page(backend, NS, reads.RunFilter(until_ms=now - 60_000))).rows) == 0
    assert len((await reads.runs_page(backend, NS, reads.RunFilter(since_ms=now - 60_000, until_ms=now))).rows) == 10


async def test_a_run_window_longer_than_the_budget_is_read_from_both_ends_and_says_so(backend):
    (run_id,) = await burst(backend, 1)
    partition = backend.keys_for_run(NS, run_id).partition
    # Enough entries in the same partition after it that its window (to now: it is live) exceeds the
    # budget: a submit call writes one entry, so the crowd is submitted a run per call.
    crowd: list[RunSpec] = []
    while len(crowd) < 150:   # 150 entries past a budget of 100, whatever partitions the random ids land in
        spec = RunSpec(task="square", namespace=NS, run_id=new_run_id())
        if backend.keys_for_run(NS, spec.run_id).partition == partition:
            crowd.append(spec)
    for spec in crowd:
        await submit_runs(backend, [spec])
    from lessor.scheduler.control import abort_run

    await abort_run(backend, NS, run_id, "end of the window")   # its last events, after the crowd
    created = next(r.created_ms for r in (await reads.runs_page(backend, NS, limit=500)).rows if r.run_id == run_id)
    full = await reads.run_window(backend, NS, run_id, created)
    assert full.complete and full.gap is None
    cut = await reads.run_window(backend, NS, run_id, created, budget=100)
    assert not cut.complete and cut.gap is not None and cut.entries_read <= 100
    types = [e.TYPE for e in cut.events]
    assert types[:2] == ["run_created", "action_created"] and "run_completed" in types   # both ends kept
    assert [e.TYPE for e in full.events] == types


def test_the_timeline_of_a_failover(tmp_path):
    base = {"ns": NS, "run": "r1", "action": "a0"}
    events = [
        ev.ActionCreated(**base, ts=1000, task="t", queue="q"),
        ev.ActionLeased(**base, ts=1010, attempt=1, token=11, worker="w1", ttl_ms=500, grace_ms=200, deadline_ms=1510),
        ev.LeaseExpired(**base, ts=1800, attempt=1, token=11, worker="w1", deadline_ms=1510, grace_ms=200),
        ev.ActionRequeued(**base, ts=1800, reason="lease_expired", error="lease expired"),
        ev.ActionLeased(**base, ts=1900, attempt=2, token=12, worker="w2", ttl_ms=500, grace_ms=200, deadline_ms=2400),
        ev.ActionSucceeded(**base, ts=2100, attempt=2, token=12, worker="w2"),
        ev.ReportRejected(**base, ts=2300, kind="complete", token=11, worker="w1", current_token=12),
    ]
    tl = timeline.build_timeline(events)
    first, second = tl.leases["a0"]
    assert (first.worker, first.how, first.then, first.end_ms) == ("w1", "lease_expired", "requeued", 1800)
    assert (second.worker, second.how, second.end_ms) == ("w2", "action_succeeded", 2100)
    assert tl.waits["a0"] == [[1000, 1010], [1800, 1900]]
    assert [m.kind for m in tl.marks] == ["refused"]
    svg = timeline.render_svg(tl)
    assert svg.count('class="lease"') == 2 and 'url(#grace)' in svg and "mark-refused" in svg


def test_a_live_lease_takes_its_deadline_from_the_hash():
    base = {"ns": NS, "run": "r1", "action": "a0"}
    events = [ev.ActionLeased(**base, ts=0, attempt=1, token=5, worker="w", ttl_ms=100, grace_ms=50, deadline_ms=100)]
    tl = timeline.build_timeline(events, {"a0": 900})       # renewed on time since: no event, the hash moved
    assert tl.leases["a0"][0].deadline_ms == 900 and tl.bounds(now_ms=850) == (0, 950)
    assert 'stroke-dasharray="3,2"' in timeline.render_svg(tl, now_ms=850)   # the ttl still left, outlined


def test_the_chart_counts_each_kind():
    base = {"ns": NS, "run": "r", "action": "a0"}
    events = [ev.ActionRequeued(**base, ts=10, reason="user_error"), ev.ActionRequeued(**base, ts=20, reason="timeout"),
              ev.ActionRequeued(**base, ts=30, reason="lease_expired"),
              ev.ActionRequeued(**base, ts=40, reason="released"),
              ev.ActionFailed(**base, ts=50, reason="lease_expired"),
              ev.ReportRejected(**base, ts=60, kind="renew", token=1, worker="w"),
              ev.LeaseExtended(**base, ts=70, attempt=1, token=1, worker="w", deadline_ms=100)]
    b = chart.bucket(events, 0, 100, n=10)
    assert b.totals() == {"retry": 2, "failover": 2, "refused": 1, "extended": 1}
    assert chart.render_svg(b).count("<rect") == 6
