"""What settings and triggers cost a submit: CPU per operation, as ratios to a plain submit.

Four variants against the same server, in alternating chunks (so load that
comes and goes hits each alike), medians over rounds:

* ``explicit``: submit_run with queue, retries, timeout and durability given
  (no settings read): the baseline;
* ``settings (cached)``: the same defaults left to the namespace's settings,
  read through the client's cache (the default, ``settings_ttl_s=5``);
* ``settings (ttl 0)``: the settings read at every submit (one more round trip);
* ``trigger fire``: Client.trigger with a new dedup key each time (it starts a run).

CPU (this process's, and the server's from INFO cpu) is the figure to read on a
shared machine; wall time is printed too. Writes only to the namespace
``bench/production`` (its project settings and one trigger, deleted at the end).
"""

from __future__ import annotations

import argparse
import statistics
import time

from lessor.benchmarks.common import dump_json, print_table, run, server_cpu_s

NS = "bench/production"
VARIANTS = ("explicit", "settings (cached)", "settings (ttl 0)", "trigger fire")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk", type=int, default=200, help="operations per variant per round (default 200)")
    p.add_argument("--rounds", type=int, default=15, help="rounds (default 15)")
    p.add_argument("--json", action="store_true")


async def measure(url: str | None, chunk: int, rounds: int) -> list[dict]:
    import lessor
    from lessor.scheduler.api import Client

    async with lessor.connect(url, settings_ttl_s=5.0) as client:
        redis = client.backend.redis
        scope = await client.read_settings(NS)
        await client.write_settings(NS, {"run.default_queue": "bench", "run.default_retries": 1,
                                         "run.timeout_s": 60}, version=scope.version)
        await client.create_trigger("bench-hook", "noop", namespace=NS, window_s=3600, queue="bench")
        uncached = Client(client.backend, None, settings_ttl_s=0)
        retries = lessor.Retries(user=1)
        ops = {
            "explicit": lambda k: client.submit_run("noop", namespace=NS, queue="bench", retries=retries,
                                                    timeout_s=60, durability=str(client.backend.durability)),
            "settings (cached)": lambda k: client.submit_run("noop", namespace=NS),
            "settings (ttl 0)": lambda k: uncached.submit_run("noop", namespace=NS),
            "trigger fire": lambda k: client.trigger("bench-hook", {"k": k}, dedup_key=f"d{k}-{time.time_ns()}",
                                                     namespace=NS),
        }
        samples: dict[str, dict[str, list[float]]] = {v: {"client": [], "server": [], "wall": []} for v in VARIANTS}
        k = 0
        for _ in range(rounds):
            for name in VARIANTS:
                s0, c0, w0 = await server_cpu_s(redis), time.process_time(), time.perf_counter()  # clock: benchmark
                for _ in range(chunk):
                    k += 1
                    await ops[name](k)
                c1, w1 = time.process_time(), time.perf_counter()  # clock: benchmark timing only
                s1 = await server_cpu_s(redis)
                for what, value in (("client", c1 - c0), ("server", s1 - s0), ("wall", w1 - w0)):
                    samples[name][what].append(value / chunk * 1e6)
        await client.delete_trigger("bench-hook", namespace=NS)
    base = {what: statistics.median(samples["explicit"][what]) for what in ("client", "server", "wall")}
    rows = []
    for name in VARIANTS:
        row = {"variant": name}
        for what in ("client", "server", "wall"):
            med = statistics.median(samples[name][what])
            row[f"{what}_us"], row[f"{what}_ratio"] = med, med / base[what] if base[what] else None
        rows.append(row)
    return rows


def main(args: argparse.Namespace) -> int:
    """`lessor bench defaults`."""
    rows = run(measure, getattr(args, "redis_url", None), args.chunk, args.rounds)
    if args.json:
        dump_json({"rows": rows, "chunk": args.chunk, "rounds": args.rounds})
        return 0
    print_table(f"per operation, medians of {args.rounds} rounds of {args.chunk}; ratios to explicit (same run)", rows,
                [("variant", "variant"), ("client_us", "client CPU µs"), ("client_ratio", "x"),
                 ("server_us", "server CPU µs"), ("server_ratio", "x"), ("wall_us", "wall µs"), ("wall_ratio", "x")])
    return 0
