"""taskiq, as the real peer of `bench schedule`: its own receiver on taskiq-redis's stream broker.

taskiq (with taskiq-redis) is the fastest Python queue we compared lessor with
(issue 13). Its ``RedisStreamBroker`` is the closest to lessor's log: jobs are
XADDed to one stream, a consumer group reads them (XREADGROUP, COUNT
``concurrency``) and each job is XACKed once it has run. Here it runs on the
same embedded server as lessor, with no result backend (taskiq's default: no
result is stored, the ack is the only write after the job), so what is measured
is taskiq's cheapest end-to-end path.

- The worker is one process: taskiq's own ``run_receiver_task`` (what ``taskiq
  worker --workers 1`` runs in its one child, without the supervising parent),
  on uvloop as ``taskiq worker`` and ``lessor worker`` both run, with
  ``max_async_tasks`` = the concurrency lessor's worker gets.
- The submitter builds each message as ``task.kiq()`` does (the task's kicker,
  the broker's formatter) and XADDs them ``pipeline`` to a round trip, exactly
  the ``kick`` of ``RedisStreamBroker`` but pipelined: ``kiq()`` itself sends one
  XADD per round trip, which would make taskiq's submitter, not its worker, the
  bottleneck and flatter lessor.
- Done: the group has been delivered everything submitted and has nothing
  pending (every job ran and was acked), as for the minimal queue.

taskiq is an optional extra (``pip install -e '.[peers]'``, which ``make
bench-schedule`` installs): without it, ``available()`` is False and the
benchmark keeps the minimal queue alone. The worker runs as ``python -m
lessor.benchmarks.taskiq_peer URL STREAM CONCURRENCY`` until it is terminated.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from lessor.benchmarks import peer_queue
from lessor.server import spawn_child

GROUP = "taskiq"   # RedisStreamBroker's default consumer group name


def available() -> bool:
    """True if taskiq and taskiq-redis are installed (the ``[peers]`` extra)."""
    return all(importlib.util.find_spec(m) is not None for m in ("taskiq", "taskiq_redis"))


def missing_reason() -> str:
    """What to install when taskiq cannot run, for the benchmark's output."""
    return "taskiq is not installed: pip install -e '.[peers]' (make bench-schedule does) to measure it"


def make_broker(url: str, stream: str, concurrency: int):
    """A taskiq-redis stream broker on ``stream`` with a no-op task registered as ``noop``.

    ``xread_count`` is the worker's concurrency, as the minimal queue's COUNT is;
    ``xread_block`` is short so a terminated worker exits promptly. Returns
    ``(broker, noop_task)``.
    """
    from taskiq_redis import RedisStreamBroker

    broker = RedisStreamBroker(url, queue_name=stream, xread_count=concurrency, xread_block=100,
                               consumer_name="c1", consumer_id="0")

    @broker.task(task_name="noop")
    async def noop() -> None:
        """The job: nothing, as the lessor side's task."""
        return None

    return broker, noop


async def create_stream(redis, stream: str) -> None:
    """An empty stream with taskiq's consumer group, so the worker and the drain check agree on it."""
    await redis.delete(stream)
    await redis.xgroup_create(stream, GROUP, id="$", mkstream=True)


async def submit_jobs(redis, stream: str, n: int, pipeline: int, concurrency: int) -> str:
    """Submit ``n`` no-op jobs as ``noop.kiq()`` would, ``pipeline`` XADDs to a round trip; the last id.

    Each message is made by the task's kicker and the broker's formatter, so
    the worker decodes exactly what ``kiq()`` sends.
    """
    broker, noop = make_broker("redis://unused", stream, concurrency)  # only its formatter is used: no connection
    kicker = noop.kicker()
    last = b""
    for start in range(0, n, pipeline):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(pipeline, n - start)):
            message = broker.formatter.dumps(kicker._prepare_message())
            pipe.xadd(stream, {b"data": message.message})
        last = (await pipe.execute())[-1]
    return last.decode() if isinstance(last, bytes) else last


async def drained(redis, stream: str, last_id: str) -> bool:
    """True once taskiq's group has read up to ``last_id`` and acked everything it read."""
    return await peer_queue.drained(redis, stream, last_id, group=GROUP)


async def work(url: str, stream: str, concurrency: int) -> None:
    """taskiq's receiver on the stream, ``concurrency`` tasks at once, until cancelled."""
    from taskiq.api import run_receiver_task

    broker, _ = make_broker(url, stream, concurrency)
    await broker.startup()
    await run_receiver_task(broker, max_async_tasks=concurrency, run_startup=False)


def start_worker(url: str, stream: str, concurrency: int) -> subprocess.Popen:
    """The taskiq worker as its own process (as `lessor worker` is); terminate it to stop it."""
    return spawn_child(
        [sys.executable, "-m", "lessor.benchmarks.taskiq_peer", url, stream, str(concurrency)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def main(argv: list[str]) -> None:
    """``python -m lessor.benchmarks.taskiq_peer URL STREAM CONCURRENCY``: the worker, on uvloop."""
    url, stream, concurrency = argv
    from lessor.benchmarks.common import run

    run(work, url, stream, int(concurrency))


if __name__ == "__main__":
    main(sys.argv[1:])
