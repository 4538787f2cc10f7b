"""The argv that starts a ``lessor`` process from another one (demo, chaos, benchmarks, tests).

    subprocess.Popen(worker_command(url, "myapp.tasks:registry", worker_id="w-1", queue="etl"))

Built here once, so every launcher names the options the way ``lessor worker``
parses them (tests/test_cli.py parses what this builds).
"""

from __future__ import annotations

import sys
from typing import Iterable


def lessor_command(*args: str) -> list[str]:
    """``[python, "-m", "lessor", *args]``, with this interpreter (so the child uses the same venv)."""
    return [sys.executable, "-m", "lessor", *args]


def worker_command(url: str, app: str, *, worker_id: str | None = None, queue: str | None = None,
                   namespace: str | None = None, concurrency: int | None = None, durability: str | None = None,
                   ttl_ms: int | None = None, grace_ms: int | None = None, margin_ms: int | None = None,
                   drain_s: float | None = None, reap: bool = True, truth_log: str | None = None,
                   extra: Iterable[str] = ()) -> list[str]:
    """The argv of ``lessor worker`` on the server at ``url``, running the tasks of ``app``.

    ``app`` is ``module:registry``, importable in the child. An option left None
    is not passed, so ``lessor worker``'s own default applies (queue default,
    namespace proj/development, concurrency 8, ttl 30000 ms, grace 10000 ms,
    durability $LESSOR_DURABILITY or memory, ...). ``reap=False`` passes
    ``--no-reap``; ``extra`` is appended as is (e.g. ``("--otel", "console")``).
    Returns the list for ``subprocess.Popen``; starts nothing, raises nothing.
    """
    options = {"--worker-id": worker_id, "--queue": queue, "--namespace": namespace, "--concurrency": concurrency,
               "--ttl-ms": ttl_ms, "--grace-ms": grace_ms, "--margin-ms": margin_ms, "--drain-s": drain_s,
               "--durability": durability, "--truth-log": truth_log}
    argv = lessor_command("worker", "--app", app, "--redis-url", url)
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if not reap:
        argv.append("--no-reap")
    return argv + list(extra)
