"""Streams over a circuit and SENDME flow control (tor-spec sections 6.2-6.3 and 7.3-7.4).

A *stream* is one TCP connection tunnelled through a circuit: the origin sends RELAY_BEGIN
``host:port``, the far end (an exit relay, or a hidden service) connects and answers
RELAY_CONNECTED, both sides then move bytes in RELAY_DATA cells, and either side closes with
RELAY_END and a reason. Stream ids are chosen by the origin and are unique per circuit.

Neither end may flood the other, because every relay on the way would have to queue what the
receiver has not read. Flow control is end to end, counted in RELAY_DATA cells, at two levels:

* **circuit**: each end may *package* at most 1000 DATA cells ahead; the receiver sends a
  circuit-level SENDME (stream id 0) after every 100 cells it *delivers*, and each SENDME
  allows 100 more. SENDMEs are authenticated (version 1, section 7.3.1): each carries the
  running digest of the cell that triggered it, which the sender remembered, so an end cannot
  acknowledge cells it never received to make the other side send faster;
* **stream**: a window of 500 cells per stream, refilled 50 at a time, and a receiver sends a
  stream SENDME only while fewer than 10 cells' worth of data wait unread at its edge (7.4).
  A reader that stops reading therefore stops the sender within 500 cells, and nothing between
  them grows without bound.

:class:`CircuitEnd` is the part shared by the two kinds of circuit end -- a client's circuit
(for its last hop) and an exit relay's end of a circuit -- and :class:`Stream` is the
application's handle, with an asyncio-style ``read``/``write``/``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable

from fogcoord.onion.cells import (
    RELAY_DATA_LEN,
    CellError,
    DestroyReason,
    EndReason,
    RelayCell,
    RelayCommand,
    connected_body,
    end_body,
    parse_begin,
    parse_end,
    parse_sendme,
    reason_name,
    sendme_body,
)

CIRCWINDOW_START = 1000
CIRCWINDOW_INCREMENT = 100
STREAMWINDOW_START = 500
STREAMWINDOW_INCREMENT = 50
SENDME_MAX_UNFLUSHED = 10 * RELAY_DATA_LEN
"""A stream SENDME goes out only while less than this much data waits at the edge."""


class OnionError(Exception):
    """Base of the errors a circuit or stream user sees."""


class CircuitClosed(OnionError):
    """The circuit is gone: DESTROY received or sent, or a link under it closed."""

    def __init__(self, reason: int = DestroyReason.NONE, message: str = "") -> None:
        self.reason = int(reason)
        text = f"circuit closed ({reason_name(DestroyReason, self.reason)})"
        super().__init__(f"{text}: {message}" if message else text)


class StreamClosed(OnionError):
    """The stream is gone: RELAY_END with a reason, or closed locally."""

    def __init__(self, reason: int = EndReason.MISC, message: str = "") -> None:
        self.reason = int(reason)
        text = f"stream closed ({reason_name(EndReason, self.reason)})"
        super().__init__(f"{text}: {message}" if message else text)


BeginHandler = Callable[["Stream", str, int], Awaitable[None]]
"""Called for an incoming RELAY_BEGIN: must ``accept`` or ``refuse`` the stream."""


class CircuitEnd(ABC):
    """One end of a circuit that carries streams, with the circuit-level windows."""

    def __init__(self) -> None:
        self.streams: dict[int, Stream] = {}
        self.package_window = CIRCWINDOW_START
        self.deliver_window = CIRCWINDOW_START
        self.begin_handler: BeginHandler | None = None
        self.error: OnionError | None = None
        self._sendme_digests: deque[bytes] = deque()
        self._can_package = asyncio.Event()
        self._can_package.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what a concrete end provides ---------------------------------------------------------

    @abstractmethod
    def emit(self, cell: RelayCell) -> bytes:
        """Encrypt and send ``cell`` to the other end; the running digest after it (20 bytes)."""

    @abstractmethod
    def violation(self, why: str) -> None:
        """The other end broke the protocol: tear the circuit down with reason PROTOCOL."""

    # -- sending ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error

    async def send_data(self, stream_id: int, chunk: bytes) -> None:
        """Send one DATA cell once the circuit's package window allows it."""
        while self.package_window <= 0:
            self._check_open()
            self._can_package.clear()
            await self._can_package.wait()
        self._check_open()
        digest = self.emit(RelayCell(RelayCommand.DATA, stream_id, chunk))
        self.package_window -= 1
        if self.package_window % CIRCWINDOW_INCREMENT == 0:
            # The peer's SENDME for this batch must carry the digest as of this cell.
            self._sendme_digests.append(digest)

    # -- receiving ----------------------------------------------------------------------------

    def handle(self, cell: RelayCell, digest: bytes) -> bool:
        """Process a stream or flow-control cell; False for any other command."""
        command = cell.command
        if command == RelayCommand.DATA:
            self._on_data(cell, digest)
        elif command == RelayCommand.SENDME:
            self._on_sendme(cell)
        elif command == RelayCommand.END:
            stream = self.streams.pop(cell.stream_id, None)
            if stream is not None:
                stream._on_end(parse_end(cell.data))
        elif command == RelayCommand.CONNECTED:
            stream = self.streams.get(cell.stream_id)
            if stream is not None:
                stream._on_connected(cell.data)
        elif command == RelayCommand.BEGIN:
            self._on_begin(cell)
        else:
            return False
        return True

    def _on_data(self, cell: RelayCell, digest: bytes) -> None:
        if cell.stream_id == 0:
            self.violation("DATA cell without a stream")
            return
        self.deliver_window -= 1
        if self.deliver_window < 0:
            self.violation("the circuit deliver window went negative")
            return
        if self.deliver_window <= CIRCWINDOW_START - CIRCWINDOW_INCREMENT:
            self.emit(RelayCell(RelayCommand.SENDME, 0, sendme_body(digest)))
            self.deliver_window += CIRCWINDOW_INCREMENT
        stream = self.streams.get(cell.stream_id)
        if stream is not None:  # data for a stream we already closed is dropped (6.2)
            stream._on_data(cell.data)

    def _on_sendme(self, cell: RelayCell) -> None:
        if cell.stream_id != 0:
            stream = self.streams.get(cell.stream_id)
            if stream is not None:
                stream._on_sendme()
            return
        try:
            version, digest = parse_sendme(cell.data)
        except CellError as exc:
            self.violation(str(exc))
            return
        if version != 1:
            self.violation(f"version-{version} SENDME refused; version 1 is required")
            return
        if not self._sendme_digests or self._sendme_digests.popleft() != digest:
            self.violation("SENDME acknowledges cells that were not sent")
            return
        self.package_window += CIRCWINDOW_INCREMENT
        self._can_package.set()

    def _on_begin(self, cell: RelayCell) -> None:
        if cell.stream_id == 0 or cell.stream_id in self.streams:
            self.violation("BEGIN with a missing or reused stream id")
            return
        try:
            host, port = parse_begin(cell.data)
        except CellError:
            self.emit(RelayCell(RelayCommand.END, cell.stream_id, end_body(EndReason.TORPROTOCOL)))
            return
        if self.begin_handler is None:
            self.emit(RelayCell(RelayCommand.END, cell.stream_id, end_body(EndReason.EXITPOLICY)))
            return
        stream = Stream(self, cell.stream_id, incoming=True)
        self.streams[cell.stream_id] = stream
        self.spawn(self._run_begin(self.begin_handler, stream, host, port))

    async def _run_begin(self, handler: BeginHandler, stream: Stream, host: str, port: int) -> None:
        try:
            await handler(stream, host, port)
        except OnionError:
            pass
        finally:
            if not stream.accepted and not stream.ended:
                stream.refuse(EndReason.INTERNAL)

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close_end(self, error: OnionError) -> None:
        """Fail every stream and waiter with ``error``; idempotent."""
        if self.error is not None:
            return
        self.error = error
        self._can_package.set()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream._fail(error)
        for task in list(self._tasks):
            task.cancel()


