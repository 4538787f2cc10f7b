"""A picture of one simulation: per action, who held which lease when, and what happened.

SVG, written by hand (no plotting dependency). Per action a row:
- a bar per lease, from grant to its end, coloured by worker, labelled with worker and token;
- a hatched box for the grace window of a lease that expired, and a red cross at the reap;
- magenta diamonds for refused (stale) reports;
- thin lines under the bars: when each worker was really computing (ground truth).
Faults are drawn as bands above the rows; the dashed line is the heal.
"""

from __future__ import annotations

from html import escape

from lessor.core import events as ev
from lessor.simulations.plan import SYSTEM_FAULT_KINDS
from lessor.simulations.simulator import SERVER_EPOCH_MS, SimResult

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#bab0ab"]
ROW, LEFT, TOP, WIDTH = 26, 150, 40, 1100


def _leases(result: SimResult) -> dict[str, list[dict]]:
    """Per action ref: its leases with start, end, worker, token, deadline, how they ended."""
    out: dict[str, list[dict]] = {}
    open_lease: dict[str, dict] = {}
    for entry in result.entries:
        e = entry.event
        if not isinstance(e, ev.ActionEvent) or not e.action:
            continue
        ref = f"{e.ns}/{e.run}/{e.action}"
        out.setdefault(ref, [])
        if isinstance(e, ev.ActionLeased):
            lease = {"start": e.ts, "end": None, "worker": e.worker, "token": e.token, "grace": e.grace_ms,
                     "deadline": e.deadline_ms, "how": ""}
            out[ref].append(lease)
            open_lease[ref] = lease
        elif isinstance(e, ev.LeaseResumed) and ref in open_lease:
            open_lease[ref]["deadline"] = e.deadline_ms
        elif ref in open_lease and isinstance(e, (ev.LeaseExpired, ev.ActionSucceeded, ev.ActionFailed,
                                                  ev.ActionRequeued, ev.ActionAborted, ev.ActionTimedOut)):
            lease = open_lease.pop(ref)
            lease["end"], lease["how"] = e.ts, e.TYPE
    for ref, leases in out.items():
        for lease in leases:
            renewals = [r.server_ms for r in result.truth.reports if r.ref == ref and r.token == lease["token"]
                        and r.kind == "renew" and r.answer in ("OK", "RESUMED") and r.server_ms]
            if renewals:
                lease["deadline"] = max(lease["deadline"], max(renewals) + result.plan.config.ttl_ms)
    return out


