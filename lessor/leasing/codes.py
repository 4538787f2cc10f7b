"""The one table of script return codes, and the typed exceptions they map to."""

from __future__ import annotations

from enum import IntEnum

from lessor.errors import ActionAborted, LeaseError, LeaseNotHeld, StaleToken, UnknownAction


class Code(IntEnum):
    """What a lease script answered for one lease (see the .lua headers)."""

    OK = 0
    RESUMED = 1
    ABORTED = 2
    STALE = 3
    UNKNOWN = 4
    #: Inside the scripts only (fence): the same write repeated with the token that
    #: already ended the attempt. Answered to the caller as OK.
    REPEATED = -1


class SubmitCode(IntEnum):
    """What submit.lua answered for one run."""

    EXISTED = 0    # the same request again: the existing run is returned
    CREATED = 1
    CONFLICT = 2   # the run id exists with another task or other inputs


def raise_for(code: int, ref: str, token: int, current_token: int = 0) -> None:
    """Raise the typed error for a refusing ``code``; return quietly for OK/RESUMED."""
    code = Code(code)
    if code in (Code.OK, Code.RESUMED):
        return
    if code is Code.STALE:
        raise StaleToken(
            f"token {token} is not the current token of {ref} (current: {current_token}); "
            "the write was refused and recorded as report_rejected: this worker no longer owns "
            "the action, drop the result"
        )
    if code is Code.ABORTED:
        raise ActionAborted(f"{ref} was aborted: cancel its work and release the lease")
    if code is Code.UNKNOWN:
        raise UnknownAction(f"no action {ref}: check the run id and action id")
    raise LeaseNotHeld(f"{ref}: lease not held (code {code})")


__all__ = ["Code", "SubmitCode", "raise_for", "LeaseError"]
