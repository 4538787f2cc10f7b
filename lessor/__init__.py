"""lessor: an event-sourced lease and scheduling core on Redis Streams.

    import lessor
    async with lessor.connect() as client:
        run = await client.submit_run("hello", inputs={"name": "world"})
        print((await run.wait()).result)
"""

__version__ = "0.1.0"

from lessor.scheduler.api import CacheKey, Client, RunHandle, connect  # noqa: E402
from lessor.errors import IdempotencyConflict, NotDurable, StoreUnavailable  # noqa: E402
from lessor.scheduler.submit import Retries  # noqa: E402
from lessor.scheduler.worker import Registry, TaskContext, Worker  # noqa: E402

__all__ = ["CacheKey", "Client", "IdempotencyConflict", "NotDurable", "Registry", "Retries", "StoreUnavailable", "RunHandle", "TaskContext", "Worker", "connect"]
