"""A small TCP proxy for fault tests: forward, add latency, cut, refuse, pause and resume.

It runs an asyncio server on 127.0.0.1 in a background thread with its own event loop,
so synchronous tests, async tests and subprocesses (which only see its port) can all use
it. Everything is bounded: at most ``max_connections`` live connections, a bounded queue
per direction, and :meth:`TcpProxy.close` (or leaving the ``with`` block) closes every
socket and joins the thread within a few seconds.

Faults, all switchable at any moment from any thread:

* ``latency_s``: every chunk is held this long before it is forwarded (order is kept);
* :meth:`cut`: reset every open connection now (the peers see a closed socket);
* ``refuse = True``: new connections are accepted and closed at once (a dead service);
* :meth:`pause` / :meth:`resume`: a black hole: connections stay open, bytes are held
  (not lost) until resumed, like a network partition with no RST;
* :meth:`outage`: cut + refuse for a while, then accept again (context manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Self

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port`` (see the module docstring)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        port: int | None = None,
        max_connections: int = 256,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port or _free_port()
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.latency_s = 0.0
        self.refuse = False
        self.accepted = 0
        """Connections accepted so far (including refused ones)."""
        self.cuts = 0
        """Connections reset by :meth:`cut`."""
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._flowing: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True)
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and start forwarding; returns once the port accepts connections."""
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    def close(self) -> None:
        """Close the listener and every connection, stop the loop and join the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown(), timeout=5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        if not self._loop.is_running():
            self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the proxy."""
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._conns)

    # -- faults --------------------------------------------------------------------------------

    def cut(self) -> int:
        """Reset every open connection now; returns how many were cut."""
        return self._call(self._cut())

    async def _cut(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        self.cuts += len(conns)
        return len(conns)

    def pause(self) -> None:
        """Hold all bytes in both directions (connections stay open) until :meth:`resume`."""
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        """Forward again, starting with the bytes held while paused."""
        self._call(self._set_flowing(True))

    async def _set_flowing(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Inside the block the target is unreachable: open connections cut, new ones refused."""
        self.refuse = True
        self.cut()
        try:
            yield
        finally:
            self.refuse = False

    def black_hole_for(self, seconds: float) -> None:
        """Pause for ``seconds`` (blocking), then resume."""
        self.pause()
        try:
            time.sleep(seconds)
        finally:
            self.resume()

    # -- internals -----------------------------------------------------------------------------

    def _call(self, coro: object, timeout: float = 10.0) -> int:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        result = future.result(timeout)
        return int(result) if isinstance(result, int) else 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse or len(self._conns) >= self.max_connections:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), self.connect_timeout_s
            )
        except (OSError, TimeoutError):
            _abort(writer)
            return
        assert self._flowing is not None
        conn = _Connection(writer, up_writer)
        self._conns.add(conn)
        try:
            await conn.run(
                self._pump(reader, up_writer, conn),
                self._pump(up_reader, writer, conn),
            )
        finally:
            self._conns.discard(conn)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection) -> None:
        """Copy one direction, holding each chunk ``latency_s`` and while paused; order is kept."""
        assert self._flowing is not None
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)

        async def read() -> None:
            while True:
                data = await reader.read(_CHUNK)
                await queue.put((time.monotonic() + self.latency_s, data))
                if not data:
                    return

        async def write() -> None:
            assert self._flowing is not None
            while True:
                due, data = await queue.get()
                await self._flowing.wait()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        reading = asyncio.create_task(read())
        try:
            await write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await reading


class _Connection:
    """One proxied connection: two sockets, two pumps; aborting closes both sockets at once."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, *pumps: object) -> None:
        self._tasks = [asyncio.create_task(p) for p in pumps]  # type: ignore[arg-type]
        try:
            # Both directions must finish (half-close); an error in either ends both.
            done, pending = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.exception() for t in done if not t.cancelled()):
                self.abort()
            if pending:
                await asyncio.wait(pending)
        finally:
            self.abort()
            for t in self._tasks:
                if not t.done():
                    t.cancel()
            for t in self._tasks:
                with contextlib.suppress(BaseException):
                    await t

    def abort(self) -> None:
        _abort(self.client)
        _abort(self.upstream)
        for t in self._tasks:
            if not t.done():
                t.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        # RST rather than FIN: the peer sees a dead connection, as after a network fault.
        with contextlib.suppress(OSError):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()
