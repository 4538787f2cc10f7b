"""Control-plane actions on runs: abort."""

from __future__ import annotations

from dataclasses import dataclass

from lessor.core.ids import check_id, check_namespace
from lessor.errors import LessorError, ServerRefused
from lessor.leasing.backend import Backend


class UnknownRun(LessorError, KeyError):
    """No such run in the namespace."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class AbortOutcome:
    """Queued actions aborted at once, and running ones asked to stop."""

    aborted: int
    requested: int


async def abort_run(backend: Backend, namespace: str, run_id: str, reason: str = "aborted by user") -> AbortOutcome:
    """Abort every non-terminal action of a run (one script call). Raises UnknownRun."""
    check_namespace(namespace)
    check_id("run", run_id)
    keys = backend.keys_for_run(namespace, run_id)
    try:
        aborted, requested = await backend.call("abort", [keys.prefix], [namespace, run_id, reason])
    except ServerRefused as exc:
        if "LESSOR_UNKNOWN_RUN" in str(exc):
            raise UnknownRun(f"no run {namespace}/{run_id}: check the id and --namespace with "
                             f"`lessor runs --namespace {namespace}`") from None
        raise
    return AbortOutcome(int(aborted), int(requested))
