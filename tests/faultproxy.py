"""A TCP proxy on loopback that can cut every connection and refuse new ones: a database outage."""

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self


class FaultProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` from a thread of its own.

    `cut()` aborts every open connection (both ends see a reset) and stops listening, so that new
    connections are refused; `restore()` listens again on the same port.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # Every accepted connection, from its first moment: `_forward` may not have run yet.
        self._accepted: set[asyncio.BaseTransport] = set()

    def __enter__(self) -> Self:
        self._thread.start()
        self.restore()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cut()
        self._call(self._finish_forwarding())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=5)

    async def _listen(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Accepted(self), "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        if self._server:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for transport in self._accepted:
            transport.abort()
        self._accepted.clear()

    async def _finish_forwarding(self) -> None:
        """Let every task end (after the cut, each one aborts what it holds), then abort what is
        left, and let the aborted transports close before the loop stops.

        Waiting rather than cancelling at once: a connection accepted just before the cut goes
        through several tasks before `_forward` runs, and a task cancelled before it starts would
        leave its socket open.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2
        while (tasks := asyncio.all_tasks() - {asyncio.current_task()}) and loop.time() < deadline:
            await asyncio.wait(tasks, timeout=0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._cut()
        for _ in range(3):
            await asyncio.sleep(0)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._server is None:
            # Accepted just before a cut, and handled after it: refused like the others.
            client.transport.abort()
            return
        # Known from the start, so that a cut while the server connection opens aborts it too.
        self._writers.add(client)
        try:
            server_reader, server = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client.transport.abort()
            self._writers.discard(client)
            return
        if client.transport.is_closing():
            # Cut while connecting.
            server.transport.abort()
            return
        self._writers.add(server)
        await asyncio.gather(_pipe(client_reader, server), _pipe(server_reader, client))
        self._writers -= {client, server}


class _Accepted(asyncio.StreamReaderProtocol):
    """A connection to the proxy: known to it as soon as it is accepted, then forwarded."""

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(asyncio.StreamReader(), proxy._forward)
        self._proxy = proxy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._proxy._accepted.add(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._proxy._accepted.discard(self._transport)
        super().connection_lost(exc)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
    finally:
        writer.close()
