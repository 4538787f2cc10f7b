"""A loopback TCP proxy per worker that can cut, heal and slow its connection.

Our own code, loopback only: it listens on 127.0.0.1 and forwards to the
server's loopback port. ``cut()`` drops every open connection and refuses new
ones (a partition, as the worker sees it: connection errors); ``latency_ms``
delays every chunk both ways.
"""

from __future__ import annotations

import asyncio
import contextlib


class ChaosProxy:
    """Forwards 127.0.0.1:<port> to the server, with faults on demand."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut_now = False
        self.latency_ms = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> "ChaosProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Partition: close every open connection; refuse new ones until ``heal``."""
        self.cut_now = True
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def heal(self) -> None:
        self.cut_now = False
        self.latency_ms = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._links.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while not self.cut_now:
                data = await reader.read(65536)
                if not data:
                    break
                if self.latency_ms:
                    await asyncio.sleep(self.latency_ms / 1000)
                if self.cut_now:
                    break
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
