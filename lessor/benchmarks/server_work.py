"""The server's work per scheduled action, in instructions: load-independent, for before/after claims.

``python -m lessor.benchmarks.server_work`` starts the embedded valkey-server
under valgrind's callgrind (AOF on, appendfsync everysec, as the embedded
default), drives a fixed workload through lessor's own client code (submit
``--batch`` runs at a time, acquire them ``--batch`` at a time, complete each
partition's leases in one call: the path of `bench schedule`, without the worker
process), and reports per action: the server's instructions (every thread:
the event loop, the AOF writer, bio), the commands and script calls
(``INFO commandstats``) and the bytes appended to the AOF. A warm-up of
``--warmup`` actions runs with collection off, so loading the library and
first-touch allocations are not counted.

Instruction counts do not move with machine load, unlike CPU time on a shared
machine: compare two versions by running this on each (``--json`` for the
figures, ``--annotate`` for the functions where the instructions went).
Needs valgrind (``apt-get install valgrind``); ``--no-valgrind`` measures the
same workload's ``INFO cpu`` time instead (noisy on a loaded machine).

``--variant NAME`` (with ``--phases``) weighs one piece of a script's work: the
library is loaded with that piece switched off (``VARIANTS``; each is an
experiment, not a correct system), and the difference from today's library is
what the piece costs. ``--variant all`` runs today's library and every variant,
each on a fresh server, and prints the differences per phase.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

from lessor.benchmarks.common import command_stats, run, server_cpu_s, server_info
from lessor.leasing.backend import open_backend
from lessor.leasing.client import LeaseClient
from lessor.leasing.scripts import Scripts
from lessor.scheduler.submit import Retries, RunSpec, idempotent_run_id, submit_runs
from lessor.server import EmbeddedServer, find_server_binary

NAMESPACE, QUEUE = "bench/development", "work"
# name -> (what it switches off, (script or '*' for the prelude, old text, new text) patches)
VARIANTS: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {
    "no_event_check": ("emit's check of each event against its definition", (
        ("*", "(bad_event(ev) or ev.v == IMPLIES_RUN", "(nil or ev.v == IMPLIES_RUN"),)),
    "no_pack": ("events not msgpack-encoded (a one-byte entry appended instead)", (
        ("*", "  local packed = cmsgpack.pack(events)\n", "  local packed = '\\144x'\n"),)),
    "no_xadd": ("events encoded but not appended to the stream (each call's one XADD)", (
        ("*", "  return redis.call('XADD', STREAM, '*', 'e', string.sub(packed, header + 1))", "  return '0-0'"),)),
    "no_submit_checks": ("submit's argument checks", (
        ("submit", "local prev\nfor i = 1, n, 14 do", "local prev\nfor i = 1, 0, 14 do"),)),
    "no_descendants": ("the look for live children when an action ends (one SMEMBERS)", (
        ("*", "      abort_descendants(ev.ns, ev.run, ev.action, nxt)", ""),)),
}
_patches: tuple[tuple[str, str, str], ...] = ()   # the variant being measured (set by measure)


@contextlib.asynccontextmanager
async def _backend(url: str):
    """open_backend(url), with the variant's library when one is being measured."""
    async with open_backend(url) as backend:
        if _patches:
            backend.scripts = Scripts(backend.redis, backend.clock, patches=_patches)
        yield backend


async def one_round(url: str, n: int, batch: int, tag: str) -> None:
    """Submit, lease and complete ``n`` no-op runs, ``batch`` at a time (each step one call per partition)."""
    async with _backend(url) as backend:
        client = LeaseClient(backend, "work-worker")
        retries = Retries(system=0)
        for start in range(0, n, batch):
            count = min(batch, n - start)
            await submit_runs(backend, [RunSpec("noop", namespace=NAMESPACE, queue=QUEUE, retries=retries,
                                                run_id=idempotent_run_id(NAMESPACE, f"{tag}-{start + i}"))
                                        for i in range(count)])
            done = 0
            while done < count:
                leases = await client.acquire(NAMESPACE, QUEUE, count - done)
                if not leases:
                    raise RuntimeError(f"server_work: {count - done} submitted runs were not leased; "
                                       "is another worker on queue 'work'?")
                by_partition: dict[int, list] = {}
                for lease in leases:
                    by_partition.setdefault(lease.partition, []).append((lease, b""))
                for partition, items in by_partition.items():
                    await client.complete_many(partition, items)
                done += len(leases)


