"""The mutation gate: small bugs of our own in the Lua scripts and the keeper; `lessor simulate` must catch each.

    make mutants                                      # every mutant, seeds 1 and 2, 200 examples
    python -m lessor.simulations.mutants --switches   # the breakage switches (breakage.py) instead
    python -m lessor.simulations.mutants renew_ignores_deadline --seeds 1 --examples 50

Each mutant is one plausible slip, written for this gate (not copied from a bug
we had): a comparison off by one, a budget not spent, a check dropped, a time
taken at the wrong moment. A Lua mutant is a text replacement in one script or
in the prelude every script shares (``breakage.patched_source``, which asserts
its target text is there, so a change to the scripts cannot quietly turn a
mutant into a no-op); a keeper mutant is a LeaseKeeper subclass. Nothing in
production can reach them. The keeper mutants run over only with little slack
to spare, which independent faults rarely line up: the plans' edge
``strategies.cut_off_while_computing`` makes it (a worker cut off while
computing, with a slow clock, slow answers, or a server clock jump past the margin).

Each runs the exploration ``lessor simulate --examples N --seed S`` runs (its
default plan sizes; with store faults for mutants of the store's own code),
without shrinking, and stops at the first violation. The table gives, per
mutant and seed, the first example that caught it and the checkers that did;
then the catch rate. Exit status 1 unless every one is caught on every seed.
Keep the set growing with every new script or rule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

from lessor.leasing.codes import Code
from lessor.leasing.keeper import LeaseKeeper
from lessor.simulations.breakage import Breakage, Patches, Switch

# --- keeper mutants -------------------------------------------------------------------------------


class RenewedAtReplyKeeper(LeaseKeeper):
    """The self-fence deadline counted from when a renewal's answer arrived, not when it was sent."""

    def _apply(self, live, codes, sent_ms):
        super()._apply(live, codes, self.clock.now_ms())


class HeldAtReplyKeeper(LeaseKeeper):
    """A new lease's self-fence deadline counted from the acquire's answer, not its send."""

    def hold(self, lease, scope, acquired_send_ms):
        return super().hold(lease, scope, self.clock.now_ms())


class StaleIgnoredKeeper(LeaseKeeper):
    """A renewal answered STALE does not stop the work (only the self-fence deadline does)."""

    def _apply(self, live, codes, sent_ms):
        super()._apply(live, {ref: code for ref, code in codes.items() if code is not Code.STALE}, sent_ms)


class LazyWatchdogKeeper(LeaseKeeper):
    """The watchdog wakes once a heartbeat, whatever the nearest self-fence deadline."""

    def until_next_fence_ms(self) -> float:
        return self.config.heartbeat_ms


class LatestDeadlineWatchdogKeeper(LeaseKeeper):
    """The watchdog sleeps toward the *latest* self-fence deadline (max for min): with several
    leases held, an earlier one is fenced late."""

    def until_next_fence_ms(self) -> float:
        live = [h.last_ok_send_ms for h in self.held.values() if h.fenced is None]
        if not live:
            return self.config.heartbeat_ms
        due = max(live) + self.config.self_fence_after_ms - self.clock.now_ms()
        return min(max(due, 1.0), self.config.heartbeat_ms)


# --- the mutants ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """One small bug: Lua text replacements (script -> [(text, replacement)], "*" = the prelude)
    or a keeper class; ``store_faults``: explored with the store's own failures too."""

    name: str
    what: str
    patches: Patches = field(default_factory=dict)
    keeper: type[LeaseKeeper] | None = None
    store_faults: bool = False

    def breakage(self) -> Breakage:
        return Breakage(patches=self.patches or None, keeper=self.keeper, name=self.name)