class Stream:
    """A tunnelled TCP connection: asyncio-reader/writer-like ``read``/``write``/``close``."""

    def __init__(self, end: CircuitEnd, stream_id: int, *, incoming: bool = False) -> None:
        self.end = end
        self.stream_id = stream_id
        self.incoming = incoming
        self.package_window = STREAMWINDOW_START
        self.deliver_window = STREAMWINDOW_START
        self.accepted = False
        self.ended = False
        """RELAY_END was sent or received: no more cells either way."""
        self.bytes_sent = 0
        self.bytes_received = 0
        self._buf = bytearray()
        self._eof = False
        self._error: OnionError | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._connected: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    # -- application side ---------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return len(self._buf)

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered if ``n < 0``); ``b""`` once the peer ended cleanly."""
        while not self._buf:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        self._maybe_sendme()
        return data

    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting while the stream or circuit window is closed."""
        view = memoryview(data)
        for off in range(0, len(view), RELAY_DATA_LEN):
            while self.package_window <= 0:
                self._check_writable()
                self._writable.clear()
                await self._writable.wait()
            self._check_writable()
            chunk = bytes(view[off : off + RELAY_DATA_LEN])
            await self.end.send_data(self.stream_id, chunk)
            self._check_writable()
            self.package_window -= 1
            self.bytes_sent += len(chunk)

    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self.ended:
            raise StreamClosed(EndReason.DONE, "the stream has ended")

    async def close(self) -> None:
        """Send RELAY_END (DONE) unless the stream has already ended."""
        self.close_now()

    def close_now(self, reason: int = EndReason.DONE) -> None:
        if self.ended or self._error is not None:
            return
        self.ended = True
        self._eof = True
        self._readable.set()
        self._writable.set()
        if self.end.streams.get(self.stream_id) is self:
            del self.end.streams[self.stream_id]
        if self.end.error is None:
            self.end.emit(RelayCell(RelayCommand.END, self.stream_id, end_body(reason)))
        if not self._connected.done():
            self._connected.set_exception(StreamClosed(reason, "closed locally"))
            self._connected.exception()

    async def wait_connected(self, timeout: float) -> bytes:
        """The RELAY_CONNECTED body, or the :class:`StreamClosed` of a refusal."""
        return await asyncio.wait_for(asyncio.shield(self._connected), timeout)

    # -- the far end's acceptance (incoming streams) -----------------------------------------

    def accept(self, address: str = "0.0.0.0", ttl: int = 0) -> None:
        """Answer an incoming BEGIN with RELAY_CONNECTED."""
        if self.ended:
            raise StreamClosed(EndReason.DONE, "the stream has ended")
        self.accepted = True
        body = connected_body(address, ttl)
        self.end.emit(RelayCell(RelayCommand.CONNECTED, self.stream_id, body))

    def refuse(self, reason: int) -> None:
        """Answer an incoming BEGIN with RELAY_END ``reason``."""
        self.close_now(reason)

    # -- called by the circuit end ------------------------------------------------------------

    def _on_connected(self, body: bytes) -> None:
        if not self._connected.done():
            self._connected.set_result(body)

    def _on_data(self, data: bytes) -> None:
        self.deliver_window -= 1
        if self.deliver_window < 0:
            self.end.violation(f"stream {self.stream_id} deliver window went negative")
            return
        self._buf += data
        self.bytes_received += len(data)
        self._readable.set()
        self._maybe_sendme()

    def _maybe_sendme(self) -> None:
        while (
            self.deliver_window <= STREAMWINDOW_START - STREAMWINDOW_INCREMENT
            and len(self._buf) < SENDME_MAX_UNFLUSHED
            and not self.ended
            and self.end.error is None
        ):
            self.end.emit(RelayCell(RelayCommand.SENDME, self.stream_id))
            self.deliver_window += STREAMWINDOW_INCREMENT

    def _on_sendme(self) -> None:
        self.package_window += STREAMWINDOW_INCREMENT
        if self.package_window > STREAMWINDOW_START:
            self.end.violation(f"stream {self.stream_id} SENDME beyond the window")
            return
        self._writable.set()

    def _on_end(self, reason: int) -> None:
        self.ended = True
        if reason != EndReason.DONE:
            self._error = StreamClosed(reason)
        self._eof = True
        self._readable.set()
        self._writable.set()
        if not self._connected.done():
            self._connected.set_exception(StreamClosed(reason))
            self._connected.exception()  # retrieved here so an unawaited refusal is not logged

    def _fail(self, error: OnionError) -> None:
        self._error = error
        self._readable.set()
        self._writable.set()
        if not self._connected.done():
            self._connected.set_exception(error)
            self._connected.exception()


