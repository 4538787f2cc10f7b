"""Running counts released: once every run has finished, no lease is counted as running.

Evidence: the server's running counters (``running_key``, one hash per queue and
partition) after the simulation quiesced, against the log's verdict that every
run finished. The counters are what acquire.lua enforces running limits with;
one that a path forgot to release would hold a namespace below its limit for
good. Every way a lease ends (complete, fail, timeout, reap, abort, release, and
the epoch and rollback paths the simulator drives) must give its count back.
Silent when the run did not quiesce (liveness reports that).
"""

from __future__ import annotations

from lessor.leasing.backend import Backend
from lessor.simulations.checkers import Violation

NAME = "running_released"


async def check(backend: Backend, queue: str, quiesced: bool) -> list[Violation]:
    """Violations: a running counter of ``queue`` left above 0 after every run finished."""
    if not quiesced:
        return []
    out = []
    for keys in backend.all_keys():
        for ns, count in (await backend.redis.hgetall(keys.running(queue))).items():
            if int(count) > 0:
                out.append(Violation(NAME, f"{keys.prefix}{queue}", (
                    f"{ns.decode()} still counts {int(count)} running lease(s) after every run finished: "
                    f"a path that ends a lease did not release its count")))
    return out
