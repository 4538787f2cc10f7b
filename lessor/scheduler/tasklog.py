"""The worker's task log: one line when an attempt starts and one when it ends.

Lines go to the ``lessor.worker.tasks`` logger with the fields in
``record.task``, so the format is the handler's business: ``lessor worker
--log-format text`` prints a sentence, ``--log-format json`` one JSON object
per line (``JsonLines``), with these keys:

- start: ts, event ("task_started"), namespace, run, action, task, attempt,
  token, worker;
- end: the same with event "task_ended", plus duration_ms (the task's own run
  time, from start to return or raise, on the worker's monotonic clock) and
  outcome: how the report ended (succeeded, failed, released, aborted,
  dropped; or refused, unconfirmed, error when the server did not confirm it),
  and error (its first line) when the task raised.

``ts`` is the wall time of the line (ISO 8601, UTC, ms): a log timestamp,
never a deadline.

Task lines are on the hot path (two per action), so ``write_to`` (what
``lessor worker`` uses) writes them straight to a stream, one flushed line
each, instead of through ``logging``: about 10x cheaper than a plain logging
handler and ~1000x cheaper than rich's. Without it (an embedded worker) they
go to the logger above, and with that logger above INFO nothing is built.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any, Callable, TextIO

task_log = logging.getLogger("lessor.worker.tasks")
_direct: Callable[[dict, str], None] | None = None   # set by write_to: (fields, text) -> None


_second: list = [-1, ""]   # the last whole second formatted, and its ISO text up to the seconds


def _now_iso() -> str:
    """Now as ISO 8601 UTC with ms; the text up to the second is formatted once per second."""
    now = time.time()  # clock: a log line's timestamp only (deadlines are the server's)
    whole = int(now)
    if whole != _second[0]:
        _second[:] = [whole, dt.datetime.fromtimestamp(whole, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{int((now - whole) * 1000):03d}+00:00"


def write_to(stream: TextIO | None, log_format: str = "text") -> None:
    """Write task lines straight to ``stream`` as ``text`` or ``json`` (None: back to the logger)."""
    global _direct
    if stream is None:
        _direct = None
        return
    if log_format == "json":
        def emit(fields: dict, text: str) -> None:
            stream.write(json.dumps({"ts": _now_iso(), **fields}) + "\n")
            stream.flush()
    else:
        def emit(fields: dict, text: str) -> None:
            stream.write(f"{_now_iso()} INFO {text}\n")
            stream.flush()
    _direct = emit


def _fields(lease, worker: str) -> dict[str, Any]:
    namespace, run, action = lease.ref.rsplit("/", 2)
    return {"namespace": namespace, "run": run, "action": action, "task": lease.task, "attempt": lease.attempt,
            "token": lease.token, "worker": worker}


def started(lease, worker: str) -> None:
    """Log the start of ``lease``'s attempt on ``worker``."""
    if _direct is None and not task_log.isEnabledFor(logging.INFO):
        return
    fields = {"event": "task_started", **_fields(lease, worker)}
    text = f"started {lease.ref} {lease.task} attempt {lease.attempt} token {lease.token}"
    if _direct is not None:
        return _direct(fields, text)
    task_log.info("%s", text, extra={"task": fields})


def ended(lease, worker: str, duration_ms: float, outcome: str, error: str | None = None) -> None:
    """Log the end of ``lease``'s attempt: how long the task ran and how its report ended."""
    if _direct is None and not task_log.isEnabledFor(logging.INFO):
        return
    first = error.splitlines()[0][:300] if error else None
    fields = {"event": "task_ended", **_fields(lease, worker), "duration_ms": round(duration_ms, 1),
              "outcome": outcome} | ({"error": first} if first else {})
    text = (f"ended {lease.ref} {lease.task} attempt {lease.attempt} token {lease.token}: {outcome} after "
            f"{duration_ms:.1f} ms" + (f" ({first})" if first else ""))
    if _direct is not None:
        return _direct(fields, text)
    task_log.info("%s", text, extra={"task": fields})


class JsonLines(logging.Formatter):
    """One JSON object per record: a task line's fields, or ts/level/logger/message for any other line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
        fields = getattr(record, "task", None)
        if fields is not None:
            return json.dumps({"ts": ts, **fields})
        line = {"ts": ts, "event": "log", "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)
