"""The layout every process reads from the server (partition count and placement) is the same one.

Every process that opens a fresh server lays it out (``read_layout``) and derives its key
names from what it read: a process that read another layout than its peers writes where
they never look.
"""

from __future__ import annotations

import pytest

from lessor.core.ids import DEFAULT_PARTITIONS
from lessor.leasing.backend import CONFIG_KEY, make_redis, read_layout

pytestmark = pytest.mark.anyio


class PausedAfterEachWrite:
    """A client that lays out the server, paused after each of its writes while another client
    reads the layout (what a busy machine does to two processes started together)."""

    def __init__(self, redis, other) -> None:
        self.redis, self.other = redis, other
        self.seen_meanwhile: list[tuple[int, str]] = []

    async def hmget(self, *args):
        return await self.redis.hmget(*args)

    async def hsetnx(self, *args):
        written = await self.redis.hsetnx(*args)
        self.seen_meanwhile.append(await read_layout(self.other, None))
        return written


async def test_a_layout_read_while_another_process_writes_it_is_the_one_written(flushed):
    # Before: `partitions` was written first and `placement` second, and a process that read
    # between the two took the server for one laid out before placement existed (legacy {pN}
    # tags). Seen under a CPU burner as a `lessor submit --wait` that never ended: the submit
    # queued its run under {p0}, the worker started with it polled the spread tags.
    writer, reader = make_redis(flushed), make_redis(flushed)
    try:
        paused = PausedAfterEachWrite(writer, reader)
        layout = await read_layout(paused, None)
        assert layout == (DEFAULT_PARTITIONS, "spread")
        assert paused.seen_meanwhile == [layout] * 3   # after the runs_on_root mark, placement, partitions
        assert await read_layout(reader, None) == layout
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_a_server_laid_out_before_placement_existed_stays_legacy(flushed):
    redis = make_redis(flushed)
    try:
        await redis.hset(CONFIG_KEY, "partitions", 4)
        assert await read_layout(redis, None) == (4, "legacy")
        assert await read_layout(redis, 4) == (4, "legacy")
        assert await redis.hget(CONFIG_KEY, "placement") is None   # reading it wrote nothing
    finally:
        await redis.aclose()
