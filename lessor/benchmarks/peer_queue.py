"""The minimal queue, as the peer baseline of `bench schedule`: plain XADD, XREADGROUP, XACK.

A submitter XADDs no-op jobs, ``pipeline`` to a round trip; a consumer process
reads them through a consumer group (XREADGROUP, COUNT = its concurrency), runs
each no-op as its own asyncio task, all of a read at once, and XACKs what it
read in one call. Nothing else: no leases, no fencing, no event log, no
retries. With a durability mode other than memory, each write pipeline ends
with the same WAIT/WAITAOF lessor sends, so both queues pay for the same promise.

The consumer runs as ``python -m lessor.benchmarks.peer_queue URL STREAM
CONCURRENCY DURABILITY``, on uvloop as ``lessor worker`` does, until it is
terminated.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys


from lessor.leasing.backend import make_redis
from lessor.leasing.durability import Durability
from lessor.server import spawn_child

GROUP = "peer-workers"
JOB = {"task": "noop", "inputs": b""}


async def noop(fields: dict) -> None:
    """The job: nothing, as the lessor side's task."""
    return None


async def create_stream(redis, stream: str) -> None:
    """An empty stream with the consumer group, so the consumer can start before the first job."""
    await redis.delete(stream)
    await redis.xgroup_create(stream, GROUP, id="$", mkstream=True)


async def submit_jobs(redis, stream: str, n: int, pipeline: int, durability: Durability) -> str:
    """XADD ``n`` no-op jobs, ``pipeline`` to a round trip (plus the durability wait); the last id."""
    last = ""
    for start in range(0, n, pipeline):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(pipeline, n - start)):
            pipe.xadd(stream, JOB)
        if durability.waits:
            pipe.execute_command(*durability.wait_command())
        replies = await pipe.execute()
        last = replies[-2 if durability.waits else -1]
    return last.decode() if isinstance(last, bytes) else last


async def drained(redis, stream: str, last_id: str, group: str = GROUP) -> bool:
    """True once ``group`` has read up to ``last_id`` and acked everything it read."""
    for info in await redis.xinfo_groups(stream):
        if _text(info["name"]) == group:
            return _text(info["last-delivered-id"]) == last_id and int(info["pending"]) == 0
    return False


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def consume(url: str, stream: str, concurrency: int, durability: Durability) -> None:
    """The consumer loop: read up to ``concurrency`` jobs, run them all, ack them in one call; forever."""
    redis = make_redis(url)
    while True:
        reply = await redis.xreadgroup(GROUP, "c1", {stream: ">"}, count=concurrency, block=100)
        if not reply:
            continue
        entries = reply[0][1]
        await asyncio.gather(*(asyncio.create_task(noop(fields)) for _, fields in entries))
        pipe = redis.pipeline(transaction=False)
        pipe.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
        if durability.waits:
            pipe.execute_command(*durability.wait_command())
        await pipe.execute()


def start_consumer(url: str, stream: str, concurrency: int, durability: str) -> subprocess.Popen:
    """The consumer as its own process (as `lessor worker` is); terminate it to stop it."""
    return spawn_child(
        [sys.executable, "-m", "lessor.benchmarks.peer_queue", url, stream, str(concurrency), durability],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def main(argv: list[str]) -> None:
    url, stream, concurrency, durability = argv
    from lessor.benchmarks.common import run

    run(consume, url, stream, int(concurrency), Durability.parse(durability))


if __name__ == "__main__":
    main(sys.argv[1:])
