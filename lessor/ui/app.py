"""The dashboard's Starlette application, and ``serve()`` which runs it on uvicorn.

Why Starlette and uvicorn: both small, async-native and well kept; they run
on the same asyncio/anyio loop as lessor's ``redis.asyncio`` client, so a
page is a few awaited reads with no thread hop, and the live tail is one
more coroutine following the log. No template engine: the pages are
f-strings (``pages.py``), which keeps the dependencies to these two.

Read-only unless ``allow_abort``: then ``POST /runs/<ns>/<run>/abort`` (with
the header ``X-Lessor-Abort``, which a cross-site form cannot send) aborts a
run through ``Client.abort``. On a loopback address only loopback host names
are accepted (a DNS-rebinding page cannot reach it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import re
import time
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

import lessor
from lessor.core.ids import check_id, check_namespace
from lessor.errors import LessorError, ServerError, StoreUnavailable, UnknownAction
from lessor.scheduler.api import DEFAULT_NAMESPACE, Client
from lessor.scheduler.control import UnknownRun
from lessor.scheduler.query import ActionNode
from lessor.ui import chart, fleet, pages, reads, stream, timeline

RELATIVE = re.compile(r"^(\d{1,6})(m|h|d)$")
UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
TAIL_BACKLOG = 50        # events shown on the tail page from before it opened (per partition, newest)


class Dashboard:
    """The handlers, over one lessor Client (opened by the app's lifespan)."""

    def __init__(self, url: str | None, namespace: str, allow_abort: bool) -> None:
        self.url, self.namespace, self.allow_abort = url, namespace, allow_abort
        self.client: Client | None = None

    @property
    def backend(self):
        return self.client.backend

    def chrome(self) -> dict[str, Any]:
        """What every page's layout needs."""
        return {"server": self.backend.url, "allow_abort": self.allow_abort}

    def html(self, text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status)

    def ns(self, request: Request) -> str:
        return check_namespace(request.query_params.get("ns") or self.namespace)

    # ---- pages ----------------------------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        ns = self.ns(request)
        q = request.query_params
        form = {k: q[k] for k in ("phase", "task", "since", "until", "cursor") if q.get(k)}
        form["ns"] = ns
        now_ms = await reads.server_ms(self.backend)
        filt = reads.RunFilter(phase=_phase(q.get("phase")), task=q.get("task") or None,
                               since_ms=_since(q.get("since"), now_ms), until_ms=_until(q.get("until")))
        limit = min(max(int(q.get("limit") or 50), 1), 500)
        page = await reads.runs_page(self.backend, ns, filt, limit=limit, cursor=q.get("cursor"))
        return self.html(pages.runs_page(ns, page, form, now_ms, **self.chrome()))

    async def run(self, request: Request) -> Response:
        ns, run_id = _path_run(request)
        info = await self.client.get_run(run_id, namespace=ns)
        root = await self.client.tree(run_id, namespace=ns)
        actions = _flatten(root)
        window = await reads.run_window(self.backend, ns, run_id, info.created_ms,
                                        rejected=sum(a.rejected for a in actions), budget=_window(request))
        now_ms = await reads.server_ms(self.backend)
        tl = timeline.build_timeline(window.events, {a.action_id: a.deadline_ms for a in actions if a.worker})
        labels = {a.action_id: f"{a.action_id} {a.task}" for a in actions}
        svg = timeline.render_svg(tl, labels, now_ms if not info.done else None)
        src = await self._tail_src(ns, run_id)
        return self.html(pages.run_page(info, root, window, svg, src, now_ms, **self.chrome()))

    async def action(self, request: Request) -> Response:
        ns, run_id = _path_run(request)
        action_id = check_id("action", request.path_params["action_id"])
        a = await self.client.get_action(run_id, action_id, namespace=ns)
        info = await self.client.get_run(run_id, namespace=ns)
        children = await reads.children(self.backend, ns, run_id, action_id)
        window = await reads.run_window(self.backend, ns, run_id, info.created_ms, rejected=a.rejected,
                                        budget=_window(request))
        mine = [e for e in window.events if getattr(e, "action", "") == action_id]
        now_ms = await reads.server_ms(self.backend)
        tl = timeline.build_timeline(mine, {action_id: a.deadline_ms} if a.worker else None)
        svg = timeline.render_svg(tl, {action_id: f"{action_id} {a.task}"}, now_ms if not info.done else None)
        return self.html(pages.action_page(a, children, tl, mine, window, svg, now_ms, **self.chrome()))

    async def workers(self, request: Request) -> Response:
        found = await fleet.workers(self.backend)
        return self.html(pages.workers_page(found, namespace=self.ns(request), **self.chrome()))

    async def queues(self, request: Request) -> Response:
        ns = self.ns(request)
        typed = {q.strip() for q in (request.query_params.get("queues") or "").split(",") if q.strip()}
        found = await fleet.queues(self.backend, ns, typed)
        return self.html(pages.queues_page(found, ", ".join(sorted(typed)), **self.chrome()))

    async def activity(self, request: Request) -> Response:
        recent = await reads.recent_events(self.backend, types=chart.TYPES)
        start = recent.since_ms or recent.oldest_ms or recent.now_ms - 60_000
        buckets = chart.bucket(recent.events, start, recent.now_ms)
        per_partition = reads.recent_per_partition(self.backend.partitions)
        return self.html(pages.activity_page(recent, buckets, per_partition, namespace=self.ns(request),
                                             **self.chrome()))

    async def tail_page(self, request: Request) -> Response:
        ns = request.query_params.get("ns") or ""
        if ns:
            check_namespace(ns)
        recent = await reads.recent_events(self.backend, per_partition=TAIL_BACKLOG)
        backlog = [e for e in recent.events if not ns or e.ns == ns][-TAIL_BACKLOG:]
        src = await self._tail_src(ns, None)
        return self.html(pages.tail_page(ns, backlog, src, ns or self.namespace, **self.chrome()))

    async def _tail_src(self, ns: str, run_id: str | None) -> str:
        """The stream URL, starting at the log's positions now (what the page shows ends here)."""
        from urllib.parse import urlencode

        positions = await reads.log_positions(self.backend)
        params = {"ns": ns, "from": stream.format_positions(positions)}
        if run_id:
            params["run"] = run_id
        return "/events/stream?" + urlencode(params)

    async def events_stream(self, request: Request) -> Response:
        q = request.query_params
        ns = q.get("ns") or None
        if ns:
            check_namespace(ns)
        run_id = check_id("run", q["run"]) if q.get("run") else None
        resume = request.headers.get("last-event-id") or q.get("from")
        positions = stream.parse_positions(resume, self.backend.partitions)
        return stream.EventStream(stream.tail(self.backend, positions, ns, run_id))

    async def abort(self, request: Request) -> Response:
        if not self.allow_abort:
            return PlainTextResponse("this dashboard is read-only: start it with `lessor ui --allow-abort`", 403)
        if request.headers.get("x-lessor-abort") != "1":
            return PlainTextResponse("abort needs the X-Lessor-Abort: 1 header (the page's button sends it)", 400)
        ns, run_id = _path_run(request)
        outcome = await self.client.abort(run_id, namespace=ns, reason="aborted from lessor ui")
        return PlainTextResponse(f"run {ns}/{run_id}: {outcome}")

    async def healthz(self, request: Request) -> Response:
        await self.backend.redis.ping()
        return PlainTextResponse("ok")

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/runs")


def _flatten(node: ActionNode) -> list:
    out = [node.info]
    for child in node.children:
        out += _flatten(child)
    return out


def _path_run(request: Request) -> tuple[str, str]:
    p = request.path_params
    ns = check_namespace(f"{p['project']}/{p['domain']}")
    return ns, check_id("run", p["run_id"])


def _window(request: Request) -> int:
    """How many log entries a run's window may read: ``?window=N`` (up to WINDOW_MAX), else the default."""
    text = request.query_params.get("window")
    if not text:
        return reads.WINDOW_BUDGET
    if not text.isdigit():
        raise ValueError(f"window must be a number of log entries, got {text!r}")
    return min(max(int(text), 2), reads.WINDOW_MAX)


def _phase(text: str | None) -> str | None:
    if not text:
        return None
    from lessor.core.phases import Phase

    return Phase(text).value  # ValueError names the bad phase


def _since(text: str | None, now_ms: int) -> int | None:
    """``5m``/``1h``/``7d`` back from the server's now, or an ISO time (UTC if it names no zone)."""
    if not text:
        return None
    m = RELATIVE.match(text.strip())
    if m:
        return now_ms - int(m.group(1)) * UNIT_MS[m.group(2)]
    return _iso_ms(text)


def _until(text: str | None) -> int | None:
    return _iso_ms(text) if text else None


def _iso_ms(text: str) -> int:
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"bad time {text!r}: use ISO 8601 such as 2025-01-31T12:00 (UTC), or 5m, 1h, 7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _errors(dash: Dashboard):
    """Exception handlers: a page that says what was wrong, with the right status."""
    def page(status: int):
        async def handle(request: Request, exc: Exception) -> Response:
            chrome = dash.chrome() if dash.client else {"server": "", "allow_abort": dash.allow_abort}
            return HTMLResponse(pages.error_page(status, str(exc), namespace=dash.namespace, **chrome), status)
        return handle

    return {UnknownRun: page(404), UnknownAction: page(404), ValueError: page(400), KeyError: page(400),
            StoreUnavailable: page(503), ServerError: page(503), LessorError: page(500)}


class ServerTiming:
    """ASGI middleware: a ``Server-Timing: app;dur=<ms>`` header on every response (the benchmark reads it)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()  # clock: request timing only

        async def timed_send(message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000  # clock: request timing only
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", f"app;dur={ms:.2f}".encode())]}
            await send(message)

        await self.app(scope, receive, timed_send)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(url: str | None, *, namespace: str = DEFAULT_NAMESPACE, allow_abort: bool = False,
               host: str = "127.0.0.1") -> Starlette:
    """The dashboard on the server at ``url`` (None: $LESSOR_REDIS_URL, else an embedded one for its life)."""
    check_namespace(namespace)
    dash = Dashboard(url, namespace, allow_abort)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with lessor.connect(url) as client:
            dash.client = client
            yield
        dash.client = None

    run_path = "/runs/{project}/{domain}/{run_id}"
    routes = [
        Route("/", dash.home), Route("/runs", dash.runs), Route(run_path, dash.run),
        Route(run_path + "/abort", dash.abort, methods=["POST"]), Route(run_path + "/{action_id}", dash.action),
        Route("/workers", dash.workers), Route("/queues", dash.queues), Route("/activity", dash.activity),
        Route("/tail", dash.tail_page), Route("/events/stream", dash.events_stream), Route("/healthz", dash.healthz),
    ]
    middleware = [Middleware(ServerTiming)]
    if is_loopback(host):
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers=_errors(dash))


def serve(url: str | None, *, host: str = "127.0.0.1", port: int = 8765, namespace: str = DEFAULT_NAMESPACE,
          allow_abort: bool = False, sock=None, ready=None) -> None:
    """Run the dashboard on uvicorn until interrupted (or ``server.should_exit``).

    ``sock``: an already bound socket to serve on (tests: a free port chosen
    first); ``ready``: called with the uvicorn Server once it is built.
    """
    import uvicorn

    config = uvicorn.Config(create_app(url, namespace=namespace, allow_abort=allow_abort, host=host), host=host,
                            port=port, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    if ready is not None:
        ready(server)
    server.run(sockets=[sock] if sock is not None else None)
