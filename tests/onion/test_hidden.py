"""Onion services end to end: directories, introduction and rendezvous points on real relays."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogcoord.onion.cells import RELAY_DATA_LEN, CellError, EndReason
from fogcoord.onion.client import Circuit, OnionClient
from fogcoord.onion.descriptor import (
    Descriptor,
    DescriptorStore,
    DescriptorVerificationError,
    RevisionCounter,
    public_bytes,
)
from fogcoord.onion.hidden import (
    AccessRefused,
    ClientInfo,
    DescriptorUnavailable,
    HsStatus,
    IntroductionFailed,
    IntroPointRefused,
    NoIntroductionPoints,
    OnionService,
    connect_onion,
    install_hs_relay,
    intro_point_count,
    path_to,
)
from fogcoord.onion.hsaddr import is_valid_onion_address, onion_address
from fogcoord.onion.hsdir import (
    HSDIR_STORE,
    HSDIR_STORED,
    HSDirError,
    HSDirStatus,
    MessageTooLarge,
    Reassembler,
    await_on_circuit,
    chunk_message,
    collect_chunked,
    install_hsdir,
    upload_descriptor,
)
from fogcoord.onion.streams import CircuitClosed, Stream, StreamClosed
from fogcoord.storage.engine import create_engine
from tests.onion.conftest import CLIENT_HOST, ECHO_HOST, Network, start_network, stop_network

SERVICE_HOST = "127.10.0.1"
RELAYS = 7


class Echo:
    """An echo server that remembers who connected to it."""

    def __init__(self) -> None:
        self.peers: set[str] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, ECHO_HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.add(str(writer.get_extra_info("peername")[0]))
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class HsNet:
    net: Network
    stores: dict[str, DescriptorStore]
    echo: Echo
    services: list[OnionService] = field(default_factory=list)

    def service(self, key: Ed25519PrivateKey | None = None, **kwargs: object) -> OnionService:
        client = self.net.client(SERVICE_HOST)
        service = OnionService(
            client,
            key or Ed25519PrivateKey.generate(),
            (ECHO_HOST, self.echo.port),
            **kwargs,  # type: ignore[arg-type]
        )
        self.services.append(service)
        return service


async def _start(max_services_per_node: int = 5) -> tuple[HsNet, Callable[[], Awaitable[None]]]:
    net, servers = await start_network(RELAYS)
    stores: dict[str, DescriptorStore] = {}
    for relay in net.relays:
        stores[relay.identity.fingerprint] = store = DescriptorStore()
        install_hsdir(relay, store)
        install_hs_relay(relay, max_services_per_node=max_services_per_node)
    echo = Echo()
    await echo.start()
    hs = HsNet(net, stores, echo)

    async def stop() -> None:
        for service in hs.services:
            await service.close()
        await stop_network(net, servers)
        await echo.stop()

    return hs, stop


@pytest.fixture
async def hs() -> AsyncIterator[HsNet]:
    network, stop = await _start()
    try:
        yield network
    finally:
        await stop()


async def round_trip(stream: Stream, data: bytes) -> bytes:
    writer = asyncio.ensure_future(stream.write(data))
    got = await asyncio.wait_for(stream.readexactly(len(data)), 30)
    await writer
    return got


def remote_hosts(local_host: str) -> set[str]:
    """Every host this process's TCP connections from ``local_host`` lead to."""
    return {
        c.raddr.ip
        for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.ip == local_host and c.raddr
    }


