"""`make demo` / `lessor demo`: the lease story, end to end, on the embedded server.

A reaper, three worker processes, and a run whose root fans out to 20
children. Mid-run one worker is paused with SIGSTOP past its grace period: its
leases expire and fail over to healthy workers; then it is resumed with
SIGCONT and its late report is refused. The run succeeds. The demo prints the
timeline as it happens and the final tree, then checks guarantee 1 and
`replay --verify` from the log, and exits non-zero if anything failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import anyio
from rich.console import Console
from rich.markup import escape

import lessor
from lessor.cli.render import describe, print_tree
from lessor.core import events as ev
from lessor.leasing.backend import Backend
from lessor.leasing.eventlog import EventLog
from lessor.leasing.reaper import Reaper
from lessor.leasing.urls import redact
from lessor.leasing.replay import verify
from lessor.scheduler.launch import worker_command
from lessor.scheduler.query import action_order, run_actions
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import Retries
from lessor.server import EmbeddedServer, spawn_child
from lessor.simulations.checkers import single_owner

NAMESPACE, QUEUE = "demo/development", "demo"
APP = "lessor.cli.demo:registry"  # the workers' --app: the tasks below
TTL_MS, GRACE_MS = 2000, 1500

registry = Registry()


@registry.task
async def fanout(ctx, n: int) -> dict:
    """The root: submit n children, wait for all, sum their outputs."""
    children = [await ctx.submit("work", {"i": i}) for i in range(n)]
    return {"sum": sum([await child.result() for child in children]), "children": n}


@registry.task
async def work(ctx, i: int) -> int:
    """A child: 1.5-2.25 s of 'work', then i squared."""
    await anyio.sleep(1.5 + (i % 4) * 0.25)
    return i * i


@dataclass
class Story:
    """What the demo saw happen, from the log."""

    children: int = 0
    first_leases: dict[str, int] = field(default_factory=dict)
    paused: str = ""
    victim_actions: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    failed_over: set[str] = field(default_factory=set)
    refused: list[ev.ReportRejected] = field(default_factory=list)
    run_done: anyio.Event = field(default_factory=anyio.Event)
    all_failed_over: anyio.Event = field(default_factory=anyio.Event)
    refusal_seen: anyio.Event = field(default_factory=anyio.Event)


class Timeline:
    """Prints timeline lines with time since the run started (server clock)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.start_ms = 0

    def say(self, ts_ms: int, text: str, style: str = "") -> None:
        if not self.quiet:
            self.console.print(f"[dim]+{(ts_ms - self.start_ms) / 1000:6.2f}s[/dim] {escape(text)}", style=style,
                               highlight=False, soft_wrap=True)


