"""How fast the dashboard's pages answer with many runs in the store (a benchmark, not a test).

    python -m lessor.ui.bench --runs 100000          # make bench-ui RUNS=100000

Starts a private embedded server (AOF off: nothing here needs to survive),
loads ``--runs`` runs the way a busy system leaves them, starts ``lessor ui``
as its own process, and times each page over HTTP (a kept-alive connection,
``--requests`` requests per page after a warm-up): p50, p95, p99 and max of the
whole request as the client sees it, and p95 of the server's own time (the
``Server-Timing`` header).

The load, in batches of ``--batch`` runs (so a run's events sit among those of
the runs around it, as in a live system, not behind a million others):
submitted in one call per partition, then leased and finished by a
benchmark "worker" straight through LeaseClient (no task code runs): 90%
succeed, 5% fail for good, 2% stay leased (running), 3% wait on a queue no
one serves. Five task names, so the task filter has something to select.

Pages timed: the runs page (first page; a page deep in the index by cursor;
phase=failed, which 5% match; one task of five; a time window), a run page
and an action page for runs drawn at random from the whole index, and the
workers, queues and activity pages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import time

import anyio

from lessor.core.ids import new_run_id
from lessor.leasing.backend import open_backend
from lessor.leasing.client import LeaseClient
from lessor.leasing.config import LeaseConfig
from lessor.scheduler.launch import lessor_command
from lessor.scheduler.submit import RunSpec, submit_runs
from lessor.server import EmbeddedServer, free_port

NS = "bench/ui"
TASKS = ("extract", "transform", "load", "report", "notify")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lessor.ui.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100_000, help="runs to load (default 100000)")
    p.add_argument("--batch", type=int, default=2_000, help="runs per submit-and-finish batch (default 2000)")
    p.add_argument("--requests", type=int, default=200, help="timed requests per page (default 200)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args(argv)


async def _finish_batch(backend, worker: LeaseClient, rng: random.Random) -> None:
    """Lease every queued action of the batch and end it: succeed, fail, or keep it running."""
    async def one_partition(p: int) -> None:
        while leases := await worker.acquire_from(p, NS, "default", 500):
            done, failed = [], []
            for lease in leases:
                roll = rng.random()
                if roll < 0.90 / 0.97:
                    done.append((lease, b"\xc0"))   # msgpack nil: a result
                elif roll < 0.95 / 0.97:
                    failed.append(lease)
                # else: kept, still running (its lease lasts an hour)
            if done:
                await worker.complete_many(p, done)
            for lease in failed:
                await worker.fail(lease, "RuntimeError: the benchmark's 5% failures", retryable=False)

    async with anyio.create_task_group() as tg:
        for p in range(backend.partitions):
            tg.start_soon(one_partition, p)


async def load(url: str, runs: int, batch: int, seed: int = 1) -> float:
    """Load ``runs`` runs in batches; returns the seconds it took."""
    rng = random.Random(seed)
    start = time.perf_counter()  # clock: benchmark timing only
    async with open_backend(url) as backend:
        worker = LeaseClient(backend, "w-bench", LeaseConfig(ttl_ms=3_600_000, grace_ms=60_000))
        loaded = 0
        while loaded < runs:
            n = min(batch, runs - loaded)
            specs = [RunSpec(task=rng.choice(TASKS), namespace=NS, run_id=new_run_id(),
                             queue="waiting" if rng.random() < 0.03 else "default") for _ in range(n)]
            await submit_runs(backend, specs)
            await _finish_batch(backend, worker, rng)
            loaded += n
            if loaded % (batch * 25) == 0 or loaded == runs:
                rate = loaded / (time.perf_counter() - start)  # clock: benchmark timing only
                print(f"loaded {loaded} runs ({rate:.0f}/s)", file=sys.stderr, flush=True)
    return time.perf_counter() - start  # clock: benchmark timing only


async def sample_runs(url: str, n: int, seed: int = 2) -> list[tuple[int, str]]:
    """``n`` (created_ms, run id) drawn uniformly from the whole runs index (one ZRANGE by rank each)."""
    rng = random.Random(seed)
    async with open_backend(url) as backend:
        keys = backend.all_keys()
        sizes = [await backend.redis.zcard(k.runs(NS)) for k in keys]
        out = []
        for _ in range(n):
            k = rng.choices(range(len(keys)), weights=sizes)[0]
            ((run_id, score),) = await backend.redis.zrange(keys[k].runs(NS), r := rng.randrange(sizes[k]), r,
                                                            withscores=True)
            out.append((int(score), run_id.decode()))
        return out


def time_page(conn: http.client.HTTPConnection, paths: list[str], warmup: int) -> dict:
    """Request each path in turn; the client-side and server-side times (ms) of all but the warm-up."""
    client, server = [], []
    for i, path in enumerate(paths):
        t0 = time.perf_counter()  # clock: benchmark timing only
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        ms = (time.perf_counter() - t0) * 1000  # clock: benchmark timing only
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {body[:300]!r}")
        if i >= warmup:
            client.append(ms)
            server.append(float(resp.getheader("server-timing", "app;dur=0").split("dur=")[1]))
    return summarize(client, server)


def summarize(client: list[float], server: list[float]) -> dict:
    def pct(xs: list[float], q: float) -> float:
        return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 1) if len(xs) > 1 else round(xs[0], 1)

    return {"n": len(client), "p50_ms": pct(client, 50), "p95_ms": pct(client, 95), "p99_ms": pct(client, 99),
            "max_ms": round(max(client), 1), "server_p95_ms": pct(server, 95)}


def page_paths(sample: list[tuple[int, str]], requests: int, rng: random.Random) -> dict[str, list[str]]:
    """The paths to request, per page (cursors and runs from the sample)."""
    mid = sorted(created for created, _ in sample)[len(sample) // 2]
    mid_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mid / 1000))
    picks = [rng.choice(sample) for _ in range(requests)]
    return {
        "runs (first page)": ["/runs?ns=bench/ui"] * requests,
        "runs (deep, by cursor)": [f"/runs?ns=bench/ui&cursor={c}:{r}" for c, r in picks],
        "runs phase=failed": ["/runs?ns=bench/ui&phase=failed"] * requests,
        "runs task=load": ["/runs?ns=bench/ui&task=load"] * requests,
        "runs created before (time)": [f"/runs?ns=bench/ui&until={mid_iso}"] * requests,
        "run": [f"/runs/{NS}/{r}" for _, r in picks],
        "action": [f"/runs/{NS}/{r}/a0" for _, r in picks],
        "workers": ["/workers"] * max(requests // 10, 5),
        "queues": [f"/queues?ns={NS}"] * max(requests // 10, 5),
        "activity": ["/activity"] * max(requests // 10, 5),
    }


def start_ui(url: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(lessor_command("ui", "--redis-url", url, "--port", str(port), "--namespace", NS),
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:  # polls: the UI process says nothing when it is ready; /healthz answers then
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("lessor ui did not start")
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with EmbeddedServer(appendfsync="no", extra_args=("--appendonly", "no")) as server:
        load_s = anyio.run(load, server.url, args.runs, args.batch)
        sample = anyio.run(sample_runs, server.url, 1000)
        proc, port = start_ui(server.url)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            results = {name: time_page(conn, paths, warmup=min(10, len(paths) // 5))
                       for name, paths in page_paths(sample, args.requests, random.Random(3)).items()}
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        memory = anyio.run(_used_memory, server.url)
    report = {"runs": args.runs, "load_s": round(load_s, 1), "server_memory_mb": memory, "pages": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.runs} runs loaded in {load_s:.0f} s; server memory {memory} MB")
        print(f"{'page':<28}{'n':>5}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'server p95':>12}  (ms)")
        for name, r in results.items():
            print(f"{name:<28}{r['n']:>5}{r['p50_ms']:>9}{r['p95_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}"
                  f"{r['server_p95_ms']:>12}")
    return 0


async def _used_memory(url: str) -> int:
    async with open_backend(url) as backend:
        return round((await backend.redis.info("memory"))["used_memory"] / 2**20)


if __name__ == "__main__":
    sys.exit(main())