MUTANTS = (
    # renew.lua
    Mutant("renew_ignores_deadline", "the renewal hot path renews a lease past its deadline",
           {"renew": [("h[4] ~= '1' and (#deadline == now_digits and deadline >= now_text\n"
                       "      or #deadline ~= now_digits and NOW <= tonumber(deadline)) then", "h[4] ~= '1' then")]}),
    Mutant("renew_ignores_token", "the renewal hot path renews any token of a running action",
           {"renew": [("h[1] == 'running' and h[2] == token and h[4] ~= '1'", "h[1] == 'running' and h[4] ~= '1'")]}),
    Mutant("renew_resumes_dead_lease", "a renewal past deadline + grace resumes the lease instead of expiring it",
           {"renew": [("    elseif L.lease_dead(lease) then", "    elseif false then")]}),
    Mutant("resume_extends_from_deadline", "a renewal in grace extends from the old deadline, not from now",
           {"renew": [("late_ms = NOW - deadline, deadline_ms = NOW + ttl_ms})",
                       "late_ms = NOW - deadline, deadline_ms = deadline + ttl_ms})")]}),
    # the prelude: the token check, expiry, aborts, tokens
    Mutant("token_check_ignores_phase", "the token check accepts the last token of an action no longer running",
           {"*": [("return h.phase == 'running' and h.token == token", "return h.token == token")]}),
    Mutant("expiry_requeues_when_spent", "an expired lease is requeued with no system retry left",
           {"*": [("    elseif sys_left > 0 then", "    elseif sys_left >= 0 then")]}),
    Mutant("expiry_ignores_abort", "an expired lease of an action being aborted is requeued",
           {"*": [("    if h.aborting == '1' then\n      base.type, base.reason = 'action_aborted'",
                   "    if false then\n      base.type, base.reason = 'action_aborted'")]}),
    Mutant("abort_spares_running", "an abort marks none of the run's running actions",
           {"*": [("      elseif h[1] == 'running' and h[2] ~= '1' then", "      elseif false then")]}),
    Mutant("tokens_repeat_within_a_ms", "two leases granted in the same ms may get the same token",
           {"*": [("      last = math.max(last + 1, NOW * 1024)", "      last = math.max(last, NOW * 1024)")]}),
    # fail.lua
    Mutant("fail_spends_system_retry", "a task's error spends a system retry instead of a user one",
           {"fail": [("sys_left = tonumber(h.sys_left), user_left = user_left - 1",
                      "sys_left = tonumber(h.sys_left) - 1, user_left = user_left")]}),
    Mutant("fail_retries_when_spent", "a task's error is retried with no user retry left",
           {"fail": [("if retryable and user_left > 0 then", "if retryable and user_left >= 0 then")]}),
    Mutant("backoff_exponent_off_by_one", "the backoff doubles once too often (2^attempt)",
           {"fail": [("2 ^ (attempt - 1)", "2 ^ attempt")]}),
    Mutant("fail_ignores_abort", "a failed attempt of an action being aborted is retried",
           {"fail": [("if h.aborting == '1' then\n  -- An abort", "if false then\n  -- An abort")]}),
    # release.lua, reap.lua, abort.lua
    Mutant("release_spends_system_retry", "giving a lease back spends a system retry",
           {"release": [("sys_left = tonumber(h.sys_left), user_left = tonumber(h.user_left), ready_at_ms = 0",
                         "sys_left = tonumber(h.sys_left) - 1, user_left = tonumber(h.user_left), ready_at_ms = 0")]}),
    Mutant("reap_promotes_early", "the reaper promotes a backoff a second before it is due",
           {"reap": [("drain(DELAYED, S(NOW), false, function(ref)", "drain(DELAYED, S(NOW + 1000), false, function(ref)")]}),
    Mutant("abort_spares_children", "aborting a run aborts its root action only",
           {"abort": [("abort_actions(ns, run, nil, reason)", "abort_actions(ns, run, {'a0'}, reason)")]}),
    # submit_child.lua, complete.lua, submit.lua
    Mutant("child_submit_unfenced", "a child submission is refused only for an unknown parent, not a stale one",
           {"submit_child": [("if code ~= OK then return {code, tonumber(h.token)} end",
                              "if code == UNKNOWN then return {code, tonumber(h.token)} end")]}),
    Mutant("child_submit_ignores_abort", "a parent being aborted may still submit children",
           {"submit_child": [("if h.aborting == '1' then return {ABORTED, 0} end", "")]}),
    Mutant("complete_caches_before_fence", "a completion writes the cache before its token is checked",
           {"complete": [("  local h, code = fence(ref, token, worker, 'complete', 'attempt', 'cache_key', 'timeout_ms', 'queue')",
                          "  local h0 = redis.call('HGET', akey(ref), 'cache_key')\n"
                          "  if h0 and h0 ~= '' then redis.call('HSET', cache_hash((split_ref(ref))), h0, result) end\n"
                          "  local h, code = fence(ref, token, worker, 'complete', 'attempt', 'cache_key', 'timeout_ms', 'queue')")]}),
    Mutant("submit_repeat_creates", "a repeated submit of a run still running creates it again",
           {"submit": [("  if existing[1] then", "  if existing[1] and existing[1] ~= 'running' then")]}),
    # acquire.lua and the prelude: fair share
    Mutant("fair_vt_from_start", "the queue's virtual time is the pass a pick started from, not the one it reached",
           {"acquire": [("    if any then picked = pass end", "    if any then picked = pass - taken * c.stride end")]}),
    # the keeper
    Mutant("keeper_renewed_at_reply", RenewedAtReplyKeeper.__doc__, keeper=RenewedAtReplyKeeper),
    Mutant("keeper_held_at_reply", HeldAtReplyKeeper.__doc__, keeper=HeldAtReplyKeeper),
    Mutant("keeper_ignores_stale", StaleIgnoredKeeper.__doc__, keeper=StaleIgnoredKeeper),
    Mutant("keeper_lazy_watchdog", LazyWatchdogKeeper.__doc__, keeper=LazyWatchdogKeeper),
    Mutant("keeper_watchdog_latest_deadline", LatestDeadlineWatchdogKeeper.__doc__,
           keeper=LatestDeadlineWatchdogKeeper),
)