def spawn_workers(url: str, n: int, logdir: str) -> list[subprocess.Popen]:
    """Start n `lessor worker` processes (they die with us)."""
    procs = []
    for i in range(1, n + 1):
        log = open(os.path.join(logdir, f"w-{i}.log"), "w")
        procs.append(spawn_child(
            worker_command(url, APP, worker_id=f"w-{i}", queue=QUEUE, namespace=NAMESPACE, concurrency=8,
                           ttl_ms=TTL_MS, grace_ms=GRACE_MS, drain_s=2),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    return procs


_STYLE = {"lease_expired": "bold red", "report_rejected": "bold magenta", "run_completed": "bold green",
          "lease_resumed": "yellow", "action_leased": "cyan"}


def narrate(e: ev.Event, story: Story) -> str | None:
    """The demo's line for an event, or None to stay quiet about it."""
    if isinstance(e, ev.ActionLeased) and e.action != "a0":
        if e.attempt > 1:
            return f"failover: {e.action} -> {e.worker} (attempt {e.attempt}, new token {e.token})"
        story.first_leases[e.worker] = story.first_leases.get(e.worker, 0) + 1
        if sum(story.first_leases.values()) == story.children:
            spread = ", ".join(f"{w} x{n}" for w, n in sorted(story.first_leases.items()))
            return f"lease granted for all {story.children} children: {spread}"
        return None
    if isinstance(e, (ev.ActionCreated, ev.ActionSucceeded)) and e.action != "a0":
        return None
    if isinstance(e, ev.ActionRequeued) and e.reason == "lease_expired":
        return None  # the lease_expired line says it, and the failover line follows
    return describe(e)


async def follow_story(backend: Backend, run_id: str, story: Story, timeline: Timeline, start: dict) -> None:
    """Watch the run's events; narrate the interesting ones; note the story's milestones."""
    async for entry in EventLog(backend).follow(from_ids=start, block_ms=500):
        e = entry.event
        if e.run != run_id:
            continue
        line = narrate(e, story)
        if line:
            timeline.say(e.ts, line, _STYLE.get(e.TYPE, ""))
        if isinstance(e, ev.LeaseExpired) and e.worker == story.paused:
            story.expired.add(e.action)
        if isinstance(e, ev.ActionLeased) and e.action in story.expired:
            story.failed_over.add(e.action)
            if story.failed_over >= story.victim_actions:
                story.all_failed_over.set()
        if isinstance(e, ev.ReportRejected) and e.worker == story.paused:
            story.refused.append(e)
            story.refusal_seen.set()
        if isinstance(e, ev.RunCompleted):
            story.run_done.set()


async def pick_victim(backend: Backend, run_id: str, story: Story) -> tuple[str, list]:
    """A worker holding running children (but not the root, if possible), once all children run."""
    while sum(story.first_leases.values()) < story.children:  # the timeline has shown the leases
        await anyio.sleep(0.02)
    while True:
        actions = await run_actions(backend, NAMESPACE, run_id)
        running = [a for a in actions if a.phase.value == "running" and a.action_id != "a0"]
        if len(running) >= (len(actions) - 1) // 2 and running:
            root_worker = next((a.worker for a in actions if a.action_id == "a0"), "")
            by_worker: dict[str, list] = {}
            for a in running:
                by_worker.setdefault(a.worker, []).append(a)
            choices = sorted(by_worker, key=lambda w: (w == root_worker, -len(by_worker[w])))
            return choices[0], by_worker[choices[0]]
        await anyio.sleep(0.05)


async def tell_the_story(client: lessor.Client, procs: list, children: int, console: Console, quiet: bool) -> dict:
    """Submit the run, pause the worker that holds the most children, watch them fail over, resume it."""
    backend = client.backend
    timeline = Timeline(console, quiet)
    story = Story(children=children)
    log = EventLog(backend)
    start = await log.last_ids()
    submitted = await client.submit_run("fanout", {"n": children}, namespace=NAMESPACE, queue=QUEUE,
                                        retries=Retries(system=3))
    run_id = submitted.run_id
    timeline.start_ms = (await log.run_events(NAMESPACE, run_id))[0].ts
    async with anyio.create_task_group() as tg:
        tg.start_soon(follow_story, backend, run_id, story, timeline, start)
        tg.start_soon(Reaper(backend, interval_ms=100).run)
        victim, held = await pick_victim(backend, run_id, story)
        story.paused, story.victim_actions = victim, {a.action_id for a in held}
        proc = procs[int(victim.split("-")[1]) - 1]
        proc.send_signal(signal.SIGSTOP)
        held_ids = ", ".join(sorted(story.victim_actions, key=action_order))
        timeline.say(await server_ms(backend), f"PAUSE {victim} (SIGSTOP) while it holds {held_ids}: its heartbeats stop",
                     "bold")
        deadline = max(a.deadline_ms for a in held)
        tg.start_soon(say_at, backend, timeline, deadline,
                      f"heartbeats missed: the deadline of {victim}'s last lease passes; grace period of "
                      f"{GRACE_MS} ms (a renewal now would still resume it)")
        tg.start_soon(say_at, backend, timeline, deadline + GRACE_MS,
                      f"grace period over: {victim}'s leases are dead on the server clock; the reaper takes them")
        with anyio.fail_after(30):
            await story.all_failed_over.wait()
        moved = ", ".join(sorted(story.failed_over, key=action_order))
        timeline.say(await server_ms(backend), f"failover done: {moved} now run on healthy workers")
        proc.send_signal(signal.SIGCONT)
        timeline.say(await server_ms(backend), f"RESUME {victim} (SIGCONT): it still believes it owns its old leases", "bold")
        with anyio.fail_after(30):
            await story.refusal_seen.wait()
            await story.run_done.wait()
        tg.cancel_scope.cancel()
    return {"run_id": run_id, "victim": victim, "story": story}


async def server_ms(backend: Backend) -> int:
    """The server's clock (the one that judges deadlines), in ms."""
    seconds, micros = await backend.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def say_at(backend: Backend, timeline: Timeline, at_ms: int, text: str) -> None:
    """Narrate ``text`` when the server clock reaches ``at_ms``."""
    await anyio.sleep(max(0, at_ms - await server_ms(backend)) / 1000)
    timeline.say(at_ms, text, "yellow")


async def verify_everything(client: lessor.Client, run_id: str, story: Story, console: Console) -> bool:
    """Print the tree and every check (the story's milestones, guarantee 1, replay --verify); all passed?"""
    backend = client.backend
    info = await client.get_run(run_id, namespace=NAMESPACE)
    print_tree(info, await client.tree(run_id, namespace=NAMESPACE))
    entries = await EventLog(backend).read_all()
    violations = single_owner.check((e.partition, e.event) for e in entries)
    diffs = await verify(backend)
    checks = [
        (f"run {run_id} succeeded with result {info.result}", info.phase.value == "succeeded"),
        (f"lease expired for {len(story.expired)} actions of the paused worker "
         f"({', '.join(sorted(story.expired, key=action_order))})", bool(story.expired)),
        ("every one of them failed over to a healthy worker", story.failed_over >= story.victim_actions),
        (f"{len(story.refused)} late reports from the paused worker refused and recorded "
         f"({', '.join(sorted({r.kind for r in story.refused}))})", bool(story.refused)),
        (f"guarantee 1 (single owner) holds over {len(entries)} events", not violations),
        ("replay --verify: the fold of the log equals the live state", not diffs),
    ]
    for text, ok in checks:
        console.print(("[green]✔[/green] " if ok else "[red]✘[/red] ") + text, highlight=False)
    for v in violations:
        console.print(f"  {v}", style="red", markup=False)
    for d in diffs:
        console.print(f"  DIFF {d}", style="red", markup=False)
    return all(ok for _, ok in checks)


class _Given:
    """A server the user named (--redis-url): used as it is, never started or stopped here."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> "_Given":
        return self

    def __exit__(self, *exc) -> None:
        return None


async def main(children: int, workers: int, quiet: bool, url: str | None = None) -> int:
    console = Console()
    started = time.perf_counter()  # clock: demo wall time
    with (_Given(url) if url else EmbeddedServer()) as server, \
            tempfile.TemporaryDirectory(prefix="lessor-demo-") as logdir:
        where = f"the server at {redact(server.url)}" if url else f"embedded Valkey at {server.url}"
        console.print(f"[bold]lessor demo[/bold]: {where}; reaper every 100 ms; "
                      f"{workers} workers (ttl {TTL_MS} ms, grace {GRACE_MS} ms); a run fanning out to "
                      f"{children} children", highlight=False, markup=True)
        async with lessor.connect(server.url) as client:
            procs = spawn_workers(server.url, workers, logdir)
            try:
                result = await tell_the_story(client, procs, children, console, quiet)
                ok = await verify_everything(client, result["run_id"], result["story"], console)
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                for proc in procs:
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    console.print(f"demo {'passed' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s",  # clock: demo
                  style="bold green" if ok else "bold red")
    return 0 if ok else 1


def run_demo(children: int = 20, workers: int = 3, quiet: bool = False, url: str | None = None) -> int:
    """Entry of `lessor demo`; returns the exit code. ``url``: a server to use instead of a
    private embedded one (any URL lessor takes: a cluster or Sentinel one too)."""
    if children < 1 or workers < 2:
        raise ValueError("the demo needs at least 1 child and 2 workers (one is paused)")
    return anyio.run(main, children, workers, quiet, url)
