"""A SOCKS5 front end (RFC 1928) so ordinary programs can use onion circuits.

Applications such as curl (``--socks5-hostname``) or httpx (with ``socksio``) speak SOCKS5 to a
local proxy; the proxy turns each CONNECT into a RELAY_BEGIN on a circuit and then copies bytes
both ways. Only what an onion proxy needs is supported:

* method 0x00 (no authentication) -- the proxy listens on loopback only by default;
* command CONNECT with an IPv4 address or a domain name. A domain name is passed to the exit
  unresolved (RELAY_BEGIN carries host names), so no DNS query leaves the client, which is why
  ``socks5h``/``--socks5-hostname`` is the right client setting.

RELAY_END reasons map onto SOCKS replies: EXITPOLICY -> 0x02 (not allowed by ruleset),
RESOLVEFAILED -> 0x04 (host unreachable), CONNECTREFUSED -> 0x05, anything else -> 0x01.
Streams share one circuit while it lives and its exit allows the port; a circuit that closes is
replaced on the next CONNECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct

from fogcoord.onion.cells import EndReason
from fogcoord.onion.client import Circuit, OnionClient
from fogcoord.onion.streams import OnionError, StreamClosed, pipe

SOCKS_VERSION = 5
NO_AUTH = 0x00
NO_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

REP_SUCCEEDED = 0x00
REP_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_HOST_UNREACHABLE = 0x04
REP_REFUSED = 0x05
REP_COMMAND_UNSUPPORTED = 0x07
REP_ATYP_UNSUPPORTED = 0x08

_END_TO_REPLY: dict[int, int] = {
    EndReason.EXITPOLICY: REP_NOT_ALLOWED,
    EndReason.RESOLVEFAILED: REP_HOST_UNREACHABLE,
    EndReason.CONNECTREFUSED: REP_REFUSED,
}


class SocksError(Exception):
    """A SOCKS request this proxy cannot serve; ``reply`` is the SOCKS reply code."""

    def __init__(self, reply: int, message: str) -> None:
        super().__init__(message)
        self.reply = reply


class SocksServer:
    """``await start()``; point a SOCKS5 client at ``(host, port)``; ``await stop()``."""

    def __init__(
        self,
        client: OnionClient,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handshake_timeout: float = 10.0,
        hops: int = 3,
    ) -> None:
        self.client = client
        self.hops = hops
        self.host = host
        self.port = port
        self.handshake_timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._circuits: dict[int, Circuit] = {}
        self._build_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for circuit in set(self._circuits.values()):
            with contextlib.suppress(OnionError):
                await circuit.close()
        self._circuits.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def __aenter__(self) -> SocksServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def circuit_for(self, port: int) -> Circuit:
        """A live circuit whose exit allows ``port``, built if needed."""
        async with self._build_lock:
            circuit = self._circuits.get(port)
            if circuit is None or circuit.closed:
                circuit = await self.client.build_circuit(length=self.hops, exit_port=port)
                self._circuits[port] = circuit
            return circuit

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                host, port = await asyncio.wait_for(
                    _negotiate(reader, writer), self.handshake_timeout
                )
            except (SocksError, asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
                if isinstance(exc, SocksError):
                    writer.write(_reply(exc.reply))
                return
            try:
                circuit = await self.circuit_for(port)
                stream = await circuit.open_stream(host, port)
            except StreamClosed as exc:
                writer.write(_reply(_END_TO_REPLY.get(exc.reason, REP_FAILURE)))
                return
            except Exception:
                writer.write(_reply(REP_FAILURE))
                return
            writer.write(_reply(REP_SUCCEEDED))
            await pipe(stream, reader, writer)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)


async def _negotiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, int]:
    version, nmethods = await reader.readexactly(2)
    if version != SOCKS_VERSION:
        raise asyncio.IncompleteReadError(b"", 0)  # not SOCKS5: just hang up
    methods = await reader.readexactly(nmethods)
    if NO_AUTH not in methods:
        writer.write(bytes((SOCKS_VERSION, NO_ACCEPTABLE)))
        raise asyncio.IncompleteReadError(b"", 0)
    writer.write(bytes((SOCKS_VERSION, NO_AUTH)))
    version, command, _reserved, atyp = await reader.readexactly(4)
    if version != SOCKS_VERSION:
        raise SocksError(REP_FAILURE, "bad request version")
    if atyp == ATYP_IPV4:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif atyp == ATYP_DOMAIN:
        (length,) = await reader.readexactly(1)
        raw = await reader.readexactly(length)
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise SocksError(REP_HOST_UNREACHABLE, "non-ASCII host name") from exc
        if not host or ":" in host or "\0" in host:
            raise SocksError(REP_HOST_UNREACHABLE, "bad host name")
    elif atyp == ATYP_IPV6:
        await reader.readexactly(16 + 2)
        raise SocksError(REP_ATYP_UNSUPPORTED, "IPv6 destinations are not supported")
    else:
        raise SocksError(REP_ATYP_UNSUPPORTED, f"address type {atyp}")
    (port,) = struct.unpack(">H", await reader.readexactly(2))
    if command != CMD_CONNECT:
        raise SocksError(REP_COMMAND_UNSUPPORTED, f"command {command}")
    if port == 0:
        raise SocksError(REP_HOST_UNREACHABLE, "port 0")
    return host, port


def _reply(code: int) -> bytes:
    # BND.ADDR/BND.PORT: the exit's outgoing address is not the client's business.
    return bytes((SOCKS_VERSION, code, 0, ATYP_IPV4)) + bytes(4) + b"\0\0"


__all__ = ["SocksError", "SocksServer"]
