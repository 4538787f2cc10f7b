"""Test-only fault switches: deliberately broken systems that the checkers must catch.

Nothing in production can reach these: no setting, flag or environment variable
turns them on. A switch is applied only by code that builds a simulation with
it (``broken_backend`` patches the Lua source of a private Scripts object of one
Backend; ``UnfencedKeeper`` replaces the keeper of simulated workers). Each patch
asserts its target text exists, so a change to the scripts cannot silently turn
a switch into a no-op.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from lessor.leasing.backend import Backend
from lessor.leasing.keeper import HeldLease, LeaseKeeper
from lessor.leasing.scripts import SCRIPT_NAMES, Scripts, script_source


class Switch(str, enum.Enum):
    """The five ways of breaking lessor on purpose."""

    SKIP_TOKEN_CHECK = "skip_token_check"            # fenced writes accept any token of a running action
    SKIP_SELF_FENCING = "skip_self_fencing"          # workers never stop work on their own
    REAPER_IGNORES_GRACE = "reaper_ignores_grace"    # leases expire at the deadline
    REAPER_DOUBLE_EXPIRES = "reaper_double_expires"  # a due index entry expires whatever lease is there now
    RENEW_IGNORES_ABORT = "renew_ignores_abort"      # renewals answer OK for aborted actions


# script -> [(text, replacement)] per switch
_PATCHES: dict[Switch, dict[str, list[tuple[str, str]]]] = {
    Switch.SKIP_TOKEN_CHECK: {"*": [("    if h.phase ~= 'running' or h.token ~= token then\n      reject(",
                                      "    if h.phase ~= 'running' then\n      reject(")]},
    Switch.REAPER_IGNORES_GRACE: {
        "reap": [("local expiry = h[1] == 'running' and tonumber(h[2]) + tonumber(h[3])",
                  "local expiry = h[1] == 'running' and tonumber(h[2])")],
        "acquire": [("redis.call('ZADD', LEASES, deadline + grace_ms, ref)", "redis.call('ZADD', LEASES, deadline, ref)")],
    },
    Switch.REAPER_DOUBLE_EXPIRES: {"reap": [("  if expiry and expiry >= NOW then", "  if false then")]},
    Switch.RENEW_IGNORES_ABORT: {"renew": [("h[4] ~= '1' and NOW <= tonumber(h[3])", "NOW <= tonumber(h[3])"),
                                           ("    elseif h[4] == '1' then", "    elseif false then")]},
}


class _PatchedScripts(Scripts):
    def __init__(self, redis, clock, switch: Switch) -> None:
        self.clock = clock
        self._scripts = {}
        patches = _PATCHES.get(switch, {})
        for name in SCRIPT_NAMES:
            source = script_source(name, clock)
            for target in ("*", name):
                for old, new in patches.get(target, ()):
                    if target == name:
                        assert old in source, f"switch {switch.value}: {name}.lua no longer contains {old!r}"
                    source = source.replace(old, new)
            self._scripts[name] = redis.register_script(source)
        if "*" in patches:
            assert any(old in script_source("complete", clock) for old, _ in patches["*"]), switch


def broken_backend(backend: Backend, switch: Switch) -> Backend:
    """A copy of ``backend`` whose scripts carry ``switch`` (Lua switches only)."""
    broken = Backend(redis=backend.redis, url=backend.url, partitions=backend.partitions, clock=backend.clock)
    broken.scripts = _PatchedScripts(backend.redis, backend.clock, switch)
    return broken


class UnfencedKeeper(LeaseKeeper):
    """A keeper that never fences itself (SKIP_SELF_FENCING); server answers still cancel work."""

    def check_self_fence(self) -> list[HeldLease]:
        return []


@dataclass(frozen=True)
class Breakage:
    """What a simulation runs with: a switch, or none (the real system)."""

    switch: Switch | None = None
    notes: list[str] = field(default_factory=list)

    def keeper_cls(self) -> type[LeaseKeeper]:
        return UnfencedKeeper if self.switch is Switch.SKIP_SELF_FENCING else LeaseKeeper

    def backend(self, backend: Backend) -> Backend:
        if self.switch in (None, Switch.SKIP_SELF_FENCING):
            return backend
        return broken_backend(backend, self.switch)
