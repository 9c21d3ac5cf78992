"""A link: one TCP connection between two onion routers (or a client and its first hop).

tor-spec sections 2-4 run links over TLS with a VERSIONS/CERTS/NETINFO handshake; here links
are plain TCP on loopback carrying link-protocol-4 framing directly (4-byte circuit ids, 514-byte
cells). Confidentiality and integrity of circuit contents do not depend on the link: every relay
payload is onion-encrypted and digested end to end, and ntor authenticates each hop's onion key.

Many circuits share one link. Whichever side opened the connection picks circuit ids with the
most significant bit set, the other side with it clear (section 5.1.1), so both may create
circuits on the same link without colliding.

Outgoing cells are queued and written in one batch per event-loop turn: a relay forwarding a
burst of cells then makes one ``send`` call instead of one per cell. Reads are never paused by
a slow peer elsewhere: SENDME windows, not link back-pressure, bound what a circuit can queue,
which avoids the deadlock of two relays each waiting for the other to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from fogcoord.onion.cells import CELL_LEN, Cell, CellError

_READ_CHUNK = CELL_LEN * 128


class Link:
    """Cell framing over an asyncio stream pair."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, initiator: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.initiator = initiator
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        self.local: tuple[str, int] = (str(local[0]), int(local[1])) if local else ("?", 0)
        self.circuits: dict[int, Any] = {}
        """Whatever the owner keeps per circuit id on this link."""
        self.closed = False
        self.bad_cells = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()

    def new_circ_id(self) -> int:
        """A random unused circuit id with this side's most significant bit."""
        high = 0x80000000 if self.initiator else 0
        while True:
            circ_id = high | secrets.randbits(31)
            if circ_id & 0x7FFFFFFF and circ_id not in self.circuits:
                return circ_id

    def peer_may_create(self, circ_id: int) -> bool:
        """Whether the peer was entitled to pick ``circ_id`` for a new circuit."""
        if circ_id & 0x7FFFFFFF == 0:
            return False
        return bool(circ_id & 0x80000000) != self.initiator

    def send(self, cell: Cell) -> None:
        self.send_frame(cell.encode())

    def send_frame(self, frame: bytes) -> None:
        if self.closed:
            return
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or not self._out:
            self._out.clear()
            return
        data = b"".join(self._out)
        self._out.clear()
        transport = self.writer.transport
        if transport.is_closing():
            return
        transport.write(data)

    def buffered(self) -> int:
        """Bytes queued for this link and not yet handed to the kernel."""
        transport = self.writer.transport
        pending = sum(len(f) for f in self._out)
        if transport.is_closing():
            return pending
        return pending + transport.get_write_buffer_size()

    async def run(
        self, on_cell: Callable[[Cell], None], on_bad: Callable[[CellError], None]
    ) -> None:
        """Read cells until EOF or an error, handing each to ``on_cell`` synchronously."""
        buf = bytearray()
        try:
            while not self.closed:
                chunk = await self.reader.read(_READ_CHUNK)
                if not chunk:
                    return
                buf += chunk
                usable = len(buf) - len(buf) % CELL_LEN
                for off in range(0, usable, CELL_LEN):
                    if self._closing():
                        return
                    try:
                        cell = Cell.decode(bytes(buf[off : off + CELL_LEN]))
                    except CellError as exc:
                        on_bad(exc)
                        continue
                    on_cell(cell)
                del buf[:usable]
        except (ConnectionError, OSError):
            return

    def _closing(self) -> bool:
        # a method, not the attribute, since handlers called in the loop may close the link
        return self.closed

    def close(self, *, abort: bool = False) -> None:
        if self.closed:
            return
        self._flush()
        self.closed = True
        transport = self.writer.transport
        if abort:
            transport.abort()
        else:
            with contextlib.suppress(Exception):
                self.writer.close()


async def open_link(
    host: str, port: int, *, local_host: str | None = None, timeout: float = 5.0
) -> Link:
    """Connect to an onion router; ``local_host`` fixes the source address the peer sees."""
    local_addr = (local_host, 0) if local_host else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=local_addr), timeout
    )
    return Link(reader, writer, initiator=True)


__all__ = ["Link", "open_link"]
