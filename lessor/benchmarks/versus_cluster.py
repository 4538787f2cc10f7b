"""`bench heartbeat` and `bench schedule` on a local cluster against one server, in the same run
(``make bench-cluster``).

Starts one embedded server and a local cluster of 3 primaries with a replica
each (as ``lessor server --cluster 3 --replicas 1``), then runs each benchmark
on the server and on the cluster in turn, ``--rounds`` times, each on freshly
flushed data, and prints cluster ÷ server per round: batched renewals/s
(``bench heartbeat``) and end-to-end actions/s (``bench schedule``, one worker
process). On this 2-core machine the cluster's 6 nodes share the cores the one
server has to itself, so the ratio shows the cost of the cluster's client
paths (a per-node pipeline per script call, one XREAD per partition), not the
scale-out.

Run: ``python -m lessor.benchmarks.versus_cluster [--rounds 2] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import redis
from redis.cluster import RedisCluster

from lessor.benchmarks.common import dump_json, print_table
from lessor.cluster import LocalCluster
from lessor.scheduler.launch import lessor_command
from lessor.server import EmbeddedServer


def flush(url: str) -> None:
    """Empty the server, or every primary of the cluster, at ``url``."""
    if url.startswith("redis+cluster://"):
        host, port = url.removeprefix("redis+cluster://").split(",")[0].split(":")
        with RedisCluster(host=host, port=int(port)) as client:
            client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        with redis.Redis.from_url(url) as client:
            client.flushall()


def bench(url: str, *args: str) -> dict:
    """One `lessor bench ... --json` on ``url`` (flushed first), its JSON answer."""
    flush(url)
    proc = subprocess.run(lessor_command("bench", *args, "--json", "--redis-url", url), capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"lessor bench {' '.join(args)} on {url} failed: {proc.stderr[-800:]}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    """Measure, print one row per round (and each figure), return 0."""
    p = argparse.ArgumentParser(prog="python -m lessor.benchmarks.versus_cluster",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--actions", type=int, default=20_000, help="bench schedule --actions (default 20000)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    with EmbeddedServer() as server, LocalCluster(primaries=3, replicas=1) as cluster:
        for round_no in range(args.rounds):
            row: dict = {"round": round_no + 1}
            for name, url in (("server", server.url), ("cluster", cluster.url)):
                hb = bench(url, "heartbeat")
                sc = bench(url, "schedule", "--actions", str(args.actions))
                row[f"{name}_renewals_per_s"] = hb["batched"]["renewals_per_s"]
                row[f"{name}_renewal_cpu_us"] = hb["batched"]["server_cpu_us_per_lease"]
                row[f"{name}_actions_per_s"] = sc["actions_per_s"]
                row[f"{name}_action_cpu_us"] = sc["server_cpu_us_per_action"]
            row["renewals_ratio"] = row["cluster_renewals_per_s"] / row["server_renewals_per_s"]
            row["actions_ratio"] = row["cluster_actions_per_s"] / row["server_actions_per_s"]
            rows.append(row)
    if args.json:
        dump_json({"rounds": rows})
        return 0
    print_table("cluster (3 primaries x 2 nodes) vs one server, same run, same machine", rows,
                [("round", "round"), ("server_renewal_cpu_us", "server CPU µs/lease"),
                 ("server_action_cpu_us", "server CPU µs/action"), ("server_renewals_per_s", "server renewals/s"),
                 ("cluster_renewals_per_s", "cluster renewals/s"), ("renewals_ratio", "× server"),
                 ("server_actions_per_s", "server actions/s"), ("cluster_actions_per_s", "cluster actions/s"),
                 ("actions_ratio", "× server")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