# The switches' profiles (the options of ``lessor simulate`` they are explored with): the store
# switches need the store's own failures, and durable acknowledgements exist in fsync mode only.
PROFILES: dict[Switch, dict] = {
    Switch.REPORT_GIVES_UP: {"store_faults": True}, Switch.REAPER_DIES: {"store_faults": True},
    Switch.NO_EPOCH_EXTENSION: {"store_faults": True}, Switch.TOKEN_EPOCH_RUN_ID_ONLY: {"store_faults": True},
    Switch.SKIP_DURABILITY_WAIT: {"store_faults": True, "durability": "fsync"},
}


@dataclass
class Catch:
    """One exploration of one broken system on one seed."""

    name: str
    seed: int
    first_example: int | None
    checkers: list[str]
    examples: int
    seconds: float
    error: str = ""      # the exploration itself could not run

    @property
    def caught(self) -> bool:
        return self.first_example is not None


def catch(name: str, breakage: Breakage, seed: int, examples: int, profile: dict) -> Catch:
    """Explore up to ``examples`` plans with ``breakage`` on ``seed`` (no shrinking), with the
    options of ``lessor simulate`` in ``profile`` (store_faults, durability)."""
    from lessor.simulations.explore import explore

    breakage.check_patches()   # a patch that no longer applies is an error, never a catch
    started = time.perf_counter()  # clock: reporting only
    # shrink_runs=1: the phases `lessor simulate` runs (hypothesis draws other plans without a
    # shrink phase), so the first example is the one `catch SWITCH --seed S` reports; no real shrinking.
    found = explore(examples, seed=seed, breakage=breakage, shrink_runs=1, **profile)
    checkers = sorted({v.checker for v in found.shrunk.verdict.violations}) if found.shrunk else []
    return Catch(name, seed, found.first_failure_at, checkers, found.examples,
                 time.perf_counter() - started)  # clock: reporting only


