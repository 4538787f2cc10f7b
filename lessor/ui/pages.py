"""The dashboard's HTML: plain f-strings, every value escaped, a little vanilla JavaScript.

Each ``*_page`` function takes what ``app.py`` read and returns the whole
document. Times are the server's clock, shown in UTC.
"""

from __future__ import annotations

import datetime as dt
import json
from html import escape
from urllib.parse import quote, urlencode

from lessor.core import events as ev
from lessor.core.limits import MAX_TRACEBACK
from lessor.core.phases import Phase
from lessor.scheduler.query import ActionInfo, ActionNode, RunInfo
from lessor.ui import chart
from lessor.scheduler.presence import ANNOUNCE_MS, STALE_MS
from lessor.ui.fleet import Queues, Workers
from lessor.ui.reads import RecentEvents, RunsPage, RunWindow
from lessor.ui.timeline import Timeline

ERROR_CUT = 160     # characters of an error shown in a table cell (all of it in its tooltip)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header a.on{color:#fff;font-weight:600;border-bottom:2px solid #fff}
header .brand{font-weight:700;color:#fff}header .srv{margin-left:auto;font-size:12px;color:#9fb3c8}
main{padding:12px 16px}h1{font-size:18px;margin:8px 0}h2{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f0f3f6;font-weight:600}tr:hover td{background:#f7fbff}
td.err{color:#a00;max-width:420px;overflow-wrap:anywhere}code,.mono{font-family:ui-monospace,monospace;font-size:12px}
.phase{padding:1px 6px;border-radius:8px;font-size:12px;color:#fff;background:#777;white-space:nowrap}
.phase-succeeded{background:#2ca02c}.phase-failed{background:#d62728}.phase-running{background:#1f77b4}
.phase-queued{background:#8c8c8c}.phase-aborted{background:#ff7f0e}.phase-timed_out{background:#9467bd}
.note{color:#555;font-size:12px;margin:6px 0}.warn{color:#a60}form.filters{display:flex;gap:8px;flex-wrap:wrap;
align-items:end;margin-bottom:10px}form.filters label{display:flex;flex-direction:column;font-size:12px;color:#555}
.pager{margin:10px 0;display:flex;gap:14px}.svgbox{overflow-x:auto;background:#fff;border:1px solid #eee;padding:4px}
.tree td:first-child{white-space:nowrap}.badge{font-size:11px;padding:1px 5px;border-radius:4px;background:#eef}
button.abort{background:#d62728;color:#fff;border:0;padding:5px 12px;border-radius:4px;cursor:pointer}
#tail[data-state=open] .state{color:#2ca02c}.state{font-size:12px;color:#a60}dl.kv{display:grid;
grid-template-columns:max-content auto;gap:2px 14px;background:#fff;padding:8px;border:1px solid #eee}dl.kv dt{color:#555}
dl.kv dd{margin:0}
"""

TAIL_JS = """
(function(){
  const box = document.getElementById('tail'); if (!box) return;
  const body = box.querySelector('tbody');
  const es = new EventSource(box.dataset.src);
  es.onopen = () => { box.dataset.state = 'open'; box.querySelector('.state').textContent = 'live'; };
  es.onerror = () => { box.dataset.state = 'reconnecting'; box.querySelector('.state').textContent = 'reconnecting…'; };
  es.addEventListener('event', (m) => {
    const e = JSON.parse(m.data);
    const tr = document.createElement('tr'); tr.className = 'tail-row'; tr.dataset.run = e.run;
    const cells = [e.time, e.type, null, e.action, e.summary];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      if (i === 2) { const a = document.createElement('a'); a.href = e.href; a.textContent = e.run; td.appendChild(a); }
      else { td.textContent = text; }
      if (i < 2) td.className = 'mono';
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.children.length > 200) body.removeChild(body.lastChild);
  });
  es.addEventListener('gap', (m) => {
    const tr = document.createElement('tr'); const td = document.createElement('td');
    td.colSpan = 5; td.className = 'warn'; td.textContent = 'gap: ' + m.data; tr.appendChild(td);
    body.insertBefore(tr, body.firstChild);
  });
  window.addEventListener('beforeunload', () => es.close());
})();
"""

ABORT_JS = """
document.querySelectorAll('button.abort').forEach((b) => b.addEventListener('click', async () => {
  if (!confirm('Abort run ' + b.dataset.run + '?')) return;
  // The custom header makes a cross-site form or fetch impossible without a CORS preflight we never grant.
  const r = await fetch(b.dataset.href, {method: 'POST', headers: {'X-Lessor-Abort': '1'}});
  const t = await r.text(); alert(t); location.reload();
}));
"""


def fmt_time(ms: int | None) -> str:
    """Server ms as UTC ``YYYY-MM-DD HH:MM:SS.mmmZ`` ('' for None/0)."""
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def fmt_age(ms: int | float) -> str:
    """A duration in ms, short: 850 ms, 3.2 s, 4.0 min, 2.5 h, 3.0 d."""
    if ms < 1000:
        return f"{ms:.0f} ms"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000)):
        if ms >= size:
            return f"{ms / size:.1f} {unit}"
    return f"{ms / 1000:.1f} s"


def phase_badge(phase: str) -> str:
    return f'<span class="phase phase-{escape(phase)}">{escape(phase.replace("_", " "))}</span>'


def run_href(namespace: str, run_id: str, action_id: str | None = None) -> str:
    path = f"/runs/{quote(namespace)}/{quote(run_id)}"
    return f"{path}/{quote(action_id)}" if action_id else path


def _err_cell(error: str | None) -> str:
    if not error:
        return '<td class="err"></td>'
    short = error if len(error) <= ERROR_CUT else error[:ERROR_CUT] + "…"
    return f'<td class="err" title="{escape(error)}">{escape(short)}</td>'


def layout(title: str, active: str, body: str, *, namespace: str, server: str, allow_abort: bool,
           script: str = "") -> str:
    """The whole document around a page's body."""
    q = "?" + urlencode({"ns": namespace})
    links = [("runs", "/runs" + q, "Runs"), ("workers", "/workers", "Workers"), ("queues", "/queues" + q, "Queues"),
             ("activity", "/activity", "Retries &amp; failovers"), ("tail", "/tail" + q, "Live tail")]
    nav = "".join(f'<a href="{href}" class="{"on" if key == active else ""}" id="nav-{key}">{label}</a>'
                  for key, href, label in links)
    mode = "abort enabled" if allow_abort else "read-only"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · lessor</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><span class="brand">lessor</span>{nav}<span class="srv">{escape(server)} · {mode}</span></header>'
            f'<main>{body}</main><script>{TAIL_JS}{ABORT_JS}{script}</script></body></html>')


def summarize(e: ev.Event) -> str:
    """One line saying what an event did (its fields, the ones that matter to a reader)."""
    if isinstance(e, ev.ActionLeased):
        return f"worker {e.worker} · attempt {e.attempt} · token {e.token} · ttl {e.ttl_ms} ms + grace {e.grace_ms} ms"
    if isinstance(e, ev.LeaseExpired):
        return f"worker {e.worker} · token {e.token} · deadline {fmt_time(e.deadline_ms)} + grace {e.grace_ms} ms"
    if isinstance(e, (ev.LeaseResumed, ev.LeaseExtended)):
        late = f" · {e.late_ms} ms late" if isinstance(e, ev.LeaseResumed) else ""
        return f"worker {e.worker} · token {e.token}{late} · deadline {fmt_time(e.deadline_ms)}"
    if isinstance(e, ev.ActionRequeued):
        return f"{e.reason}{': ' + e.error if e.error else ''}"
    if isinstance(e, ev.ActionFailed):
        return f"{e.reason}{': ' + e.error if e.error else ''}"
    if isinstance(e, ev.ActionSucceeded):
        return f"worker {e.worker} · attempt {e.attempt} · token {e.token}"
    if isinstance(e, ev.ReportRejected):
        return f"{e.kind} from {e.worker} with token {e.token} (current {e.current_token})"
    if isinstance(e, (ev.ActionCreated, ev.RunCreated)):
        return f"task {e.task} · queue {e.queue}"
    if isinstance(e, ev.RunCompleted):
        return e.phase
    if isinstance(e, ev.ActionTimedOut):
        return f"after {e.timeout_ms} ms"
    if isinstance(e, ev.SettingsChanged):
        return f"settings version {e.version}: {e.document}"
    if isinstance(e, ev.TriggerFired):
        return f"trigger {e.trigger} · dedup key {e.dedup_key} · run {e.run}"
    return getattr(e, "reason", "") or ""


def event_json(partition: int, e: ev.Event) -> str:
    """An event as the live tail's JavaScript reads it."""
    action = getattr(e, "action", "") or ""
    return json.dumps({"p": partition, "id": e.id, "time": fmt_time(e.ts), "type": e.TYPE, "ns": e.ns, "run": e.run,
                       "action": action, "summary": summarize(e), "href": run_href(e.ns, e.run, action or None)})


def events_table(events: list[ev.Event], with_run: bool = False) -> str:
    rows = []
    for e in events:
        action = getattr(e, "action", "") or ""
        run = f'<td><a href="{run_href(e.ns, e.run)}">{escape(e.run)}</a></td>' if with_run else ""
        link = f'<a href="{run_href(e.ns, e.run, action)}">{escape(action)}</a>' if action else ""
        rows.append(f'<tr><td class="mono">{fmt_time(e.ts)}</td><td class="mono">{escape(e.TYPE)}</td>{run}'
                    f'<td>{link}</td><td>{escape(summarize(e))}</td></tr>')
    head = "<th>run</th>" if with_run else ""
    return (f'<table class="events"><thead><tr><th>time</th><th>event</th>{head}<th>action</th><th>what</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def tail_box(src: str, title: str = "Live event tail") -> str:
    """The live tail: a table the page's script fills from ``src`` (server-sent events)."""
    return (f'<section id="tail" data-src="{escape(src)}" data-state="connecting"><h2>{escape(title)} '
            f'<span class="state">connecting…</span></h2><table><thead><tr><th>time</th><th>event</th><th>run</th>'
            f'<th>action</th><th>what</th></tr></thead><tbody></tbody></table></section>')


# ---- runs ---------------------------------------------------------------------------------------

SINCE_CHOICES = (("", "any time"), ("5m", "last 5 min"), ("1h", "last hour"), ("24h", "last 24 h"), ("7d", "last 7 days"))


def _runs_form(namespace: str, form: dict[str, str]) -> str:
    phases = "".join(f'<option value="{p.value}"{" selected" if form.get("phase") == p.value else ""}>{p.value}</option>'
                     for p in Phase)
    since = "".join(f'<option value="{v}"{" selected" if form.get("since") == v else ""}>{label}</option>'
                    for v, label in SINCE_CHOICES)
    custom = form.get("since", "") if form.get("since", "") not in dict(SINCE_CHOICES) else ""
    return (f'<form class="filters" method="get" action="/runs">'
            f'<label>namespace<input name="ns" value="{escape(namespace)}" size="22"></label>'
            f'<label>phase<select name="phase"><option value="">any</option>{phases}</select></label>'
            f'<label>task (name or glob)<input name="task" value="{escape(form.get("task", ""))}" size="14"></label>'
            f'<label>created<select name="since">{since}'
            f'{f"<option selected>{escape(custom)}</option>" if custom else ""}</select></label>'
            f'<label>created before (UTC, ISO)<input name="until" value="{escape(form.get("until", ""))}" '
            f'placeholder="2025-01-31T12:00" size="16"></label><button>Filter</button></form>')


def runs_page(namespace: str, page: RunsPage, form: dict[str, str], now_ms: int, **kw) -> str:
    rows = []
    for r in page.rows:
        phase = phase_badge(r.phase)
        if r.root_phase and r.root_phase != r.phase:
            phase += f' <span class="note">a0 {escape(r.root_phase)}</span>'
        rows.append(f'<tr class="run-row" data-run="{escape(r.run_id)}"><td><a class="run-link" '
                    f'href="{run_href(r.namespace, r.run_id)}">{escape(r.run_id)}</a></td><td>{escape(r.task)}</td>'
                    f'<td>{escape(r.queue)}</td><td>{phase}{" · aborting" if r.aborting else ""}</td>'
                    f'<td>{r.attempt}</td><td class="mono">{escape(r.worker)}</td>'
                    f'<td class="mono" title="{fmt_time(r.created_ms)}">{fmt_age(max(now_ms - r.created_ms, 0))} ago'
                    f'</td>{_err_cell(r.error)}</tr>')
    empty = '<tr><td colspan="8">no runs match</td></tr>' if not rows else ""
    pager = ['<a href="/runs?' + urlencode({k: v for k, v in form.items() if k != "cursor"}) + '">« newest</a>']
    if page.next_cursor:
        pager.append('<a id="next-page" href="/runs?' + urlencode({**form, "cursor": page.next_cursor}) + '">next »</a>')
    scanned = (f'examined {page.examined} runs of the index for this page'
               + (f' (the per-page budget): the next page goes on from there' if page.budget_spent else ""))
    body = (f'<h1>Runs in {escape(namespace)}</h1>{_runs_form(namespace, form)}'
            f'<table id="runs"><thead><tr><th>run</th><th>task</th><th>queue</th><th>phase</th><th>attempt</th>'
            f'<th>worker</th><th>created</th><th>error</th></tr></thead><tbody>{"".join(rows)}{empty}</tbody></table>'
            f'<div class="pager">{"".join(pager)}</div><p class="note">{scanned}. Newest first, from the namespace\'s '
            f'runs index (scored by creation time, which the time filter uses directly). Phase <b>queued</b> and '
            f'<b>running</b> are the root action\'s: a run is <i>running</i> from its submission on.</p>')
    return layout("Runs", "runs", body, namespace=namespace, **kw)


# ---- run and action -----------------------------------------------------------------------------

def _tree_rows(node: ActionNode, depth: int = 0) -> list[str]:
    a = node.info
    rows = [f'<tr class="action-row" data-action="{escape(a.action_id)}"><td style="padding-left:{8 + 18 * depth}px">'
            f'<a class="action-link" href="{run_href(a.namespace, a.run_id, a.action_id)}">{escape(a.action_id)}</a>'
            f'</td><td>{escape(a.task)}</td><td>{phase_badge(a.phase)}{" · aborting" if a.aborting else ""}</td>'
            f'<td>{a.attempt}</td><td class="mono">{escape(a.worker)}</td><td class="mono">{a.token or ""}</td>'
            f'<td>{a.expirations or ""}</td><td>{a.rejected or ""}</td>{_err_cell(a.error)}</tr>']
    for child in node.children:
        rows += _tree_rows(child, depth + 1)
    return rows


def _window_note(window: RunWindow, href: str) -> str:
    parts = [f"{len(window.events)} events of this run, from {window.entries_read} log entries of its partition's "
             f"stream between its creation and its end"]
    if window.gap:
        more = min(window.entries_read * 10, 200_000)
        parts.append(f'<span class="warn">the window is longer than the read budget: entries between '
                     f'{escape(window.gap[0])} and {escape(window.gap[1])} were not read '
                     f'(<a href="{href}?window={more}">read up to {more}</a>, or `lessor events --run`)</span>')
    if window.trimmed:
        parts.append('<span class="warn">compaction trimmed this partition\'s stream past the run\'s start: '
                     'older events are in the archive (`lessor events --archive DIR --run ID`)</span>')
    return '<p class="note">' + "; ".join(parts) + "</p>"


def _error_item(phase: str, error: str | None) -> str:
    """The error, named "last error" when the action went on to succeed (the projection keeps it)."""
    if not error:
        return ""
    label = "last error" if phase == Phase.SUCCEEDED else "error"
    return f"<dt>{label}</dt><dd class=err>{escape(error)}</dd>"


def _traceback(a: ActionInfo | None) -> str:
    """The traceback of the action's last failed attempt (its tail, as the worker stored it), if any."""
    if a is None or not a.traceback or a.phase == Phase.SUCCEEDED:
        return ""
    return (f'<details class="traceback" open><summary>traceback of {escape(a.action_id)} (its last failed '
            f'attempt; the last {MAX_TRACEBACK // 1024} KiB are kept)</summary>'
            f'<pre class="mono traceback">{escape(a.traceback)}</pre></details>')


def _value(v) -> str:
    try:
        text = json.dumps(v, default=repr)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 300 else text[:300] + "…"


def run_page(info: RunInfo, root: ActionNode, window: RunWindow, timeline_svg: str, tail_src: str,
             now_ms: int, **kw) -> str:
    abort = ""
    if kw["allow_abort"] and not info.done:
        abort = (f'<button class="abort" data-run="{escape(info.run_id)}" '
                 f'data-href="{run_href(info.namespace, info.run_id)}/abort">Abort run</button>')
    result = f"<dt>result</dt><dd class=mono>{escape(_value(info.result))}</dd>" if info.phase == Phase.SUCCEEDED else ""
    body = (f'<h1>Run {escape(info.namespace)}/<span id="run-id">{escape(info.run_id)}</span> '
            f'{phase_badge(info.phase)} {abort}</h1>'
            f'<dl class="kv"><dt>task</dt><dd>{escape(info.task)}</dd><dt>queue</dt><dd>{escape(info.queue)}</dd>'
            f'<dt>created</dt><dd>{fmt_time(info.created_ms)} ({fmt_age(max(now_ms - info.created_ms, 0))} ago)</dd>'
            f'{"<dt>aborting</dt><dd>yes</dd>" if info.aborting else ""}{result}'
            f'{_error_item(info.phase, info.error)}</dl>{_traceback(info.root)}'
            f'<h2>Actions</h2><table class="tree" id="tree"><thead><tr><th>action</th><th>task</th><th>phase</th>'
            f'<th>attempt</th><th>worker</th><th>token</th><th>expired</th><th>refused</th><th>error</th></tr></thead>'
            f'<tbody>{"".join(_tree_rows(root))}</tbody></table>'
            f'<h2>Lease timeline</h2><div class="svgbox" id="timeline">{timeline_svg}</div>'
            f'{_window_note(window, run_href(info.namespace, info.run_id))}'
            f'{tail_box(tail_src, "Live events of this run")}'
            f'<details><summary>All {len(window.events)} events</summary>{events_table(window.events)}</details>')
    return layout(f"Run {info.run_id}", "runs", body, namespace=info.namespace, **kw)


def _attempts_table(tl: Timeline, action_id: str) -> str:
    rows = []
    for lease in tl.leases.get(action_id, []):
        how = lease.how.replace("_", " ") if lease.how else "held now"
        then = f" → {escape(lease.then)}" if lease.then else ""
        held = fmt_age(lease.end_ms - lease.start_ms) if lease.end_ms else ""
        rows.append(f'<tr class="attempt-row"><td>{lease.attempt}</td><td class="mono">{escape(lease.worker)}</td>'
                    f'<td class="mono">{lease.token}</td><td class="mono">{fmt_time(lease.start_ms)}</td>'
                    f'<td>{held}</td><td>{escape(how)}{then}</td>{_err_cell(lease.detail)}</tr>')
    if not rows:
        rows.append('<tr><td colspan="7">no lease yet</td></tr>')
    return (f'<table id="attempts"><thead><tr><th>attempt</th><th>worker</th><th>token</th><th>leased</th>'
            f'<th>held</th><th>ended</th><th>detail</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def action_page(a: ActionInfo, children: list[ActionInfo], tl: Timeline, events: list[ev.Event],
                window: RunWindow, timeline_svg: str, now_ms: int, **kw) -> str:
    parent = (f'<a href="{run_href(a.namespace, a.run_id, a.parent)}">{escape(a.parent)}</a>' if a.parent else "—")
    kids = ", ".join(f'<a href="{run_href(c.namespace, c.run_id, c.action_id)}">{escape(c.action_id)}</a> '
                     f'{phase_badge(c.phase)}' for c in children) or "—"
    deadline = ""
    if a.phase == Phase.RUNNING and a.deadline_ms > now_ms:
        deadline = f"<dt>deadline</dt><dd>{fmt_time(a.deadline_ms)} (in {fmt_age(a.deadline_ms - now_ms)})</dd>"
    elif a.phase == Phase.RUNNING and a.deadline_ms:
        deadline = f"<dt>deadline</dt><dd class=warn>passed {fmt_age(now_ms - a.deadline_ms)} ago (grace)</dd>"
    result = f"<dt>result</dt><dd class=mono>{escape(_value(a.result))}</dd>" if a.phase == Phase.SUCCEEDED else ""
    body = (f'<h1>Action <a href="{run_href(a.namespace, a.run_id)}">{escape(a.run_id)}</a>/'
            f'<span id="action-id">{escape(a.action_id)}</span> {phase_badge(a.phase)}</h1>'
            f'<dl class="kv"><dt>task</dt><dd>{escape(a.task)}</dd><dt>queue</dt><dd>{escape(a.queue)}</dd>'
            f'<dt>attempt</dt><dd>{a.attempt}</dd><dt>worker</dt><dd class=mono>{escape(a.worker) or "—"}</dd>'
            f'<dt>token</dt><dd class=mono>{a.token or "—"}</dd>{deadline}'
            f'<dt>retries left</dt><dd>user {a.user_left}, system {a.sys_left}</dd>'
            f'<dt>lease expiries</dt><dd>{a.expirations}</dd><dt>refused reports</dt><dd>{a.rejected}</dd>'
            f'<dt>parent</dt><dd>{parent}</dd><dt>children</dt><dd>{kids}</dd>{result}'
            f'{_error_item(a.phase, a.error)}</dl>{_traceback(a)}'
            f'<h2>Attempts</h2>{_attempts_table(tl, a.action_id)}'
            f'<h2>Lease timeline</h2><div class="svgbox" id="timeline">{timeline_svg}</div>'
            f'{_window_note(window, run_href(a.namespace, a.run_id, a.action_id))}'
            f'<h2>Events</h2>{events_table(events)}')
    return layout(f"Action {a.action_id}", "runs", body, namespace=a.namespace, **kw)


# ---- workers, queues, activity, tail -----------------------------------------------------------

def workers_page(found: Workers, **kw) -> str:
    now_ms = found.now_ms
    rows = []
    for w in found.rows:
        p = w.presence
        tasks = sorted({lease.task for lease in w.leases})
        overdue = w.overdue(now_ms)
        leases = "".join(f'<li><a href="{run_href(*_ref_parts(lease.ref))}">{escape(lease.ref)}</a> token '
                         f'{lease.token} · attempt {lease.attempt} · deadline in '
                         f'{fmt_age(lease.deadline_ms - now_ms) if lease.deadline_ms > now_ms else "—"}</li>'
                         for lease in w.leases[:50])
        rows.append(f'<tr class="worker-row" data-worker="{escape(w.worker)}"><td class="mono">{escape(w.worker)}</td>'
                    f'<td>{escape(p.host) if p else "—"}</td><td>{p.pid if p else "—"}</td>'
                    f'<td>{escape(p.version) if p else "—"}</td>'
                    f'<td>{len(w.leases)}</td><td>{fmt_age(max(now_ms - w.last_heartbeat_ms, 0))} ago</td>'
                    f'<td{" class=warn" if overdue else ""}>{overdue}</td><td>{escape(", ".join(tasks[:4]))}</td>'
                    f'<td>{escape(", ".join(sorted({lease.queue for lease in w.leases})))}</td>'
                    f'<td><details><summary>leases</summary><ul>{leases}</ul></details></td></tr>')
    empty = '<tr><td colspan="10">no worker holds a lease or announced itself lately</td></tr>' if not rows else ""
    live = found.live
    cut = (f'<p class="warn">{live.total} leases are live; this page read {len(live.leases)} of them (the '
           f'oldest grants of each partition): the counts above are of those</p>' if live.truncated else "")
    gone = (f' {found.gone} more announced themselves but have not been seen for over {STALE_MS // 1000} s '
            f'(stopped without saying so) and hold no lease.' if found.gone else "")
    body = (f'<h1>Workers</h1><table id="workers"><thead><tr><th>worker id</th><th>host</th><th>pid</th>'
            f'<th>version</th><th>leases held</th><th>last heartbeat</th><th>past deadline</th><th>tasks</th>'
            f'<th>queues</th><th></th></tr></thead>'
            f'<tbody>{"".join(rows)}{empty}</tbody></table>{cut}'
            f'<p class="note">From the lease index (<code>LEASES</code>, one sorted set per partition) and the held '
            f'actions\' hashes, joined with each worker\'s presence entry (<code>WORKERS</code>: host, pid, version, '
            f'rewritten every {ANNOUNCE_MS // 1000} s and deleted on a clean stop). The last heartbeat is the later '
            f'of the latest grant or renewal over a worker\'s leases (<code>deadline_ms − ttl_ms</code>) and its '
            f'latest announcement; "past deadline" counts leases inside their grace window or awaiting the '
            f'reaper.{gone} Same as <code>lessor workers</code>. Server time {fmt_time(now_ms)}.</p>')
    return layout("Workers", "workers", body, **kw)


def _ref_parts(ref: str) -> tuple[str, str, str]:
    parts = ref.split("/")
    return f"{parts[0]}/{parts[1]}", parts[2], parts[3]


def queues_page(found: Queues, queue_text: str, **kw) -> str:
    namespace, now_ms, window_s, live = found.namespace, found.now_ms, found.window_s, found.live
    lines = []
    for v in found.rows:
        q = v.row
        head = (f'<a href="{run_href(*_ref_parts(q.head_ref))}">{escape(q.head_ref.split("/", 2)[2])}</a>'
                if q.head_ref else "—")
        wait = fmt_age(max(now_ms - q.head_created_ms, 0)) if q.head_created_ms else "—"
        lines.append(f'<tr class="queue-row" data-queue="{escape(q.queue)}"><td>{escape(q.queue)}</td>'
                     f'<td class="depth">{q.depth}</td><td>{head}</td><td>{wait}</td>'
                     f'<td>{q.head_attempt or ""}</td><td>{v.leased}</td>'
                     f'<td>{v.per_s:.2f}</td></tr>')
    empty = '<tr><td colspan="7">no queue found</td></tr>' if not lines else ""
    body = (f'<h1>Queues in {escape(namespace)}</h1><form class="filters" method="get" action="/queues">'
            f'<label>namespace<input name="ns" value="{escape(namespace)}" size="22"></label>'
            f'<label>also these queues (comma-separated)<input name="queues" value="{escape(queue_text)}" '
            f'size="24"></label><button>Show</button></form>'
            f'<table id="queues"><thead><tr><th>queue</th><th>depth</th><th>head (next leased)</th>'
            f'<th>head waiting since created</th><th>head attempt</th><th>leased now</th>'
            f'<th>leases/s (last {window_s:.0f} s)</th></tr></thead><tbody>{"".join(lines)}{empty}</tbody></table>'
            f'<p class="note">Depth: <code>ZCARD</code> of the queue\'s key in every partition, summed. The head is '
            f'the action the next acquire takes (top priority, then first in); its age counts from the action\'s '
            f'creation. {found.delayed} action(s) wait out a retry backoff (all queues, not counted in depth). '
            f'Queues found: {escape(found.found)}. Leases/s: <code>action_leased</code> events in the newest events '
            f'of each partition (the activity read), over the last {window_s:.0f} s they cover.'
            f'{f" Leased now: of the {len(live.leases)} of {live.total} live leases read." if live.truncated else ""}'
            f' Same as <code>lessor queues</code>.</p>')
    return layout("Queues", "queues", body, namespace=namespace, **kw)


def activity_page(recent: RecentEvents, buckets: chart.Buckets, per_partition: int, **kw) -> str:
    notable = [e for e in recent.events if chart.kind_of(e)][-30:][::-1]
    cut = (f"every partition's newest {per_partition} events; complete from {fmt_time(recent.since_ms)} on"
           if recent.since_ms else f"all {recent.read} events in the log (fewer than {per_partition} per partition)")
    body = (f'<h1>Retries and failovers</h1><div class="svgbox" id="chart">{chart.render_svg(buckets)}</div>'
            f'<p class="note">From {cut}: one <code>XREVRANGE … COUNT {per_partition}</code> per partition. '
            f'</p><ul class="note">{"".join(f"<li><b>{n}</b>: {escape(m)}</li>" for n, m in chart.MEANING.items())}</ul>'
            f'<h2>Latest of them</h2>{events_table(notable, with_run=True)}')
    return layout("Retries and failovers", "activity", body, **kw)


def tail_page(namespace: str, backlog: list[ev.Event], src: str, nav_namespace: str, **kw) -> str:
    body = (f'<h1>Live event tail{" of " + escape(namespace) if namespace else ""}</h1>{tail_box(src, "New events")}'
            f'<h2>Before this page opened</h2>{events_table(backlog[::-1], with_run=True)}')
    return layout("Live tail", "tail", body, namespace=nav_namespace, **kw)


def error_page(status: int, message: str, **kw) -> str:
    return layout(f"{status}", "", f'<h1>{status}</h1><p class="err">{escape(message)}</p>', **kw)
