"""The events of the log: one frozen dataclass per event type.

Every event names its run (``ns`` + ``run``) and carries the server timestamp
``ts`` (ms) at which the script that wrote it ran. Action events also name the
``action``. Lease-related events carry ``attempt``, ``token`` and ``worker``.
User values (inputs, results) are opaque ``bytes`` (msgpack written by the
scheduler): the control plane stores references, not payloads.

Fields with no default are required; the codec refuses an event missing one.
Fields the decoder does not know are kept in ``extra`` (forward compatibility
within one schema version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events. ``id`` is the stream entry id (set when read from the log)."""

    TYPE: ClassVar[str] = ""
    ns: str
    run: str
    ts: int = 0
    id: str = field(default="", compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, kw_only=True)
class RunCreated(Event):
    TYPE: ClassVar[str] = "run_created"
    task: str
    queue: str
    inputs: bytes | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunCompleted(Event):
    TYPE: ClassVar[str] = "run_completed"
    phase: str


@dataclass(frozen=True, kw_only=True)
class ActionEvent(Event):
    """An event about one action of a run."""

    action: str


@dataclass(frozen=True, kw_only=True)
class LeaseEvent(ActionEvent):
    """An action event tied to one lease: which attempt, which token, which worker."""

    attempt: int
    token: int
    worker: str


@dataclass(frozen=True, kw_only=True)
class ActionCreated(ActionEvent):
    TYPE: ClassVar[str] = "action_created"
    task: str
    queue: str
    inputs: bytes | None = None
    parent: str | None = None
    parent_token: int = 0
    sys_retries: int = 3
    user_retries: int = 0
    backoff_ms: int = 1000
    priority: int = 0
    timeout_ms: int = 0
    cache_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class ActionLeased(LeaseEvent):
    TYPE: ClassVar[str] = "action_leased"
    ttl_ms: int
    grace_ms: int
    deadline_ms: int


@dataclass(frozen=True, kw_only=True)
class LeaseResumed(LeaseEvent):
    TYPE: ClassVar[str] = "lease_resumed"
    late_ms: int
    deadline_ms: int


@dataclass(frozen=True, kw_only=True)
class LeaseExpired(LeaseEvent):
    TYPE: ClassVar[str] = "lease_expired"
    deadline_ms: int
    grace_ms: int


@dataclass(frozen=True, kw_only=True)
class ActionRequeued(ActionEvent):
    TYPE: ClassVar[str] = "action_requeued"
    reason: str
    ready_at_ms: int = 0
    sys_left: int = 0
    user_left: int = 0
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class ActionSucceeded(LeaseEvent):
    TYPE: ClassVar[str] = "action_succeeded"
    result: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ActionFailed(ActionEvent):
    TYPE: ClassVar[str] = "action_failed"
    reason: str
    error: str | None = None
    attempt: int = 0
    token: int = 0
    worker: str = ""


@dataclass(frozen=True, kw_only=True)
class ActionTimedOut(LeaseEvent):
    TYPE: ClassVar[str] = "action_timed_out"
    timeout_ms: int


@dataclass(frozen=True, kw_only=True)
class AbortRequested(ActionEvent):
    TYPE: ClassVar[str] = "abort_requested"
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class ActionAborted(ActionEvent):
    TYPE: ClassVar[str] = "action_aborted"
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class CacheHit(ActionEvent):
    TYPE: ClassVar[str] = "cache_hit"
    cache_key: str
    result: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ReportRejected(ActionEvent):
    """A write carrying a token that is not current was refused (never applied)."""

    TYPE: ClassVar[str] = "report_rejected"
    kind: str
    token: int
    worker: str
    current_token: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        RunCreated, RunCompleted, ActionCreated, ActionLeased, LeaseResumed, LeaseExpired,
        ActionRequeued, ActionSucceeded, ActionFailed, ActionTimedOut, AbortRequested,
        ActionAborted, CacheHit, ReportRejected,
    )
}