async def pipe(
    stream: Stream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chunk: int = RELAY_DATA_LEN * 64,
) -> None:
    """Move bytes between ``stream`` and a TCP connection until either side ends.

    TCP EOF sends RELAY_END (DONE); RELAY_END or a closed circuit closes the TCP connection.
    Writes to TCP are drained before the stream is read again, so a slow TCP reader holds back
    the stream's SENDMEs and, through them, the sender.
    """

    async def upstream() -> None:
        with contextlib.suppress(OnionError, ConnectionError, OSError):
            while data := await reader.read(chunk):
                await stream.write(data)
            stream.close_now(EndReason.DONE)

    async def downstream() -> None:
        with contextlib.suppress(OnionError, ConnectionError, OSError):
            while data := await stream.read(chunk):
                writer.write(data)
                await writer.drain()

    up = asyncio.ensure_future(upstream())
    down = asyncio.ensure_future(downstream())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(up, down, return_exceptions=True)
        if stream._error is None and not stream.ended:
            stream.close_now(EndReason.DONE)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


__all__ = [
    "CIRCWINDOW_INCREMENT",
    "CIRCWINDOW_START",
    "STREAMWINDOW_INCREMENT",
    "STREAMWINDOW_START",
    "BeginHandler",
    "CircuitClosed",
    "CircuitEnd",
    "OnionError",
    "Stream",
    "StreamClosed",
    "pipe",
]
