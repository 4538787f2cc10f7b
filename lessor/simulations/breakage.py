"""Test-only fault switches: deliberately broken systems that the checkers must catch.

Nothing in production can reach these: no setting, flag or environment variable
turns them on. A switch is applied only by code that builds a simulation with
it (``broken_backend`` patches the Lua source of a private Scripts object of one
Backend, a FUNCTION library of its own; ``UnfencedKeeper`` replaces the keeper of simulated workers,
``DyingReaper`` the simulated reapers, ``NoWaitBackend`` the backend;
``Breakage.policy()`` replaces one decision of the outcome policy, which the
real Worker and the simulated workers share, so it breaks both). Each patch
asserts its target text exists, so a change to the scripts cannot silently
turn a switch into a no-op.

The store-fault switches bring back four bugs lessor had (and one it could have):
REPORT_GIVES_UP, REAPER_DIES, NO_EPOCH_EXTENSION, TOKEN_EPOCH_RUN_ID_ONLY, and
SKIP_DURABILITY_WAIT.

The policy switches break the outcome policy (scheduler/outcome.py) that the
real Worker and the simulated one both run: REPORT_GIVES_UP (its retry
decision) and ERROR_REPORTED_AS_SUCCESS (its report decision).

Each checker that rebuilds the truth from the log has a switch it catches:
FENCE_IGNORES_EXPIRY (writes_within_lease), REPEAT_IGNORES_TOKEN
(current_token), EXPIRY_SPENDS_NO_RETRY (retry_budgets), BACKOFF_SKIPPED
(ready_respected), CACHE_WRITTEN_WHEN_REFUSED (cache_faithful),
RESUBMIT_CREATES_AGAIN (submits_idempotent), FAIL_EVENT_MISSES_REASON
(no_server_errors), PARENT_END_SPARES_CHILDREN (abort_respected, for the
subtree), RELEASE_IGNORES_ABORT (abort_respected, for a requeue after an abort),
and SELF_FENCE_NO_MARGIN (no_runaway judged against deadline + grace).

``Breakage`` also takes any other set of Lua patches and a keeper class: the
mutation gate (``lessor/simulations/mutants.py``, ``make mutants``) builds its
mutants that way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

from lessor.leasing.backend import Backend
from lessor.leasing.durability import Durability
from lessor.leasing.keeper import FenceReason, HeldLease, LeaseKeeper
from lessor.leasing.reaper import PassResult, Reaper
from lessor.leasing.scripts import Scripts, library, script_source
from lessor.scheduler.outcome import POLICY, Call, Ending, Kind, Policy, Report, decide_report, decide_retry


class Switch(str, enum.Enum):
    """The ways of breaking lessor on purpose."""

    SKIP_TOKEN_CHECK = "skip_token_check"            # fenced writes accept any token of a running action
    SKIP_SELF_FENCING = "skip_self_fencing"          # workers never stop work on their own
    REAPER_IGNORES_GRACE = "reaper_ignores_grace"    # leases expire at the deadline
    REAPER_DOUBLE_EXPIRES = "reaper_double_expires"  # a due index entry expires whatever lease is there now
    RENEW_IGNORES_ABORT = "renew_ignores_abort"      # renewals answer OK for aborted actions
    # Store faults (bugs lessor had before it survived its store):
    REPORT_GIVES_UP = "report_gives_up"              # a report is dropped on its first transport error
    REAPER_DIES = "reaper_dies"                      # a reaper stops for good on its first store error
    NO_EPOCH_EXTENSION = "no_epoch_extension"        # a new epoch extends no live lease
    TOKEN_EPOCH_RUN_ID_ONLY = "token_epoch_run_id_only"  # tokens jump on a new run_id only (not a promotion)
    SKIP_DURABILITY_WAIT = "skip_durability_wait"    # durability fsync claimed, no WAITAOF sent
    ACQUIRE_IGNORES_WEIGHTS = "acquire_ignores_weights"  # fair share takes turns, whatever the weights
    RELEASE_ONLY_ON_COMPLETE = "release_only_on_complete"  # a running count is given back on success only
    # The outcome policy, shared by the real Worker and the simulated one:
    ERROR_REPORTED_AS_SUCCESS = "error_reported_as_success"  # a task's error is committed as its result
    # Schedules:
    TICK_UNFENCED = "tick_unfenced"                  # tick.lua takes any ticker token and any tick, old or not
    # One per checker that rebuilds the truth from the log:
    FENCE_IGNORES_EXPIRY = "fence_ignores_expiry"    # a write to a lease past deadline + grace that no reaper
                                                     # expired yet is accepted
    REPEAT_IGNORES_TOKEN = "repeat_ignores_token"    # a completion of an action already succeeded is answered
                                                     # OK (a repeat), whoever's token it carries
    EXPIRY_SPENDS_NO_RETRY = "expiry_spends_no_retry"  # an expired lease is requeued without spending a retry
    BACKOFF_SKIPPED = "backoff_skipped"              # a failed attempt is requeued ready at once (ready_at_ms
                                                     # still says when it should have been)
    CACHE_WRITTEN_WHEN_REFUSED = "cache_written_when_refused"  # a refused completion still writes the cache
    RESUBMIT_CREATES_AGAIN = "resubmit_creates_again"  # a repeated submit creates its run again
    FAIL_EVENT_MISSES_REASON = "fail_event_misses_reason"  # a final user failure's event lacks its reason
    PARENT_END_SPARES_CHILDREN = "parent_end_spares_children"  # an action that ends leaves its children live
    RELEASE_IGNORES_ABORT = "release_ignores_abort"  # a release of an action being aborted requeues it
    SELF_FENCE_NO_MARGIN = "self_fence_no_margin"    # workers stop at ttl + grace after the last good
                                                     # renewal, with no margin for drift


# script -> [(text, replacement)] per switch
_PATCHES: dict[Switch, dict[str, list[tuple[str, str]]]] = {
    Switch.SKIP_TOKEN_CHECK: {"*": [("    if not check_token(h, token) then\n      reject(",
                                      "    if h.phase ~= 'running' then\n      reject(")]},
    # The grace rule is written once (lease_expiry in the prelude): dropping grace there
    # makes the reaper (and every fenced write) expire leases at their deadline.
    Switch.REAPER_IGNORES_GRACE: {"*": [(
        "local function lease_expiry(h) return tonumber(h.deadline_ms) + tonumber(h.grace_ms) end",
        "local function lease_expiry(h) return tonumber(h.deadline_ms) end")]},
    Switch.ACQUIRE_IGNORES_WEIGHTS: {"acquire": [("  c = {stride = 1 / weight,", "  c = {stride = 1,")]},
    Switch.RELEASE_ONLY_ON_COMPLETE: {"*": [(
        "      count_running(key, ev.ns, nxt == 'running' and 1 or -1)\n",
        "      if nxt == 'running' or ev.type == 'action_succeeded' then count_running(key, ev.ns, nxt == 'running' and 1 or -1) end\n")]},
    Switch.REAPER_DOUBLE_EXPIRES: {"reap": [("  if expiry and not lease_dead(h) then", "  if false then")]},
    Switch.RENEW_IGNORES_ABORT: {"renew": [("h[2] == token and h[4] ~= '1' and (#deadline", "h[2] == token and (#deadline"),
                                           ("    elseif h[4] == '1' then", "    elseif false then")]},
    # The new epoch is still recorded (and reported as new), but no live lease gets its ttl back.
    Switch.NO_EPOCH_EXTENSION: {"*": [("    local refs = redis.call('ZRANGE', LEASES, 0, -1)\n",
                                       "    local refs = {}\n")]},
    # The epoch stored with the token counter is the run_id alone: a promotion without a
    # restart (same run_id, new master_replid) then does not make tokens jump.
    Switch.TOKEN_EPOCH_RUN_ID_ONLY: {"*": [(
        "        epoch = server_epoch()\n",
        "        epoch = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?'\n")]},
    # No fence (a deposed or a second ticker is let through) and no last-tick guard (a tick
    # computed from a stale read fires again): the two things that make a tick fire once.
    Switch.TICK_UNFENCED: {"tick": [("if token ~= '0' and token ~= lease.token then", "if false then"),
                                    ("if token == '0' and not free then", "if false then"),
                                    ("if h.phase == 'active' and tick_ms > tonumber(h.last_tick_ms) then",
                                     "if h.phase == 'active' then")]},
    # fence() no longer expires a lease that is dead on the server clock: until a reaper
    # passes, its holder's late writes are accepted.
    Switch.FENCE_IGNORES_EXPIRY: {"*": [("    if check_token(h, token) and lease_dead(h) and not ensure_epoch() then",
                                         "    if false then")]},
    Switch.REPEAT_IGNORES_TOKEN: {"*": [("(kind == 'complete' and h.phase == 'succeeded' and h.token == token)",
                                         "(kind == 'complete' and h.phase == 'succeeded')")]},
    Switch.EXPIRY_SPENDS_NO_RETRY: {"*": [("base.sys_left, base.user_left, base.ready_at_ms = sys_left - 1,",
                                           "base.sys_left, base.user_left, base.ready_at_ms = sys_left,")]},
    Switch.BACKOFF_SKIPPED: {"fail": [("  if ready_at > NOW then redis.call('ZADD', DELAYED, ready_at, ref)",
                                       "  if false then redis.call('ZADD', DELAYED, ready_at, ref)")]},
    # The cache write moves before the token check's verdict is looked at.
    Switch.CACHE_WRITTEN_WHEN_REFUSED: {"complete": [(
        "  if code == OK then\n    local ns, run, action = split_ref(ref)",
        "  if h.cache_key ~= '' and h.cache_key ~= nil and code ~= OK and code ~= REPEATED then\n"
        "    redis.call('HSET', cache_hash((split_ref(ref))), h.cache_key, result)\n  end\n"
        "  if code == OK then\n    local ns, run, action = split_ref(ref)")]},
    Switch.RESUBMIT_CREATES_AGAIN: {"submit": [("  if existing[1] then", "  if existing[1] and false then")]},
    Switch.FAIL_EVENT_MISSES_REASON: {"fail": [(
        "emit({type = 'action_failed', ns = ns, run = run, action = action, reason = 'user_error',",
        "emit({type = 'action_failed', ns = ns, run = run, action = action,")]},
    Switch.PARENT_END_SPARES_CHILDREN: {"*": [("      abort_descendants(ev.ns, ev.run, ev.action, nxt)\n", "")]},
    # The worker that heard of the abort gives its lease back, and the action goes back on its queue.
    Switch.RELEASE_IGNORES_ABORT: {"release": [("if h.aborting == '1' then\n  emit({type = 'action_aborted'",
                                                "if false then\n  emit({type = 'action_aborted'")]},
}


Patches = dict[str, list[tuple[str, str]]]  # script name ("*": every script) -> [(text, replacement)]


def patched_source(name: str, clock, patches: Patches, label: str) -> str:
    """Script ``name``'s source with ``patches`` applied. Asserts each target text is there
    (in the script, or for "*" in the prelude every script shares), so a change to the
    scripts cannot silently turn a switch or a mutant into a no-op."""
    source = script_source(name, clock)
    for target in ("*", name):
        for old, new in patches.get(target, ()):
            if target == name:
                assert old in source, f"{label}: {name}.lua no longer contains {old!r}"
            source = source.replace(old, new)
    return source


class _PatchedScripts(Scripts):
    """The FUNCTION library with patches (a switch's or a mutant's): its own library, next to
    the real one (library() asserts each target text is there)."""

    def __init__(self, redis, clock, patches: Patches, label: str) -> None:
        flat = tuple((target, old, new) for target, pairs in patches.items() for old, new in pairs)
        try:
            super().__init__(redis, clock, patches=flat)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from None


def copy_backend(backend: Backend, cls: type[Backend] = Backend, durability: str | Durability | None = None) -> Backend:
    """``backend`` again (same connection, partitions, placement, clock), as ``cls``, with this durability."""
    same = {f.name: getattr(backend, f.name) for f in fields(backend) if f.init}
    return cls(**same | {"durability": backend.durability if durability is None else durability})


def broken_backend(backend: Backend, switch: Switch, durability: str | Durability | None = None,
                   patches: Patches | None = None) -> Backend:
    """A copy of ``backend`` whose scripts carry ``switch`` (Lua switches), or ``patches``."""
    broken = copy_backend(backend, durability=durability)
    broken.scripts = _PatchedScripts(backend.redis, backend.clock, patches if patches is not None else
                                     _PATCHES[switch], f"switch {switch.value}" if switch else "patch")
    return broken


class NoWaitBackend(Backend):
    """SKIP_DURABILITY_WAIT: claims its durability mode but never sends the WAITAOF.

    Through ``call``'s own ``durable`` flag (its public contract), so a change to how the
    backend sends the wait cannot quietly make this switch wait after all."""

    async def call(self, name: str, keys: list, args: list, *, durable: bool = True, durability=None):
        return await super().call(name, keys, args, durable=False)


class DyingReaper(Reaper):
    """REAPER_DIES: the reaper before the fix, whose process died on its first store error.

    Its first pass in which a partition call failed is its last: later passes do nothing.
    """

    dead = False

    async def reap_once(self) -> PassResult:
        if self.dead:
            return PassResult()
        result = await super().reap_once()
        if result.failed:
            self.dead = True
        return result


def gives_up_on_reports(error: BaseException, left_ms: float) -> str:
    """REPORT_GIVES_UP: the retry decision before the fix: a transport error is final."""
    decision = decide_retry(error, left_ms)
    return "dropped" if decision == "retry" else decision


def reports_errors_as_success(ending: Ending) -> Report:
    """ERROR_REPORTED_AS_SUCCESS: the report decision with its last two branches merged, so a
    task that raised has its attempt committed as a success (with no result)."""
    report = decide_report(ending)
    return Report(Kind.SUCCEEDED, Call.COMPLETE, (b"",)) if report.kind is Kind.FAILED else report


class UnfencedKeeper(LeaseKeeper):
    """A keeper that never fences itself (SKIP_SELF_FENCING); server answers still cancel work."""

    def check_self_fence(self) -> list[HeldLease]:
        return []

    def until_next_fence_ms(self) -> float:
        return self.config.heartbeat_ms  # its watchdog has nothing to wait for


class NoMarginKeeper(LeaseKeeper):
    """SELF_FENCE_NO_MARGIN: fences ttl + grace after the last good renewal's send, the margin
    left out (as if ``self_fence_after_ms`` were ``ttl + grace``): right only while the
    worker's clock runs no slower than the server's."""

    def check_self_fence(self) -> list[HeldLease]:
        now = self.clock.now_ms()
        after = self.config.ttl_ms + self.config.grace_ms
        late = [h for h in self.held.values() if h.fenced is None and now - h.last_ok_send_ms >= after]
        for h in late:
            self.fence(h, FenceReason.SELF_FENCED)
        return late

    def until_next_fence_ms(self) -> float:
        return super().until_next_fence_ms() + self.config.margin_ms


_KEEPERS = {Switch.SKIP_SELF_FENCING: UnfencedKeeper, Switch.SELF_FENCE_NO_MARGIN: NoMarginKeeper}


@dataclass(frozen=True)
class Breakage:
    """What a simulation runs with: a switch, or none (the real system); or, for a mutant,
    its own Lua ``patches`` and ``keeper`` class."""

    switch: Switch | None = None
    notes: list[str] = field(default_factory=list)
    patches: Patches | None = None
    keeper: type[LeaseKeeper] | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or (self.switch.value if self.switch else "the real system")

    def keeper_cls(self) -> type[LeaseKeeper]:
        return self.keeper or _KEEPERS.get(self.switch, LeaseKeeper)

    def check_patches(self) -> None:
        """Raise AssertionError if this breakage's Lua patches no longer match the scripts (their
        text moved in a change): a simulation would then crash on every plan, and an exploration
        would count the crash as a catch."""
        patches = self.patches if self.patches is not None else _PATCHES.get(self.switch)
        if patches:
            flat = tuple((target, old, new) for target, pairs in patches.items() for old, new in pairs)
            try:
                library(patches=flat)
            except AssertionError as exc:
                raise AssertionError(f"{self.label}: its patch no longer applies ({exc}): update it") from None

    def reaper_cls(self) -> type[Reaper]:
        return DyingReaper if self.switch is Switch.REAPER_DIES else Reaper

    def policy(self) -> Policy:
        """The outcome policy workers run, real (``Worker(policy=...)``) and simulated alike:
        the real one unless this switch breaks one of its decisions."""
        if self.switch is Switch.REPORT_GIVES_UP:
            return Policy(retry=gives_up_on_reports)
        if self.switch is Switch.ERROR_REPORTED_AS_SUCCESS:
            return Policy(report=reports_errors_as_success)
        return POLICY

    def backend(self, backend: Backend, durability: str | Durability | None = None) -> Backend:
        """The backend a simulation runs on: ``backend``'s connection with this durability mode
        (default: ``backend``'s own), and this switch's scripts or class."""
        if self.switch is Switch.SKIP_DURABILITY_WAIT:
            return copy_backend(backend, NoWaitBackend, durability)
        if self.patches is not None:
            return broken_backend(backend, None, durability, self.patches)
        if self.switch in _PATCHES:
            return broken_backend(backend, self.switch, durability)
        return copy_backend(backend, durability=durability)