def _targets(args) -> list[tuple[str, Breakage, dict]]:
    if args.switches:
        out = [(s.value, Breakage(s), PROFILES.get(s, {})) for s in Switch]
    else:
        out = [(m.name, m.breakage(), {"store_faults": True} if m.store_faults else {}) for m in MUTANTS]
    if args.names:
        unknown = set(args.names) - {name for name, _, _ in out}
        if unknown:
            raise SystemExit(f"unknown: {', '.join(sorted(unknown))}")
        out = [t for t in out if t[0] in args.names]
    return out


def _run_one(job: tuple[str, Breakage, dict, int, int]) -> Catch:
    name, breakage, profile, seed, examples = job
    try:
        return catch(name, breakage, seed, examples, profile)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other runs go on
        return Catch(name, seed, None, [], 0, 0.0, error=f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lessor.simulations.mutants",
                                description="run lessor simulate on each mutant (or switch); print the catch rate")
    p.add_argument("names", nargs="*", help="only these mutants (or switches)")
    p.add_argument("--switches", action="store_true", help="the breakage switches instead of the mutants")
    p.add_argument("--examples", type=int, default=200, help="plans per mutant and seed (default 200)")
    p.add_argument("--seeds", default="1,2", help="hypothesis seeds, comma-separated (default 1,2)")
    p.add_argument("--jobs", type=int, default=1, help="explorations run at once, each on its own server")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(name, breakage, profile, seed, args.examples) for name, breakage, profile in _targets(args)
            for seed in seeds]
    results = _run_all(jobs, args.jobs, quiet=args.json)
    caught = sum(r.caught for r in results)
    if args.json:
        print(json.dumps({"results": [r.__dict__ for r in results], "caught": caught, "runs": len(results)}))
    else:
        _print_table(results, seeds, "switch" if args.switches else "mutant")
        print(f"catch rate: {caught}/{len(results)} ({100 * caught / max(1, len(results)):.0f} %) within "
              f"{args.examples} examples on seeds {args.seeds}")
    return 0 if caught == len(results) else 1


def _run_all(jobs, n: int, quiet: bool) -> list[Catch]:
    """Each exploration in a fresh process, as ``lessor simulate`` runs: hypothesis draws other
    plans in a process that already ran an exploration, so the first example would depend on
    what ran before."""
    import concurrent.futures
    import multiprocessing

    results = []
    with concurrent.futures.ProcessPoolExecutor(max(1, n), mp_context=multiprocessing.get_context("spawn"),
                                                max_tasks_per_child=1) as pool:
        for result in pool.map(_run_one, jobs):
            results.append(result)
            _progress(result, quiet)
    return results


def _progress(r: Catch, quiet: bool) -> None:
    if not quiet:
        print(f"  {r.name} seed {r.seed}: " + (f"caught at example {r.first_example} by {', '.join(r.checkers)}"
                                                if r.caught else r.error or f"NOT caught in {r.examples} examples")
              + f" ({r.seconds:.0f} s)", file=sys.stderr, flush=True)


def _print_table(results: list[Catch], seeds: list[int], kind: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"catch table: first example that caught each {kind}")
    table.add_column(kind)
    for seed in seeds:
        table.add_column(f"seed {seed}", justify="right")
    table.add_column("caught by")
    names = list(dict.fromkeys(r.name for r in results))
    for name in names:
        row = {r.seed: r for r in results if r.name == name}
        checkers = sorted({c for r in row.values() for c in r.checkers})
        table.add_row(name, *[str(row[s].first_example) if row[s].caught else "[red]missed[/red]" for s in seeds],
                      ", ".join(checkers))
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
