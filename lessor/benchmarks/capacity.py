"""The README's sizing figures, measured: server memory per live lease and per
finished run, and event-log bytes per action (``make bench-capacity``).

On a fresh embedded server (AOF everysec, as `lessor server` starts it) this
submits ``--runs`` one-action runs (small inputs, as a no-op task's), leases
them all, then completes them all, reading ``INFO memory`` (``used_memory``)
before, with every lease live, and after. Per live lease is the growth with
every run leased (the run, its action, its lease index entries and its three
events so far) over the runs; per finished run the growth once all completed
(five events, the run's and action's hashes, the finished index), which
retention later removes. Event-log bytes per action: the streams' ``MEMORY
USAGE`` (every entry sampled) and the raw field and value bytes of their
entries, over the actions. Renewal CPU per lease is ``lessor bench heartbeat``'s.

Run: ``python -m lessor.benchmarks.capacity [--runs 20000] [--json]``.
"""

from __future__ import annotations

import argparse
import sys

from lessor.benchmarks.common import dump_json, print_table, run
from lessor.core.codec import decode_entry
from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.scheduler.submit import RunSpec, submit_runs
from lessor.scheduler.values import pack_value
from lessor.server import EmbeddedServer

NAMESPACE, QUEUE = "proj/development", "capacity"


async def used_memory(backend: Backend) -> int:
    """The server's used_memory (bytes)."""
    return int((await backend.redis.info("memory"))["used_memory"])


async def stream_bytes(backend: Backend) -> tuple[int, int, int, int]:
    """(MEMORY USAGE of every partition's stream, raw field + value bytes of its entries, entries, events:
    an entry holds the events of one script call)."""
    usage = raw = entries = events = 0
    for keys in backend.all_keys():
        stream = keys.named("STREAM")
        usage += int(await backend.redis.memory_usage(stream, samples=0) or 0)
        last = "-"
        while True:
            batch = await backend.redis.xrange(stream, min=last, max="+", count=2000)
            if last != "-":
                batch = batch[1:]
            if not batch:
                break
            for entry_id, fields in batch:
                entries += 1
                raw += sum(len(k) + len(v) for k, v in fields.items())
                events += len(decode_entry(fields[b"e"], entry_id.decode()))
            last = batch[-1][0].decode()
    return usage, raw, entries, events


async def measure(url: str, runs: int) -> dict:
    """Memory per live lease and per finished run, event-log bytes per action, on the server at ``url``."""
    async with open_backend(url) as backend:
        client = LeaseClient(backend, "capacity", LeaseConfig())
        base = await used_memory(backend)
        for start in range(0, runs, 500):
            await submit_runs(backend, [RunSpec("noop", inputs=pack_value({"i": i}), namespace=NAMESPACE,
                                                queue=QUEUE, run_id=f"cap{i:08d}")
                                        for i in range(start, min(runs, start + 500))])
        leases: list[Lease] = []
        while len(leases) < runs:
            got = await client.acquire(NAMESPACE, QUEUE, min(500, runs - len(leases)))
            if not got:
                break
            leases.extend(got)
        if len(leases) != runs:
            raise RuntimeError(f"leased {len(leases)} of {runs} runs")
        live = await used_memory(backend)
        by_partition: dict[int, list[Lease]] = {}
        for lease in leases:
            by_partition.setdefault(lease.partition, []).append(lease)
        for partition, group in by_partition.items():
            for i in range(0, len(group), 200):
                await client.complete_many(partition, [(lease, pack_value(0)) for lease in group[i:i + 200]])
        finished = await used_memory(backend)
        usage, raw, entries, events = await stream_bytes(backend)
    return {"runs": runs, "partitions": backend.partitions,
            "bytes_per_live_lease": (live - base) / runs, "bytes_per_finished_run": (finished - base) / runs,
            "events_per_action": events / runs, "entries_per_action": entries / runs,
            "stream_bytes_per_action": usage / runs, "raw_event_bytes_per_action": raw / runs,
            "stream_bytes_per_event": usage / events}


def main(argv: list[str] | None = None) -> int:
    """Measure on a fresh embedded server (or ``--redis-url``, which must hold no data) and print."""
    p = argparse.ArgumentParser(prog="python -m lessor.benchmarks.capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20_000, help="one-action runs to lease, then complete (default 20000)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.runs < 100:
        p.error("--runs must be >= 100 (memory is measured in bulk)")
    with EmbeddedServer() as server:
        out = run(measure, server.url, args.runs)
    if args.json:
        dump_json(out)
        return 0
    print_table(f"capacity: {args.runs} one-action runs on a fresh embedded server ({out['partitions']} partitions)",
                [out], [("bytes_per_live_lease", "B / live lease"), ("bytes_per_finished_run", "B / finished run"),
                        ("events_per_action", "events / action"), ("entries_per_action", "entries / action"),
                        ("stream_bytes_per_action", "log B / action"),
                        ("stream_bytes_per_event", "log B / event"),
                        ("raw_event_bytes_per_action", "raw entry B / action")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
