"""Real relays on distinct loopback /16s (127.1.0.1, 127.2.0.1, ...), a TCP echo server on
127.8.0.1 and a client whose links leave from 127.9.0.1, so every party has its own address and
a relay's record of whom it talked to can be checked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogcoord.onion.cells import (
    CELL_LEN,
    Cell,
    CellCommand,
    RelayCell,
    create2_payload,
    parse_created2,
)
from fogcoord.onion.client import OnionClient
from fogcoord.onion.directory import Authority, Consensus, RelayInfo
from fogcoord.onion.ntor import client_start
from fogcoord.onion.relay import Relay
from fogcoord.onion.relaycrypto import HopCrypto, OriginCrypto

CLIENT_HOST = "127.9.0.1"
ECHO_HOST = "127.8.0.1"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@dataclass
class Network:
    relays: list[Relay]
    authority: Authority
    echo_port: int
    clients: list[OnionClient] = field(default_factory=list)

    def consensus(self) -> Consensus:
        return self.authority.consensus().verify(self.authority.public_key)

    def info(self, *indices: int) -> list[RelayInfo]:
        return [self.relays[i].descriptor() for i in indices]

    def client(self, local_address: str = CLIENT_HOST, timeout: float = 5.0) -> OnionClient:
        client = OnionClient(self.consensus(), local_address=local_address, timeout=timeout)
        self.clients.append(client)
        return client


async def start_network(
    count: int, *, exits: Sequence[int] = (), owners: Callable[[int], str] | None = None
) -> tuple[Network, list[asyncio.Server]]:
    relays = [
        Relay(
            f"127.{i + 1}.0.1",
            owner=owners(i) if owners else f"owner-{i}",
            exit=i in exits,
            nickname=f"relay{i}",
            connect_timeout=2.0,
        )
        for i in range(count)
    ]
    for relay in relays:
        await relay.start()
    authority = Authority(Ed25519PrivateKey.generate())
    for relay in relays:
        authority.add(relay.descriptor())
    echo = await asyncio.start_server(_echo, ECHO_HOST, 0)
    return Network(relays, authority, int(echo.sockets[0].getsockname()[1])), [echo]


async def stop_network(net: Network, servers: list[asyncio.Server]) -> None:
    for client in net.clients:
        await client.close()
    for relay in net.relays:
        await relay.stop()
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def net() -> AsyncIterator[Network]:
    """Four relays; relay 3 is the exit, relays 1 and 2 are interchangeable middles."""
    network, servers = await start_network(4, exits=(3,))
    try:
        yield network
    finally:
        await stop_network(network, servers)


class RawCircuit:
    """A hand-driven one-hop circuit, for sending what a well-behaved client never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.circ_id = 0x80000001
        self.crypto = OriginCrypto()

    @classmethod
    async def open(cls, relay: Relay) -> RawCircuit:
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        return cls(reader, writer)

    async def create(self, relay: Relay) -> None:
        handshake = client_start(relay.identity.node_id, relay.identity.onion_public)
        self.send(Cell(self.circ_id, CellCommand.CREATE2, create2_payload(handshake.onionskin)))
        reply = await self.recv()
        assert reply.command == CellCommand.CREATED2
        self.crypto.add_hop(HopCrypto(handshake.complete(parse_created2(reply.payload))))

    def send(self, cell: Cell) -> None:
        self.writer.write(cell.encode())

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def relay_payload(self, cell: RelayCell) -> bytes:
        return self.crypto.encrypt(cell, 0)[0]

    async def recv(self, timeout: float = 3.0) -> Cell:
        frame = await asyncio.wait_for(self.reader.readexactly(CELL_LEN), timeout)
        return Cell.decode(frame)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
