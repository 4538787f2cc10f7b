"""Lease configuration, validated once with errors that say what to change."""

from __future__ import annotations

from dataclasses import dataclass

from lessor.errors import ConfigError


@dataclass(frozen=True)
class LeaseConfig:
    """How long a lease lasts and how a worker keeps it.

    ttl_ms        a renewal moves the deadline to now + ttl (server clock)
    grace_ms      after the deadline the lease is still valid for this long; a
                  renewal in that window resumes it (logged as lease_resumed)
    heartbeat_ms  how often the worker renews (default ttl / 3)
    margin_ms     self-fencing margin: the worker stops the work after
                  ttl + grace - margin without a successful renewal, measured
                  from that renewal's send time. Covers clock-rate drift
                  between worker and server (default 10% of ttl + grace).
    """

    ttl_ms: int = 30_000
    grace_ms: int = 10_000
    heartbeat_ms: int | None = None
    margin_ms: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ttl_ms, int) or self.ttl_ms <= 0:
            raise ConfigError(f"ttl_ms must be a positive integer (ms), got {self.ttl_ms!r}")
        if not isinstance(self.grace_ms, int) or self.grace_ms < 0:
            raise ConfigError(f"grace_ms must be an integer >= 0 (ms), got {self.grace_ms!r}")
        if self.heartbeat_ms is None:
            object.__setattr__(self, "heartbeat_ms", max(1, self.ttl_ms // 3))
        if self.margin_ms is None:
            object.__setattr__(self, "margin_ms", max(1, (self.ttl_ms + self.grace_ms) // 10))
        if self.heartbeat_ms <= 0 or self.heartbeat_ms >= self.ttl_ms:
            raise ConfigError(
                f"heartbeat_ms must be > 0 and < ttl_ms ({self.ttl_ms}), got {self.heartbeat_ms}: "
                "a worker must renew before its lease runs out (ttl / 3 is a good choice)"
            )
        if self.margin_ms < 0 or self.margin_ms >= self.ttl_ms + self.grace_ms:
            raise ConfigError(
                f"margin_ms must be >= 0 and < ttl_ms + grace_ms ({self.ttl_ms + self.grace_ms}), "
                f"got {self.margin_ms}"
            )

    @property
    def self_fence_after_ms(self) -> int:
        """Time without a successful renewal after which the worker stops the work."""
        return self.ttl_ms + self.grace_ms - self.margin_ms
