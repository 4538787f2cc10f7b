"""Retries and failovers over time: a stacked bar chart (inline SVG) from recent events.

What counts as what, from the events alone:

- **retry**: ``action_requeued`` for the task's own error or a timeout
  (reasons ``user_error``, ``timeout``);
- **failover**: ``action_requeued`` because a lease expired (the reaper
  gave the action to another worker), and ``action_failed`` for the same
  reason when the system retry budget was spent;
- **refused**: ``report_rejected``, a write with a stale fencing token;
- **extended**: ``lease_extended``, a live lease given a full ttl after the
  server's epoch changed (a restart or a failover of the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from lessor.core import events as ev

SERIES = (("retry", "#4e79a7"), ("failover", "#d62728"), ("refused", "#e377c2"), ("extended", "#edc948"))
MEANING = {
    "retry": "action_requeued after the task's own error or a timeout (reasons user_error, timeout)",
    "failover": "a lease expired and the reaper gave the action to another worker (action_requeued, or "
                "action_failed once the system retry budget is spent, with reason lease_expired)",
    "refused": "report_rejected: a write with a stale fencing token, refused",
    "extended": "lease_extended: live leases given a full ttl after the server's epoch changed (its restart or failover)",
}
TYPES = ("action_requeued", "action_failed", "report_rejected", "lease_extended")   # the events kind_of reads
BUCKETS = 30
WIDTH, HEIGHT, LEFT, BOTTOM = 900, 160, 40, 36


def kind_of(e: ev.Event) -> str | None:
    """Which series an event counts in (None: none)."""
    if isinstance(e, ev.ActionRequeued):
        return "failover" if e.reason == "lease_expired" else "retry" if e.reason in ("user_error", "timeout") else None
    if isinstance(e, ev.ActionFailed) and e.reason == "lease_expired":
        return "failover"
    if isinstance(e, ev.ReportRejected):
        return "refused"
    if isinstance(e, ev.LeaseExtended):
        return "extended"
    return None


@dataclass(frozen=True)
class Buckets:
    """Counts per series per time bucket over [start_ms, end_ms)."""

    start_ms: int
    end_ms: int
    counts: list[dict[str, int]]

    @property
    def bucket_ms(self) -> float:
        return (self.end_ms - self.start_ms) / len(self.counts)

    def totals(self) -> dict[str, int]:
        return {name: sum(c[name] for c in self.counts) for name, _ in SERIES}


def bucket(events: list[ev.Event], start_ms: int, end_ms: int, n: int = BUCKETS) -> Buckets:
    """Count the events of each series in ``n`` equal buckets of [start_ms, end_ms]."""
    end_ms = max(end_ms, start_ms + n)
    width = (end_ms - start_ms) / n
    counts = [{name: 0 for name, _ in SERIES} for _ in range(n)]
    for e in events:
        kind = kind_of(e)
        if kind is not None and start_ms <= e.ts <= end_ms:
            counts[min(int((e.ts - start_ms) / width), n - 1)][kind] += 1
    return Buckets(start_ms, end_ms, counts)


def render_svg(b: Buckets) -> str:
    """The buckets as stacked bars, with a legend giving each series' total."""
    top = max([sum(c.values()) for c in b.counts] + [1])
    plot_h = HEIGHT - BOTTOM - 10
    bar_w = (WIDTH - LEFT) / len(b.counts)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<line x1="{LEFT}" y1="{10 + plot_h}" x2="{WIDTH}" y2="{10 + plot_h}" stroke="#999"/>',
           f'<text x="{LEFT - 4}" y="16" text-anchor="end">{top}</text>',
           f'<text x="{LEFT - 4}" y="{10 + plot_h}" text-anchor="end">0</text>']
    colours = dict(SERIES)
    for i, counts in enumerate(b.counts):
        y = 10 + plot_h
        at = b.start_ms + i * b.bucket_ms
        for name, _ in SERIES:
            if counts[name]:
                h = plot_h * counts[name] / top
                y -= h
                out.append(f'<rect x="{LEFT + i * bar_w + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                           f'fill="{colours[name]}" class="bar bar-{name}"><title>{counts[name]} {name} in '
                           f'{b.bucket_ms / 1000:.3g} s from +{(at - b.start_ms) / 1000:.3g} s</title></rect>')
    span_s = (b.end_ms - b.start_ms) / 1000
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 20}">-{span_s:.4g} s</text>'
               f'<text x="{WIDTH}" y="{HEIGHT - 20}" text-anchor="end">now</text>')
    totals = b.totals()
    legend = " · ".join(f'<tspan fill="{c}">■</tspan> {escape(n)} {totals[n]}' for n, c in SERIES)
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 4}">{legend}</text></svg>')
    return "\n".join(out)
