"""The live event tail as server-sent events, following the log with ``EventLog.follow``.

Each message's SSE ``id`` is the position reached in every partition
(``0:<stream id>.<index>,1:<stream id>,...``: a stream entry holds the events of
one script call, and ``.<index>`` says how far into that entry; without it, the
whole entry). A browser that reconnects sends it back as ``Last-Event-ID``, and
the follow goes on from exactly there: no event is missed or repeated across a
reconnect, not even between two events of one entry. A page passes the positions it was
rendered at (``from=``), so nothing falls between the page and its tail.
"""

from __future__ import annotations

import re
from typing import AsyncIterator

import anyio
from starlette.types import Receive, Scope, Send

from lessor.errors import LogTrimmed
from lessor.leasing.backend import Backend
from lessor.leasing.eventlog import EventLog
from lessor.ui.pages import event_json

MAX_RESUME_MS = 10 * 60_000   # a reconnect further behind than this starts from now
_POSITION = re.compile(r"^(\d{1,4}):(\d{1,20}-\d{1,20}(?:\.\d{1,9})?|0)$")


def parse_positions(text: str | None, partitions: int) -> dict[int, str] | None:
    """``0:<id>[.<index>],1:<id>,...`` as {partition: position}; None if absent or malformed (then: from now)."""
    if not text:
        return None
    out: dict[int, str] = {}
    for part in text.split(","):
        m = _POSITION.match(part.strip())
        if m is None or int(m.group(1)) >= partitions:
            return None
        out[int(m.group(1))] = m.group(2)
    return out


def _stale(positions: dict[int, str], now: dict[int, str]) -> bool:
    """Whether a position lags its partition's newest entry by more than MAX_RESUME_MS (stream ids are
    server ms). "0" (the stream was empty) never does: all of it came after."""
    return any(int(now[p].split("-")[0]) - int(i.split("-")[0].split(".")[0]) > MAX_RESUME_MS
               for p, i in positions.items() if i != "0" and now.get(p, "0") != "0")


def format_positions(positions: dict[int, str]) -> str:
    return ",".join(f"{p}:{i}" for p, i in sorted(positions.items()))


def _split(position: str) -> tuple[str, int | None]:
    """(stream id, the index of the last event of that entry delivered: None = all of them)."""
    entry, _, index = position.partition(".")
    return entry, int(index) if index else None


def _follow_from(positions: dict[int, str]) -> dict[int, str]:
    """The ids to follow after (exclusive): an entry delivered only in part is read again."""
    out = {}
    for p, position in positions.items():
        entry, index = _split(position)
        if index is None or entry == "0":
            out[p] = entry
        else:
            ms, seq = (int(x) for x in entry.split("-"))
            out[p] = f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2 ** 64 - 1}"
    return out


async def tail(backend: Backend, positions: dict[int, str] | None, namespace: str | None,
               run_id: str | None) -> AsyncIterator[str]:
    """SSE messages for every new event (of ``namespace``, of ``run_id`` if given), forever.

    Resumes from ``positions`` unless one is older than MAX_RESUME_MS (a tab
    that slept for hours): then from now, after a ``gap`` message, rather
    than replaying hours of the log into a browser.
    """
    log = EventLog(backend)
    now = await log.last_ids()
    last = dict(positions) if positions else now
    yield "retry: 2000\n\n"
    if positions and _stale(positions, now):
        last = now
        yield "event: gap\ndata: this tail was away too long to catch up: it goes on from now\n\n"
    while True:
        try:
            async for entry in log.follow(from_ids=_follow_from(last), block_ms=5000):
                e = entry.event
                entry_id, done = _split(last.get(entry.partition, "0"))
                if entry_id == e.id and done is not None and e.index <= done:
                    continue   # delivered before the reconnect (the entry was read again for the rest)
                last[entry.partition] = f"{e.id}.{e.index}"
                if (namespace and e.ns != namespace) or (run_id and e.run != run_id):
                    continue
                yield f"id: {format_positions(last)}\nevent: event\ndata: {event_json(entry.partition, e)}\n\n"
        except LogTrimmed as exc:  # compaction trimmed past our position: say so, go on from now
            yield f"event: gap\ndata: {exc}\n\n"
            last = await log.last_ids()


class EventStream:
    """A ``text/event-stream`` response (an ASGI callable) that ends when the client goes away.

    The disconnect is watched beside the stream (not only noticed at the next
    send), so a tail that has nothing to send is not left following the log
    for a reader that is gone.
    """

    HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]

    def __init__(self, messages: AsyncIterator[str]) -> None:
        self.messages = messages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.HEADERS})
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                async for message in self.messages:
                    await send({"type": "http.response.body", "body": message.encode(), "more_body": True})

            tg.start_soon(stream)
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()
