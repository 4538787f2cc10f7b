"""The errors more than one layer raises or catches, all under LessorError.

An error only one module raises is defined there, on LessorError too:
UnknownRun (scheduler/control.py), UnknownTask and ChildFailed
(scheduler/registry.py), ValueEncodingError (scheduler/values.py). Each
message says what was wrong and what to do. This module imports nothing, so
every layer, ``core`` included, may use it. The ``lessor`` command prints a
LessorError as one line: exit code 3 for a ServerError, 2 for the others.
"""

from __future__ import annotations


class LessorError(Exception):
    """Base of all lessor errors."""


class ServerError(LessorError):
    """The Redis/Valkey server could not be started, reached or used (too old, a replica, a cluster
    node given as one server), or a command that needs the shared server was given none."""


class ConfigError(LessorError, ValueError):
    """A setting is wrong: out of range, malformed (a URL, ``--app``, a durability mode) or not usable
    here (an option whose extra package is missing, a cluster URL where one server is needed)."""


# --- the event codec -------------------------------------------------------


class EventDecodeError(LessorError, ValueError):
    """Bytes from the log are not a valid lessor event. Nothing half-built is returned."""


class UnknownSchemaVersion(EventDecodeError):
    """The event was written by a newer (or unknown) schema version."""


class UnknownEventType(EventDecodeError):
    """The event's type is not one this version of lessor knows."""


# --- the state machine -----------------------------------------------------


class LogTrimmed(LessorError):
    """A follower's position in the log was trimmed away by compaction: the events after
    it are in the archive, the state they built is in the snapshot. Start again from
    the state (re-read it, then follow from now), or read the archive."""


class IllegalTransition(LessorError):
    """An event is not allowed in the current phase (the fold refuses it)."""

    def __init__(self, subject: str, phase: str | None, event_type: str) -> None:
        self.subject, self.phase, self.event_type = subject, phase, event_type
        super().__init__(
            f"illegal transition for {subject}: {event_type!r} is not allowed in phase "
            f"{phase or '<none>'!r}; the log is inconsistent with the transition table "
            f"(core/phases.py)"
        )


# --- leasing ---------------------------------------------------------------


class LeaseError(LessorError):
    """A lease operation was refused."""


class StaleToken(LeaseError):
    """The fencing token is not the action's current token: the write was refused and recorded."""


class LeaseNotHeld(LeaseError):
    """The action is not leased (it is queued, terminal, or unknown)."""


class ActionAborted(LeaseError):
    """The action was aborted: cancel its work."""


class UnknownAction(LeaseError, KeyError):
    """No such action in the given run."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown action"


# --- the store ---------------------------------------------------------------


class StoreUnavailable(ServerError):
    """The server did not answer, or answered that it cannot serve now (restart, failover, BUSY,
    LOADING, READONLY, ...). Transient: the call may or may not have been applied; retry it
    (every lessor write is safe to repeat with the same token)."""


class NotDurable(StoreUnavailable):
    """The write was applied in memory, but the server could not confirm the durability asked for
    (``durability="fsync"`` or ``"replicas:N"``) in time. ``reply`` holds the script's answer."""

    def __init__(self, message: str, reply: object = None) -> None:
        super().__init__(message)
        self.reply = reply


class ServerRefused(LessorError):
    """The server refused a call for a reason that retrying cannot fix (a bad argument, a missing
    ACL permission, a script error). The message names what and what to do."""


class IdempotencyConflict(LessorError, ValueError):
    """An idempotency key (or run id) was reused for a different request; nothing was submitted."""