async def phased_round(url: str, n: int, batch: int, tag: str, between) -> None:
    """``one_round`` in phases: submit all, lease all, renew every lease once (on time: the
    heartbeat's hot path), complete all, calling ``between(phase)`` after each (a callgrind
    dump), to tell the scripts' costs apart."""
    async with _backend(url) as backend:
        client = LeaseClient(backend, "work-worker")
        retries = Retries(system=0)
        for start in range(0, n, batch):
            await submit_runs(backend, [RunSpec("noop", namespace=NAMESPACE, queue=QUEUE, retries=retries,
                                                run_id=idempotent_run_id(NAMESPACE, f"{tag}-{start + i}"))
                                        for i in range(min(batch, n - start))])
        between("submit")
        leases = []
        while len(leases) < n:
            got = await client.acquire(NAMESPACE, QUEUE, min(batch, n - len(leases)))
            if not got:
                raise RuntimeError(f"server_work: {n - len(leases)} submitted runs were not leased")
            leases += got
        between("acquire")
        for start in range(0, n, batch):
            by_partition = {}
            for lease in leases[start:start + batch]:
                by_partition.setdefault(lease.partition, []).append(lease)
            for partition, held in by_partition.items():
                codes = await client.renew_partition(partition, held)
                if set(codes.values()) != {0}:
                    raise RuntimeError(f"server_work: renewals not all on time: {codes}")
        between("renew")
        for start in range(0, n, batch):
            by_partition: dict[int, list] = {}
            for lease in leases[start:start + batch]:
                by_partition.setdefault(lease.partition, []).append((lease, b""))
            for partition, items in by_partition.items():
                await client.complete_many(partition, items)
        between("complete")


async def marks(url: str) -> dict:
    """Commands so far (commandstats), script calls, AOF bytes and CPU seconds of the server."""
    async with open_backend(url) as backend:
        stats = await command_stats(backend.redis)
        persistence = await server_info(backend.redis, "persistence")
        return {"commands": sum(s["calls"] for c, s in stats.items() if c != "info"),
                "scripts": sum(s["calls"] for c, s in stats.items() if c.startswith(("fcall", "eval"))),
                "by_command": {c: s["calls"] for c, s in stats.items()},
                "aof_bytes": int(persistence.get("aof_current_size", 0)),
                "cpu_s": await server_cpu_s(backend.redis)}


def valgrind_wrapper(workdir: str) -> str:
    """A script that runs the real valkey-server under callgrind (its counts are zeroed before the workload)."""
    if not shutil.which("valgrind"):
        raise SystemExit("server_work needs valgrind (apt-get install valgrind), or pass --no-valgrind")
    path = os.path.join(workdir, "valkey-under-callgrind")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind "
                f"--callgrind-out-file={workdir}/callgrind.out.%p {find_server_binary()} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, stdout=subprocess.DEVNULL)


def total_instructions(workdir: str) -> tuple[int, str]:
    """Summed Ir over the dump files callgrind wrote (one per dump), and the newest file."""
    files = sorted(glob.glob(os.path.join(workdir, "callgrind.out.*")), key=os.path.getmtime)
    newest, total = files[-1], 0
    with open(newest) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    return total, newest


def measure(args: argparse.Namespace, variant: str = "") -> dict:
    """Run the workload once (with ``variant``'s library, if given) and return the server's work per action."""
    global _patches
    _patches = VARIANTS[variant][1] if variant else ()
    workdir = tempfile.mkdtemp(prefix="lessor-server-work-")
    env_before = os.environ.get("LESSOR_SERVER_BINARY")
    if not args.no_valgrind:
        os.environ["LESSOR_SERVER_BINARY"] = valgrind_wrapper(workdir)
    try:
        server = EmbeddedServer(extra_args=tuple(args.server_arg)).start(timeout_s=180.0)
    finally:
        if env_before is None:
            os.environ.pop("LESSOR_SERVER_BINARY", None)
        else:
            os.environ["LESSOR_SERVER_BINARY"] = env_before
    try:
        run(one_round, server.url, args.warmup, args.batch, "warmup")
        before = run(marks, server.url)
        if not args.no_valgrind:
            callgrind(server._proc.pid, "-z")   # counts from here on only
        out = {"actions": args.actions, "batch": args.batch}
        if args.phases and not args.no_valgrind:
            def between(phase: str) -> None:
                callgrind(server._proc.pid, "-d")
                out[f"{phase}_instructions_per_action"] = total_instructions(workdir)[0] / args.actions
                callgrind(server._proc.pid, "-z")
            run(phased_round, server.url, args.actions, args.batch, "measured", between)
        else:
            run(one_round, server.url, args.actions, args.batch, "measured")
        after = run(marks, server.url)
        if not args.no_valgrind and not args.phases:
            callgrind(server._proc.pid, "-d")
            instructions, dump = total_instructions(workdir)
            out |= {"instructions_per_action": instructions / args.actions, "callgrind_dump": dump}
    finally:
        server.stop(timeout_s=60)
    n = args.actions
    by_command = {c: (after["by_command"][c] - before["by_command"].get(c, 0)) / n for c in after["by_command"]}
    out |= {"commands_per_action": (after["commands"] - before["commands"]) / n,
            "script_calls_per_action": (after["scripts"] - before["scripts"]) / n,
            "aof_bytes_per_action": (after["aof_bytes"] - before["aof_bytes"]) / n,
            "cpu_us_per_action": (after["cpu_s"] - before["cpu_s"]) * 1e6 / n,
            "by_command": {c: v for c, v in sorted(by_command.items()) if v > 0}}
    return out


