"""A real run's lease timeline, drawn from its events as an SVG: what the simulator draws, for live runs.

Per action a row:

- a bar per lease from its grant, coloured by worker, labelled with the worker
  and the last digits of its fencing token;
- for a lease that expired: the bar to its deadline, the grace window hatched,
  a thin line to the reap and a red cross at it;
- for a live lease: the bar to now, then its remaining ttl outlined and its
  grace hatched (its deadline is the action hash's: on-time renewals write no
  event);
- a thin grey line while the action waits in its queue;
- magenta diamonds for refused (stale-token) reports, an orange triangle for
  an abort request.

The look (palette, row height, label column) is the simulator's
(``lessor/simulations/timeline.py``). Its ``render_svg`` cannot be reused as
is: it draws a ``SimResult``, whose ground truth (what each worker was really
computing), fault plan and heal time a real run does not have; the
lease-building below is the part that real events support.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from lessor.core import events as ev
from lessor.simulations.timeline import LEFT, PALETTE, ROW

WIDTH = 860                 # plot width (px), after the label column
MAX_ROWS = 200              # actions drawn at most (a big fan-out: the first ones)
ENDINGS = {                 # how a lease ended -> (glyph, colour)
    "action_succeeded": ("✓", "#2ca02c"), "action_failed": ("✗", "#d62728"),
    "action_requeued": ("↻", "#555"), "action_timed_out": ("⏱", "#9467bd"),
    "action_aborted": ("■", "#ff7f0e"), "lease_expired": ("×", "#d62728"),
}


@dataclass
class LeaseBar:
    """One lease of one action, from its grant to how it ended (``how``: the ending event's type)."""

    action: str
    attempt: int
    token: int
    worker: str
    start_ms: int
    deadline_ms: int
    grace_ms: int
    end_ms: int | None = None
    how: str = ""
    detail: str = ""
    then: str = ""          # after an expiry: what the reaper decided (requeued, failed, aborted)


@dataclass
class Mark:
    """A point event on an action's row: a refused report, an abort request, a cache hit."""

    action: str
    ts: int
    kind: str
    text: str


@dataclass
class Timeline:
    """Leases, queue waits and marks per action, folded from a run's events."""

    leases: dict[str, list[LeaseBar]] = field(default_factory=dict)
    waits: dict[str, list[list[int | None]]] = field(default_factory=dict)   # [start, end or None]
    marks: list[Mark] = field(default_factory=list)
    order: list[str] = field(default_factory=list)                           # actions by first event

    def open_lease(self, action: str) -> LeaseBar | None:
        leases = self.leases.get(action) or []
        return leases[-1] if leases and leases[-1].end_ms is None else None

    def bounds(self, now_ms: int | None) -> tuple[int, int]:
        """The time axis: from the first event to the last (to the end of a live lease's grace)."""
        times = [t for w in self.waits.values() for span in w for t in span if t is not None]
        times += [m.ts for m in self.marks]
        for leases in self.leases.values():
            for lease in leases:
                times += [lease.start_ms, lease.end_ms or lease.start_ms]
                if lease.end_ms is None:
                    times += [lease.deadline_ms + lease.grace_ms] + ([now_ms] if now_ms else [])
        if any(w[-1][1] is None for w in self.waits.values() if w) and now_ms:
            times.append(now_ms)
        return (min(times), max(times)) if times else (0, 1)


def _close_wait(tl: Timeline, action: str, ts: int) -> None:
    waits = tl.waits.get(action)
    if waits and waits[-1][1] is None:
        waits[-1][1] = ts


def _end_lease(tl: Timeline, e: ev.ActionEvent, detail: str = "") -> None:
    lease = tl.open_lease(e.action)
    if lease is not None:
        lease.end_ms, lease.how, lease.detail = e.ts, e.TYPE, detail
    elif tl.leases.get(e.action) and tl.leases[e.action][-1].how == "lease_expired":
        tl.leases[e.action][-1].then = e.TYPE.removeprefix("action_")


def build_timeline(events: list[ev.Event], live_deadlines: dict[str, int] | None = None) -> Timeline:
    """Fold a run's events (log order) into its timeline.

    ``live_deadlines``: action id -> the deadline its hash holds now, for the
    leases still open (on-time renewals move it without an event).
    """
    tl = Timeline()
    for e in events:
        if not isinstance(e, ev.ActionEvent) or not e.action:
            continue
        if e.action not in tl.order:
            tl.order.append(e.action)
        _apply(tl, e)
    for action, deadline in (live_deadlines or {}).items():
        lease = tl.open_lease(action)
        if lease is not None:
            lease.deadline_ms = max(lease.deadline_ms, deadline)
    return tl


def _apply(tl: Timeline, e: ev.ActionEvent) -> None:
    """One event's mark on the timeline."""
    a = e.action
    if isinstance(e, ev.ActionCreated):
        tl.waits.setdefault(a, []).append([e.ts, None])
    elif isinstance(e, ev.ActionLeased):
        _close_wait(tl, a, e.ts)
        tl.leases.setdefault(a, []).append(LeaseBar(a, e.attempt, e.token, e.worker, e.ts, e.deadline_ms, e.grace_ms))
    elif isinstance(e, (ev.LeaseResumed, ev.LeaseExtended)):
        lease = tl.open_lease(a)
        if lease is not None and lease.token == e.token:
            lease.deadline_ms = e.deadline_ms
    elif isinstance(e, ev.LeaseExpired):
        lease = tl.open_lease(a)
        if lease is not None:
            lease.end_ms, lease.how, lease.deadline_ms, lease.grace_ms = e.ts, e.TYPE, e.deadline_ms, e.grace_ms
            lease.detail = f"reaped {e.ts - e.deadline_ms - e.grace_ms} ms after deadline + grace"
    elif isinstance(e, ev.ActionRequeued):
        _end_lease(tl, e, f"{e.reason}: {e.error}" if e.error else e.reason)
        tl.waits.setdefault(a, []).append([e.ts, None])
    elif isinstance(e, (ev.ActionSucceeded, ev.ActionTimedOut)):
        _end_lease(tl, e)
    elif isinstance(e, (ev.ActionFailed, ev.ActionAborted)):
        _end_lease(tl, e, getattr(e, "error", None) or e.reason)
        _close_wait(tl, a, e.ts)
    elif isinstance(e, ev.CacheHit):
        _close_wait(tl, a, e.ts)
        tl.marks.append(Mark(a, e.ts, "cache", f"cache hit ({e.cache_key})"))
    elif isinstance(e, ev.ReportRejected):
        tl.marks.append(Mark(a, e.ts, "refused", f"refused {e.kind} from {e.worker} token {e.token} "
                                                 f"(current token {e.current_token})"))
    elif isinstance(e, ev.AbortRequested):
        tl.marks.append(Mark(a, e.ts, "abort", f"abort requested: {e.reason}"))


class _Axis:
    """Server ms -> x (px)."""

    def __init__(self, start_ms: int, end_ms: int) -> None:
        self.start_ms, self.span_ms = start_ms, max(end_ms - start_ms, 1)
        self.scale = WIDTH / self.span_ms

    def x(self, ms: int) -> float:
        return LEFT + (ms - self.start_ms) * self.scale

    def w(self, ms: int) -> float:
        return max(1.0, ms * self.scale)


def _ticks(axis: _Axis, y: int, height: int) -> list[str]:
    out = []
    for i in range(6):
        ms = round(axis.span_ms * i / 5)
        x = axis.x(axis.start_ms + ms)
        label = f"+{ms / 1000:.3g} s" if ms else "0"
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{height - 34}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{y - 4}" text-anchor="middle" fill="#666">{label}</text>')
    return out


def _lease_svg(lease: LeaseBar, y: int, axis: _Axis, colour: str, now_ms: int | None) -> list[str]:
    x0 = axis.x(lease.start_ms)
    tip = (f"{lease.worker} · attempt {lease.attempt} · token {lease.token} · "
           f"{lease.how.replace('_', ' ') or 'held now'}{' · ' + lease.detail if lease.detail else ''}"
           f"{' · then ' + lease.then if lease.then else ''}")
    if lease.how == "lease_expired":
        solid_end = lease.deadline_ms
    else:
        solid_end = lease.end_ms if lease.end_ms is not None else (now_ms or lease.deadline_ms)
    out = [f'<g class="lease" data-worker="{escape(lease.worker)}" data-token="{lease.token}">'
           f'<title>{escape(tip)}</title>'
           f'<rect x="{x0:.1f}" y="{y}" width="{axis.w(solid_end - lease.start_ms):.1f}" height="14" '
           f'fill="{colour}" opacity="0.85"/>']
    if axis.w(solid_end - lease.start_ms) > 70:
        out.append(f'<text x="{x0 + 3:.1f}" y="{y + 11}" fill="white">{escape(lease.worker[:18])} '
                   f'…{str(lease.token)[-4:]}</text>')
    if lease.end_ms is None:  # live: the rest of its ttl outlined, its grace hatched
        now = now_ms or lease.start_ms
        if lease.deadline_ms > now:
            out.append(f'<rect x="{axis.x(now):.1f}" y="{y}" width="{axis.w(lease.deadline_ms - now):.1f}" '
                       f'height="14" fill="none" stroke="{colour}" stroke-dasharray="3,2"/>')
        out.append(f'<rect x="{axis.x(lease.deadline_ms):.1f}" y="{y}" width="{axis.w(lease.grace_ms):.1f}" '
                   f'height="14" fill="url(#grace)" opacity="0.6"/>')
    elif lease.how == "lease_expired":
        expiry = lease.deadline_ms + lease.grace_ms
        out.append(f'<rect x="{axis.x(lease.deadline_ms):.1f}" y="{y}" width="{axis.w(lease.grace_ms):.1f}" '
                   f'height="14" fill="url(#grace)"/>'
                   f'<line x1="{axis.x(expiry):.1f}" y1="{y + 7}" x2="{axis.x(lease.end_ms):.1f}" y2="{y + 7}" '
                   f'stroke="#d62728"/>')
    if lease.how in ENDINGS:
        glyph, c = ENDINGS[lease.how]
        out.append(f'<text x="{axis.x(lease.end_ms) + 2:.1f}" y="{y + 12}" fill="{c}" font-size="14" '
                   f'font-weight="bold">{glyph}</text>')
    out.append("</g>")
    return out


def _mark_svg(mark: Mark, y: int, axis: _Axis) -> str:
    cx, cy = axis.x(mark.ts), y + 7
    if mark.kind == "refused":
        tag, attrs = "polygon", (f'points="{cx:.1f},{cy - 7} {cx + 6:.1f},{cy} {cx:.1f},{cy + 7} {cx - 6:.1f},{cy}" '
                                 'fill="#e377c2"')
    elif mark.kind == "abort":
        tag, attrs = "polygon", f'points="{cx - 6:.1f},{cy + 6} {cx + 6:.1f},{cy + 6} {cx:.1f},{cy - 6}" fill="#ff7f0e"'
    else:
        tag, attrs = "circle", f'cx="{cx:.1f}" cy="{cy}" r="5" fill="#17becf"'
    return (f'<{tag} {attrs} stroke="#000" stroke-width="0.5" class="mark mark-{mark.kind}">'
            f'<title>{escape(mark.text)}</title></{tag}>')


def render_svg(tl: Timeline, labels: dict[str, str] | None = None, now_ms: int | None = None,
               actions: list[str] | None = None) -> str:
    """The timeline as an inline SVG element (scales to its container's width).

    ``labels``: action id -> row label (default the id); ``actions``: which rows,
    in order (default every action, in order of first event; at most MAX_ROWS).
    """
    rows = (actions or tl.order)[:MAX_ROWS]
    start, end = tl.bounds(now_ms)
    axis = _Axis(start, end)
    workers = sorted({lease.worker for ls in tl.leases.values() for lease in ls})
    colour = {w: PALETTE[i % len(PALETTE)] for i, w in enumerate(workers)}
    top = 36
    height = top + ROW * len(rows) + 48
    total = LEFT + WIDTH + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {total} {height}" '
           f'width="{total}" height="{height}" font-family="monospace" font-size="11">',
           '<defs><pattern id="grace" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#d62728" '
           'stroke-width="2" opacity="0.5"/></pattern></defs>', *_ticks(axis, top - 8, height)]
    if now_ms is not None and start <= now_ms <= end:
        x = axis.x(now_ms)
        out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{height - 34}" stroke="#333" '
                   f'stroke-dasharray="4,3"/><text x="{x + 3:.1f}" y="{height - 36}">now</text>')
    for i, action in enumerate(rows):
        y = top + ROW * i
        label = (labels or {}).get(action, action)
        out.append(f'<text x="6" y="{y + 12}" class="row-label"><title>{escape(label)}</title>'
                   f'{escape(label[:20])}</text>')
        for span in tl.waits.get(action, []):
            s_end = span[1] if span[1] is not None else (now_ms or span[0])
            out.append(f'<line x1="{axis.x(span[0]):.1f}" y1="{y + 7}" x2="{axis.x(s_end):.1f}" y2="{y + 7}" '
                       f'stroke="#aaa" stroke-width="2"><title>waiting in its queue</title></line>')
        for lease in tl.leases.get(action, []):
            out += _lease_svg(lease, y, axis, colour[lease.worker], now_ms)
    for mark in tl.marks:
        if mark.action in rows:
            out.append(_mark_svg(mark, top + ROW * rows.index(mark.action), axis))
    legend = " · ".join(f'<tspan fill="{colour[w]}">■ {escape(w)}</tspan>' for w in workers)
    out.append(f'<text x="6" y="{height - 20}">{legend}</text>'
               f'<text x="6" y="{height - 6}" fill="#555">bars: leases (worker …token) · hatched: grace · '
               f'<tspan fill="#d62728">×</tspan> reaped · <tspan fill="#e377c2">◆</tspan> stale report refused · '
               f'grey: queued · dashed box: ttl left · server clock, {axis.span_ms} ms in all</text>')
    if len(tl.order) > len(rows) and actions is None:
        out.append(f'<text x="{LEFT}" y="{top - 22}" fill="#a00">first {len(rows)} of {len(tl.order)} actions</text>')
    out.append("</svg>")
    return "\n".join(out)
