"""Circuits and streams through real relays on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from fogcoord.onion.cells import (
    PAYLOAD_LEN,
    Cell,
    CellCommand,
    DestroyReason,
    EndReason,
    RelayCell,
    RelayCommand,
    create2_payload,
    parse_destroy,
)
from fogcoord.onion.ntor import KEY_MATERIAL_LEN, CircuitKeys
from fogcoord.onion.policy import ExitPolicy
from fogcoord.onion.relay import Relay, RelayCircuit
from fogcoord.onion.streams import CircuitClosed, Stream, StreamClosed
from tests.onion.conftest import (
    CLIENT_HOST,
    ECHO_HOST,
    Network,
    RawCircuit,
    start_network,
    stop_network,
)

MB = 1 << 20


async def echo_round_trip(stream: Stream, data: bytes) -> bytes:
    writer = asyncio.ensure_future(stream.write(data))
    got = await asyncio.wait_for(stream.readexactly(len(data)), 30)
    await writer
    return got


async def test_three_hop_circuit_carries_a_megabyte_intact(net: Network) -> None:
    client = net.client()
    circuit = await client.build_circuit(net.info(0, 1, 3))
    assert circuit.hops == 3
    assert [r.id for r in circuit.path] == [r.id for r in net.info(0, 1, 3)]
    stream = await circuit.open_stream(ECHO_HOST, net.echo_port)
    data = os.urandom(MB)
    got = await echo_round_trip(stream, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    await stream.close()
    await circuit.close()
    assert circuit.closed


async def test_streams_share_a_circuit(net: Network) -> None:
    circuit = await net.client().build_circuit(net.info(0, 2, 3))
    streams = [await circuit.open_stream(ECHO_HOST, net.echo_port) for _ in range(4)]
    payloads = [os.urandom(50_000 + i) for i in range(4)]
    results = await asyncio.gather(
        *(echo_round_trip(s, p) for s, p in zip(streams, payloads, strict=True))
    )
    assert results == payloads
    for s in streams:
        await s.close()


async def test_each_relay_sees_only_its_neighbours(net: Network) -> None:
    circuit = await net.client().build_circuit(net.info(0, 1, 3))
    stream = await circuit.open_stream(ECHO_HOST, net.echo_port)
    assert await echo_round_trip(stream, b"who can see me?") == b"who can see me?"
    entry, middle, _spare, exit_relay = net.relays

    def hosts(relay: Relay) -> set[str]:
        return {host for host, _port in relay.observed}

    assert hosts(entry) == {CLIENT_HOST, middle.host}
    assert hosts(middle) == {entry.host, exit_relay.host}
    assert hosts(exit_relay) == {middle.host, ECHO_HOST}
    assert CLIENT_HOST not in hosts(exit_relay)
    assert ECHO_HOST not in hosts(entry) | hosts(middle)


async def test_a_relay_killed_mid_stream_gives_a_clean_error(net: Network) -> None:
    client = net.client()
    circuit = await client.build_circuit(net.info(0, 1, 3))
    stream = await circuit.open_stream(ECHO_HOST, net.echo_port)
    assert await echo_round_trip(stream, b"before") == b"before"

    async def keep_writing() -> None:
        while True:
            await stream.write(os.urandom(4096))
            await stream.read(4096)

    writing = asyncio.ensure_future(keep_writing())
    await asyncio.sleep(0.05)
    await net.relays[1].stop()  # the middle dies
    with pytest.raises((CircuitClosed, StreamClosed)) as info:
        await asyncio.wait_for(writing, 5)
    assert isinstance(info.value, CircuitClosed)
    assert info.value.reason == DestroyReason.CHANNEL_CLOSED
    assert circuit.closed
    with pytest.raises(CircuitClosed):
        await stream.write(b"more")
    with pytest.raises(CircuitClosed):
        await circuit.open_stream(ECHO_HOST, net.echo_port)

    # a circuit through the other middle works at once
    fresh = await client.build_circuit(net.info(0, 2, 3))
    again = await fresh.open_stream(ECHO_HOST, net.echo_port)
    assert await echo_round_trip(again, b"after") == b"after"
    # and extending through the dead relay fails cleanly
    with pytest.raises(CircuitClosed) as dead:
        await client.build_circuit(net.info(0, 1, 3))
    assert dead.value.reason in (DestroyReason.CONNECTFAILED, DestroyReason.DESTROYED)


async def test_entry_killed_closes_circuits_on_its_link(net: Network) -> None:
    client = net.client()
    circuits = [await client.build_circuit(net.info(0, m, 3)) for m in (1, 2)]
    await net.relays[0].stop()
    for circuit in circuits:
        with pytest.raises(CircuitClosed):
            await asyncio.wait_for(circuit.wait_relay(RelayCommand.DROP), 5)


async def test_exit_policy_refuses_other_ports() -> None:
    network, servers = await start_network(3, exits=(2,))
    exit_relay = network.relays[2]
    exit_relay.exit_policy = ExitPolicy.allow(("127.0.0.0/8", 1, 1024))
    try:
        circuit = await network.client().build_circuit(network.info(0, 1, 2))
        with pytest.raises(StreamClosed) as refused:
            await circuit.open_stream(ECHO_HOST, network.echo_port)  # an ephemeral port > 1024
        assert refused.value.reason == EndReason.EXITPOLICY
        # a non-loopback destination is refused without any connection attempt
        with pytest.raises(StreamClosed) as outside:
            await circuit.open_stream("192.0.2.1", 80)
        assert outside.value.reason == EndReason.EXITPOLICY
        # the circuit survives refusals
        assert not circuit.closed
        # a middle relay is no exit at all
        short = await network.client().build_circuit(network.info(0, 1))
        with pytest.raises(StreamClosed) as not_exit:
            await short.open_stream(ECHO_HOST, network.echo_port)
        assert not_exit.value.reason == EndReason.EXITPOLICY
    finally:
        await stop_network(network, servers)


async def test_exit_reports_refused_connections(net: Network) -> None:
    probe = socket.socket()
    probe.bind((ECHO_HOST, 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    circuit = await net.client().build_circuit(net.info(0, 1, 3))
    with pytest.raises(StreamClosed) as refused:
        await circuit.open_stream(ECHO_HOST, closed_port)
    assert refused.value.reason == EndReason.CONNECTREFUSED
    greeter = await asyncio.start_server(_greet, "127.0.0.1", 0)
    try:
        port = greeter.sockets[0].getsockname()[1]
        stream = await circuit.open_stream("localhost", port)  # the exit resolves the name
        assert await asyncio.wait_for(stream.read(), 5) == b"hi"
        assert (
            await asyncio.wait_for(stream.read(), 5) == b""
        )  # END (DONE) after the server hung up
    finally:
        greeter.close()
        await greeter.wait_closed()


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hi")
    await writer.drain()
    writer.close()


async def test_slow_reader_bounds_what_relays_buffer(net: Network) -> None:
    """A destination that stops reading stalls the sender through SENDME windows instead of
    letting the exit (or anyone before it) queue the data."""
    release = asyncio.Event()
    received = hashlib.sha256()
    total = [0]

    async def slow_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        while data := await reader.read(65536):
            received.update(data)
            total[0] += len(data)
        writer.close()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    listener.bind((ECHO_HOST, 0))
    server = await asyncio.start_server(slow_sink, sock=listener)
    port = listener.getsockname()[1]
    try:
        circuit = await net.client().build_circuit(net.info(0, 1, 3))
        stream = await circuit.open_stream(ECHO_HOST, port)
        data = os.urandom(12 * MB)
        writing = asyncio.ensure_future(stream.write(data))
        last, stalled_for, peak = -1, 0.0, 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not (stalled_for >= 0.5 and 0 in (stream.package_window, circuit.package_window)):
            assert loop.time() < deadline, "the sender never stalled"
            await asyncio.sleep(0.05)
            peak = max(peak, *(r.buffered_bytes() for r in net.relays))
            stalled_for = stalled_for + 0.05 if stream.bytes_sent == last else 0.0
            last = stream.bytes_sent
        assert not writing.done()
        assert stream.bytes_sent < 6 * MB  # kernel socket buffers plus the windows, no more
        # the exit holds at most a stream window (500 cells) plus one TCP write in user space
        assert peak < 500 * 498 + 200_000, peak
        release.set()
        await asyncio.wait_for(writing, 30)
        await stream.close()
        for _ in range(300):
            if total[0] == len(data):
                break
            await asyncio.sleep(0.05)
        assert received.digest() == hashlib.sha256(data).digest()
    finally:
        server.close()
        await server.wait_closed()


async def test_circuit_windows_follow_the_spec(net: Network) -> None:
    circuit = await net.client().build_circuit(net.info(0, 1, 3))
    stream = await circuit.open_stream(ECHO_HOST, net.echo_port)
    assert (circuit.package_window, circuit.deliver_window) == (1000, 1000)
    assert (stream.package_window, stream.deliver_window) == (500, 500)
    await echo_round_trip(stream, os.urandom(300 * 498))
    # every window is back within one increment of full once the echo is read
    await asyncio.sleep(0.1)
    assert circuit.package_window > 900
    assert circuit.deliver_window > 900
    assert stream.package_window > 450
    assert stream.deliver_window > 450


# --- misbehaving peers -----------------------------------------------------------------------


async def test_more_than_eight_relay_early_cells_are_refused(net: Network) -> None:
    raw = await RawCircuit.open(net.relays[0])
    try:
        await raw.create(net.relays[0])
        for _ in range(8):
            payload = raw.relay_payload(RelayCell(RelayCommand.DROP))
            raw.send(Cell(raw.circ_id, CellCommand.RELAY_EARLY, payload))
        with pytest.raises(TimeoutError):
            await raw.recv(timeout=0.2)  # eight are fine
        payload = raw.relay_payload(RelayCell(RelayCommand.DROP))
        raw.send(Cell(raw.circ_id, CellCommand.RELAY_EARLY, payload))
        reply = await raw.recv()
        assert reply.command == CellCommand.DESTROY
        assert parse_destroy(reply.payload) == DestroyReason.PROTOCOL
    finally:
        await raw.close()
    assert net.relays[0].circuit_count == 0


async def test_extend_outside_relay_early_is_refused(net: Network) -> None:
    raw = await RawCircuit.open(net.relays[0])
    try:
        await raw.create(net.relays[0])
        payload = raw.relay_payload(RelayCell(RelayCommand.EXTEND2, 0, b"\x00"))
        raw.send(Cell(raw.circ_id, CellCommand.RELAY, payload))
        reply = await raw.recv()
        assert (reply.command, parse_destroy(reply.payload)) == (CellCommand.DESTROY, 1)
    finally:
        await raw.close()


async def test_tampered_cell_is_destroyed_with_protocol(net: Network) -> None:
    raw = await RawCircuit.open(net.relays[0])
    try:
        await raw.create(net.relays[0])
        payload = bytearray(raw.relay_payload(RelayCell(RelayCommand.DROP, 0, b"x")))
        payload[12] ^= 0x04
        raw.send(Cell(raw.circ_id, CellCommand.RELAY, bytes(payload)))
        reply = await raw.recv()
        assert reply.command == CellCommand.DESTROY
        assert parse_destroy(reply.payload) == DestroyReason.PROTOCOL
    finally:
        await raw.close()


async def test_tampering_on_a_long_circuit_kills_it(net: Network) -> None:
    """A relay that alters a cell it forwards makes the exit tear the circuit down."""
    client = net.client()
    circuit = await client.build_circuit(net.info(0, 1, 3))
    stream = await circuit.open_stream(ECHO_HOST, net.echo_port)
    link = circuit._link.link
    real_send = link.send

    def flip(cell: Cell) -> None:
        if cell.command in (CellCommand.RELAY, CellCommand.RELAY_EARLY):
            body = bytearray(cell.payload)
            body[100] ^= 1
            cell = Cell(cell.circ_id, cell.command, bytes(body))
        real_send(cell)

    link.send = flip  # type: ignore[method-assign]
    try:
        await stream.write(b"tampered on the wire")
        with pytest.raises(CircuitClosed) as info:
            await asyncio.wait_for(stream.read(), 5)
        assert info.value.reason == DestroyReason.DESTROYED  # reasons are not propagated
    finally:
        link.send = real_send  # type: ignore[method-assign]


async def test_bad_handshakes_are_refused(net: Network) -> None:
    relay = net.relays[0]
    raw = await RawCircuit.open(relay)
    try:
        raw.send(Cell(raw.circ_id, CellCommand.CREATE2, create2_payload(os.urandom(84))))
        reply = await raw.recv()
        assert (reply.command, parse_destroy(reply.payload)) == (CellCommand.DESTROY, 1)
        raw.send(Cell(raw.circ_id + 1, CellCommand.CREATE2, create2_payload(b"x" * 10, 0)))
        reply = await raw.recv()
        assert reply.command == CellCommand.DESTROY
        raw.send(Cell(5, CellCommand.CREATE2, b""))  # id without the initiator's high bit
        reply = await raw.recv()
        assert reply.command == CellCommand.DESTROY
    finally:
        await raw.close()


async def test_fuzzed_bytes_do_not_hurt_a_relay(net: Network) -> None:
    client = net.client()
    circuit = await client.build_circuit(net.info(0, 1, 3))
    stream = await circuit.open_stream(ECHO_HOST, net.echo_port)
    rng = os.urandom
    for round_ in range(20):
        raw = await RawCircuit.open(net.relays[round_ % 4])
        if round_ % 3 == 0:
            raw.send_raw(rng(5000 + round_))
        elif round_ % 3 == 1:
            for cmd in (3, 4, 9, 10, 11, 0, 200):
                frame = (0x80000000 | round_).to_bytes(4, "big") + bytes([cmd])
                raw.send_raw(frame + rng(PAYLOAD_LEN))
        else:
            await raw.create(net.relays[round_ % 4])
            for _ in range(5):
                raw.send(Cell(raw.circ_id, CellCommand.RELAY, rng(PAYLOAD_LEN)))
        await asyncio.sleep(0.01)
        await raw.close()
    # the relays still serve the honest circuit, and new ones
    assert await echo_round_trip(stream, b"still here") == b"still here"
    again = await client.build_circuit(net.info(0, 2, 3))
    fresh = await again.open_stream(ECHO_HOST, net.echo_port)
    assert await echo_round_trip(fresh, b"and new") == b"and new"


async def test_a_flood_of_garbage_closes_the_link(net: Network) -> None:
    raw = await RawCircuit.open(net.relays[0])
    try:
        for i in range(100):
            raw.send_raw((i + 1).to_bytes(4, "big") + b"\xc8" + bytes(PAYLOAD_LEN))
        try:
            data = await asyncio.wait_for(raw.reader.read(), 5)
        except ConnectionResetError:
            data = b""
        assert data == b""  # the relay hung up
    finally:
        await raw.close()


# --- the handler registry: a rendezvous built from it ----------------------------------------

JOIN = 200
JOINED = 201


def install_rendezvous(relay: Relay) -> None:
    """A toy rendezvous point: two circuits that send the same cookie are spliced."""
    waiting: dict[bytes, RelayCircuit] = relay.state.setdefault("cookies", {})

    def join(circuit: RelayCircuit, cell: RelayCell) -> None:
        other = waiting.pop(cell.data, None)
        if other is None or other.closed:
            waiting[cell.data] = circuit

            def forget(closed: RelayCircuit) -> None:
                if waiting.get(cell.data) is closed:
                    del waiting[cell.data]

            circuit.on_close(forget)
            return
        circuit.splice(other)
        for side in (circuit, other):
            side.send(JOINED)

    relay.register_command("JOIN", JOIN, join)


async def test_registered_commands_can_splice_two_circuits(net: Network) -> None:
    rendezvous = net.relays[2]
    install_rendezvous(rendezvous)
    assert rendezvous.command_code("JOIN") == JOIN
    with pytest.raises(ValueError, match="core"):
        rendezvous.register_command("X", RelayCommand.DATA, lambda c, r: None)

    keys = CircuitKeys.from_material(os.urandom(KEY_MATERIAL_LEN))
    cookie = os.urandom(20)
    service = await net.client("127.10.0.1").build_circuit(net.info(1, 2))
    visitor = await net.client().build_circuit(net.info(0, 3, 2))

    async def serve(stream: Stream, host: str, port: int) -> None:
        assert (host, port) == ("service.example", 80)
        stream.accept()
        while data := await stream.read():
            await stream.write(data.upper())

    joined = [asyncio.ensure_future(c.wait_relay(JOINED)) for c in (service, visitor)]
    service.send_relay(JOIN, cookie)
    await asyncio.sleep(0.05)
    visitor.send_relay(JOIN, cookie)
    await asyncio.wait_for(asyncio.gather(*joined), 5)

    service.add_virtual_hop(keys, reverse=True)
    service.begin_handler = serve
    visitor.add_virtual_hop(keys)
    stream = await visitor.open_stream("service.example", 80)
    await stream.write(b"hello, service")
    assert await stream.readexactly(14) == b"HELLO, SERVICE"
    big = os.urandom(200_000).hex().encode()
    assert await echo_round_trip(stream, big) == big.upper()
    # the rendezvous relay saw both circuits' neighbours, never the other origin
    hosts = {h for h, _ in rendezvous.observed}
    assert "127.10.0.1" not in hosts
    assert CLIENT_HOST not in hosts
    await visitor.close()
    with pytest.raises(CircuitClosed):
        await asyncio.wait_for(service.wait_relay(RelayCommand.DROP), 5)