def render_svg(result: SimResult) -> str:
    """The timeline of a simulation as an SVG document."""
    leases = _leases(result)
    refs = sorted(leases, key=lambda r: (min([x["start"] for x in leases[r]], default=0), r))
    # One axis: the server's clock (it judges deadlines); true times are mapped onto it.
    truth = result.truth
    server_end = max([truth.server_time(truth.end_ms, SERVER_EPOCH_MS)] + [e.event.ts for e in result.entries])
    start = min([SERVER_EPOCH_MS] + [e.event.ts for e in result.entries])
    end_ms = max(server_end - start, 1)
    scale = WIDTH / end_ms
    x = lambda server_ms: LEFT + (server_ms - start) * scale  # noqa: E731
    xt = lambda true_ms: x(truth.server_time(true_ms, SERVER_EPOCH_MS))  # noqa: E731
    workers = sorted({lease["worker"] for ls in leases.values() for lease in ls}
                     | {x_.worker for x_ in result.truth.executions})
    colour = {w: PALETTE[i % len(PALETTE)] for i, w in enumerate(workers)}
    faults = [f for f in result.plan.faults if f.at_ms < result.plan.heal_ms]
    top = TOP + 14 * len(faults) + 10
    height = top + ROW * len(refs) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 40}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           '<defs><pattern id="grace" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#d62728" '
           'stroke-width="2" opacity="0.5"/></pattern></defs>',
           f'<text x="10" y="18" font-size="13">lessor simulation: seed {result.plan.seed}, '
           f'{result.plan.workers} workers, {len(result.plan.submits)} runs, {len(faults)} faults '
           f'(rows: run/action; bar labels: worker and the last digits of its fencing token)</text>']
    for i, f in enumerate(faults):
        y = TOP + 14 * i
        w = max(2.0, xt(min(f.at_ms + max(f.duration_ms, 1), result.plan.heal_ms)) - xt(f.at_ms))
        who = f"w{f.worker}" if f.kind not in SYSTEM_FAULT_KINDS else "system"
        out.append(f'<rect x="{xt(f.at_ms):.1f}" y="{y}" width="{w:.1f}" height="10" fill="#999" opacity="0.5"/>'
                   f'<text x="{xt(f.at_ms) + w + 3:.1f}" y="{y + 9}">{escape(f.kind)} {who}</text>')
    heal = xt(result.plan.heal_ms)
    out.append(f'<line x1="{heal:.1f}" y1="{TOP - 5}" x2="{heal:.1f}" y2="{height - 40}" stroke="#333" '
               f'stroke-dasharray="4,3"/><text x="{heal + 3:.1f}" y="{height - 44}">heal</text>')
    for row, ref in enumerate(refs):
        y = top + ROW * row
        out.append(f'<text x="10" y="{y + 13}">{escape(ref.split("/", 2)[2])}</text>')
        for lease in leases[ref]:
            end = lease["end"] or server_end
            c = colour[lease["worker"]]
            out.append(f'<rect x="{x(lease["start"]):.1f}" y="{y}" width="{max(1.0, (end - lease["start"]) * scale):.1f}" '
                       f'height="14" fill="{c}" opacity="0.8"><title>{escape(lease["worker"])} token {lease["token"]} '
                       f'{escape(lease["how"])}</title></rect>'
                       f'<text x="{x(lease["start"]) + 2:.1f}" y="{y + 11}" fill="white">{escape(lease["worker"])} '
                       f'…{str(lease["token"])[-4:]}</text>')
            if lease["how"] == "lease_expired":
                gx = x(lease["deadline"])
                out.append(f'<rect x="{gx:.1f}" y="{y}" width="{lease["grace"] * scale:.1f}" height="14" '
                           f'fill="url(#grace)"/><text x="{x(end) - 4:.1f}" y="{y + 12}" fill="#d62728" '
                           f'font-size="14" font-weight="bold">×</text>')
        for xe in result.truth.executions:
            if xe.ref == ref and xe.end_server_ms is not None:
                out.append(f'<line x1="{x(xe.start_server_ms):.1f}" y1="{y + 18}" x2="{x(xe.end_server_ms):.1f}" y2="{y + 18}" '
                           f'stroke="{colour[xe.worker]}" stroke-width="3"><title>{escape(xe.worker)} computing '
                           f'({escape(xe.ended)})</title></line>')
    for entry in result.entries:
        e = entry.event
        if isinstance(e, ev.ReportRejected):
            ref = f"{e.ns}/{e.run}/{e.action}"
            if ref in refs:
                y = top + ROW * refs.index(ref) + 7
                cx = x(e.ts)
                out.append(f'<polygon points="{cx:.1f},{y - 6} {cx + 5:.1f},{y} {cx:.1f},{y + 6} {cx - 5:.1f},{y}" '
                           f'fill="#e377c2" stroke="#000" stroke-width="0.5"><title>refused {escape(e.kind)} from '
                           f'{escape(e.worker)} token {e.token}</title></polygon>')
    ly = height - 20
    legend = " · ".join(f'<tspan fill="{colour[w]}">■ {escape(w)}</tspan>' for w in workers)
    out.append(f'<text x="10" y="{ly}">{legend} · bars: leases · hatched: grace window · '
               f'<tspan fill="#d62728">×</tspan>: reaped · <tspan fill="#e377c2">◆</tspan>: stale report refused · '
               f'thin lines: really computing · x: server clock, {end_ms} ms in all</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_timeline(result: SimResult, path: str) -> None:
    """Write the SVG timeline to ``path``."""
    with open(path, "w") as f:
        f.write(render_svg(result))