async def test_a_client_reaches_a_service_by_its_address_through_six_hops(hs: HsNet) -> None:
    key = Ed25519PrivateKey.generate()
    seen: list[ClientInfo] = []

    async def on_access(info: ClientInfo) -> bool:
        seen.append(info)
        return True

    service = hs.service(key, on_access=on_access)
    assert service.address == onion_address(public_bytes(key))
    assert is_valid_onion_address(service.address)
    publishing = asyncio.ensure_future(service.publish())
    await asyncio.sleep(0)
    assert not service.published.is_set()  # the address is usable before anything is stored
    descriptor = await publishing
    assert service.published.is_set()
    assert len(descriptor.to_bytes()) > RELAY_DATA_LEN  # the upload spans several cells
    assert len(service.stored_on) == 3
    assert not service.upload_errors
    for relay_id in service.stored_on:
        assert hs.stores[relay_id].get(service.address) == descriptor
    assert len(service.intro_relays) == 3

    client = hs.net.client()
    stream = await connect_onion(client, service.address, client.consensus, port=hs.echo.port)
    circuit = stream.end
    assert isinstance(circuit, Circuit)
    assert circuit.hops == 4  # three relays and the service's layer
    (service_side,) = service.rendezvous_circuits
    assert service_side.hops == 4
    rendezvous_id = circuit.path[-1].id
    assert service_side.path[-1].id == rendezvous_id
    assert len(circuit.path) == len(service_side.path) == 3  # six hops, meeting at one relay

    data = os.urandom(300_000)
    got = await round_trip(stream, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    # The introduction and rendezvous points know each of their hidden-service circuits only by
    # the relay before them; the target only ever saw the service.
    relay_hosts = {r.host for r in hs.net.relays}
    roles: set[str] = set()
    for relay in hs.net.relays:
        for relay_circuit in relay._circuits:
            role = relay_circuit.state.get("hs.role")
            if role is not None:
                roles.add(role)
                assert relay_circuit.prev_link.peer[0] in relay_hosts
    assert {"intro", "rendezvous", "rendezvous-service"} <= roles
    assert CLIENT_HOST not in hs.echo.peers
    assert remote_hosts(CLIENT_HOST) <= relay_hosts
    assert remote_hosts(SERVICE_HOST) <= relay_hosts
    (info,) = seen
    assert info.rendezvous_point == rendezvous_id
    assert info.intro_point in service.intro_relays
    assert CLIENT_HOST not in repr(info)

    await stream.close()
    await circuit.close()


async def test_revision_counter_rises_across_republish_and_restart(
    hs: HsNet, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'hs.db'}"
    engine = create_engine(url)
    key = Ed25519PrivateKey.generate()
    service = hs.service(key, revision_counter=RevisionCounter(engine))
    first = await service.publish()

    authority = hs.net.authority
    assert not await service.republish_if_changed(
        authority.consensus().verify(authority.public_key)
    )
    assert service.descriptor == first

    # A responsible directory leaves the network: the ring moves, the service republishes.
    gone = service.stored_on[0]
    assert authority.remove(gone)
    consensus = authority.consensus().verify(authority.public_key)
    assert await service.republish_if_changed(consensus)
    second = service.descriptor
    assert second is not None
    assert second.revision_counter > first.revision_counter
    assert gone not in service.stored_on
    assert len(service.stored_on) == 3
    for relay_id in service.stored_on:
        assert hs.stores[relay_id].get(service.address) == second

    # Restart: a new engine, a new counter and a new service object for the same key.
    await service.close()
    engine.dispose()
    engine = create_engine(url)
    try:
        restarted = hs.service(key, revision_counter=RevisionCounter(engine))
        restarted.client.consensus = consensus
        third = await restarted.publish()
        assert third.revision_counter > second.revision_counter
        assert not restarted.upload_errors  # no directory found it stale
        for relay_id in restarted.stored_on:
            assert hs.stores[relay_id].highest_revision(service.address) == third.revision_counter
    finally:
        engine.dispose()


async def test_directories_refuse_a_stale_descriptor(hs: HsNet) -> None:
    service = hs.service()
    old = await service.publish()
    newer = await service.publish()
    assert newer.revision_counter > old.revision_counter

    client = hs.net.client()
    consensus = client.consensus
    target = consensus.get(service.stored_on[0])
    for replay in (old, newer):
        circuit = await client.build_circuit(path_to(consensus, target, 3, client.rng))
        with pytest.raises(HSDirError) as caught:
            await upload_descriptor(circuit, replay.to_bytes())
        assert caught.value.status == HSDirStatus.STALE
        await circuit.close()
    assert hs.stores[target.id].get(service.address) == newer

    # A forged descriptor -- another key's signature over this service's name -- is INVALID.
    forged = dataclasses.replace(newer, revision_counter=newer.revision_counter + 1)
    circuit = await client.build_circuit(path_to(consensus, target, 3, client.rng))
    with pytest.raises(HSDirError) as caught:
        await upload_descriptor(circuit, forged.to_bytes())
    assert caught.value.status == HSDirStatus.INVALID
    await circuit.close()


async def test_a_relay_hosts_at_most_max_services_per_node_intro_points() -> None:
    hs, stop = await _start(max_services_per_node=1)
    try:
        first = hs.service(intro_points=RELAYS)
        await first.publish()
        assert len(first.intro_relays) == RELAYS
        assert all(intro_point_count(relay) == 1 for relay in hs.net.relays)

        second = hs.service()
        with pytest.raises(NoIntroductionPoints, match=r"at most 1 per relay") as caught:
            await second.publish()
        assert set(caught.value.errors) == {r.identity.fingerprint for r in hs.net.relays}
        for error in caught.value.errors.values():
            assert isinstance(error, IntroPointRefused)
            assert error.status == HsStatus.LIMIT_REACHED
        assert not second.published.is_set()

        # Once the first service leaves, its places are free again.
        await first.close()
        for _ in range(100):
            if all(intro_point_count(relay) == 0 for relay in hs.net.relays):
                break
            await asyncio.sleep(0.02)
        await second.publish()
        assert second.published.is_set()
    finally:
        await stop()


async def test_on_access_decides_who_gets_in(hs: HsNet) -> None:
    async def paid_only(info: ClientInfo) -> bool:
        return info.credential == b"receipt-42"

    service = hs.service(on_access=paid_only)
    await service.publish()
    client = hs.net.client()

    with pytest.raises(AccessRefused) as caught:
        await connect_onion(client, service.address, client.consensus, port=hs.echo.port)
    assert caught.value.status == HsStatus.ACCESS_DENIED
    assert "refused" in str(caught.value)
    assert service.refused == 1
    assert not service.rendezvous_circuits

    stream = await connect_onion(
        client, service.address, client.consensus, port=hs.echo.port, credential=b"receipt-42"
    )
    assert await round_trip(stream, b"paid for") == b"paid for"
    assert service.refused == 1
    assert isinstance(stream.end, Circuit)
    await stream.end.close()


async def test_a_tampered_descriptor_fails_verification_at_the_client(
    hs: HsNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = hs.service()
    genuine = await service.publish()
    # Every directory lies: it serves the descriptor with one introduction point's key swapped
    # for an attacker's, so the client would introduce itself to the wrong party.
    (first, *rest) = genuine.introduction_points
    attacker = dataclasses.replace(first, auth_key=public_bytes(Ed25519PrivateKey.generate()))
    tampered = dataclasses.replace(genuine, introduction_points=(attacker, *rest))
    assert Descriptor.from_bytes(tampered.to_bytes()) == tampered  # well-formed, just forged

    def lying_get(address: str) -> Descriptor | None:
        return tampered

    for store in hs.stores.values():
        monkeypatch.setattr(store, "get", lying_get)
    client = hs.net.client()
    with pytest.raises(DescriptorUnavailable) as caught:
        await connect_onion(client, service.address, client.consensus, port=hs.echo.port)
    assert len(caught.value.errors) == 3
    for error in caught.value.errors.values():
        assert isinstance(error, DescriptorVerificationError)
    assert service.introductions == 0


async def test_a_closed_service_is_no_longer_introduced(hs: HsNet) -> None:
    service = hs.service()
    await service.publish()
    await service.close()
    client = hs.net.client()
    with pytest.raises(IntroductionFailed) as caught:
        await connect_onion(client, service.address, client.consensus, port=hs.echo.port)
    assert len(caught.value.errors) == 3
    assert "SERVICE_NOT_RECOGNIZED" in str(caught.value)


async def test_the_service_refuses_other_ports(hs: HsNet) -> None:
    service = hs.service()
    await service.publish()
    client = hs.net.client()
    with pytest.raises(StreamClosed) as caught:
        await connect_onion(client, service.address, client.consensus, port=hs.echo.port + 1)
    assert caught.value.reason == EndReason.EXITPOLICY


def test_chunked_messages_reassemble_and_refuse_overruns() -> None:
    body = os.urandom(3 * RELAY_DATA_LEN + 17)
    chunks = chunk_message(body)
    assert [len(c) for c in chunks[:-1]] == [RELAY_DATA_LEN] * 3
    reassembler = Reassembler()
    results = [reassembler.feed(c) for c in chunks]
    assert results == [None, None, None, body]
    # and the next message starts afresh
    assert reassembler.feed(chunk_message(b"again")[0]) == b"again"

    with pytest.raises(MessageTooLarge):
        Reassembler(limit=100).feed(chunk_message(bytes(101))[0])
    with pytest.raises(CellError, match="short chunk"):
        Reassembler().feed(chunks[0][:100])
    with pytest.raises(CellError, match="past the announced"):
        Reassembler().feed(chunk_message(b"abc")[0] + b"x")


async def test_hsdir_refuses_an_oversized_upload_before_buffering_it(hs: HsNet) -> None:
    client: OnionClient = hs.net.client()
    consensus = client.consensus
    target = consensus.relays[0]
    circuit = await client.build_circuit(path_to(consensus, target, 3, client.rng))
    with pytest.raises(HSDirError):
        await upload_descriptor(circuit, bytes(60_000))  # refused before sending

    answer = collect_chunked(circuit, HSDIR_STORED)
    circuit.send_relay(HSDIR_STORE, chunk_message(bytes(60_000))[0])
    body = await await_on_circuit(circuit, answer)
    assert body[0] == HSDirStatus.TOO_LARGE
    with pytest.raises(CircuitClosed):  # and the directory hangs up on the rest
        await circuit.wait_relay(HSDIR_STORED, timeout=5)