PHASES = ("submit", "acquire", "complete")


def weigh_all(args: argparse.Namespace) -> int:
    """Today's library and every variant, each on a fresh server: what each piece costs, per phase."""
    from lessor.benchmarks.common import print_table

    base = measure(args)
    rows, out = [], {"today": base, "variants": {}}
    total = sum(base[f"{ph}_instructions_per_action"] for ph in PHASES)
    rows.append({"variant": "today's library", **{ph: base[f"{ph}_instructions_per_action"] / 1e3 for ph in PHASES},
                 "share": 1.0, "what": "instructions per action (thousands)"})
    for name, (what, _) in VARIANTS.items():
        v = measure(args, name)
        saved = {ph: (base[f"{ph}_instructions_per_action"] - v[f"{ph}_instructions_per_action"]) / 1e3
                 for ph in PHASES}
        out["variants"][name] = v | {"saved_thousands": saved}
        rows.append({"variant": name, **saved, "share": sum(saved.values()) * 1e3 / total, "what": what})
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    print_table(f"server work per action, {args.actions:,} actions in batches of {args.batch}: what each piece "
                "costs (thousands of instructions saved when it is switched off)", rows,
                [("variant", "variant"), ("submit", "submit"), ("acquire", "acquire"), ("complete", "complete"),
                 ("share", "share of all"), ("what", "switched off")])
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lessor.benchmarks.server_work [--actions N] [--batch B] [--json] [--annotate]``."""
    p = argparse.ArgumentParser(prog="python -m lessor.benchmarks.server_work", description=__doc__.split("\n")[0])
    p.add_argument("--actions", type=int, default=2000, help="actions measured (default 2000)")
    p.add_argument("--warmup", type=int, default=400, help="actions before collection starts (default 400)")
    p.add_argument("--batch", type=int, default=100, help="runs per submit, leases per acquire (default 100)")
    p.add_argument("--no-valgrind", action="store_true", help="INFO cpu time instead of instructions")
    p.add_argument("--annotate", action="store_true", help="print callgrind_annotate's top functions too")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="an extra valkey-server argument (repeat: --server-arg=--hash-max-listpack-entries "
                        "--server-arg=16) to compare server settings on the same workload")
    p.add_argument("--phases", action="store_true",
                   help="submit all, lease all, renew each lease once (on time), complete all: instructions "
                        "per action (per renewal) of each")
    p.add_argument("--variant", choices=["all", *VARIANTS], default="",
                   help="with --phases: measure with one piece of work switched off (see VARIANTS), or 'all': "
                        "today's library, then every variant, and what each piece costs per phase")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.actions < 1 or args.batch < 1 or args.warmup < 1:
        raise SystemExit("--actions, --batch and --warmup must be >= 1")
    if args.variant and (not args.phases or args.no_valgrind):
        raise SystemExit("--variant needs --phases and valgrind (instruction counts: CPU time is too noisy)")
    if args.variant == "all":
        return weigh_all(args)
    out = measure(args, args.variant)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        for key, value in out.items():
            print(f"{key}: {value:,.1f}" if isinstance(value, float) else f"{key}: {value}")
    if args.annotate and "callgrind_dump" in out:
        print(subprocess.run(["callgrind_annotate", "--inclusive=no", out["callgrind_dump"]],
                             capture_output=True, text=True).stdout[:12000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
