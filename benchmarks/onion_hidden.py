"""``onion.hidden_service_ready``: from publishing an onion service to its first client.

Setup: seven relays on 127.1.0.1 .. 127.7.0.1 in this process, each a hidden-service directory,
introduction point and rendezvous point (rend-spec-v3 sections 2.2, 3 and 4); a consensus signed
by a fresh authority; an echo server on 127.8.0.1 as the service's target. Everything shares one
event loop on one core, so the figure is the cost of the protocol in Python, not of a network.

``onion.hidden_service_ready`` (s): a service with a fresh key and a fresh
:class:`~fogcoord.onion.client.OnionClient` starts :meth:`OnionService.publish` (three
introduction circuits with ESTABLISH_INTRO, a signed descriptor uploaded through circuits to the
three responsible directories); as soon as ``published`` is set, a client with its own fresh
onion client connects by address -- descriptor fetch and verification, rendezvous circuit,
introduction, the service's circuit to the rendezvous point, the end-to-end handshake -- opens
a stream and completes one echo round trip. The time from the start of ``publish()`` to that
echo, median over the rounds (the slowest is logged, with the split between publishing and
connecting). Target < 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from time import perf_counter

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.harness import Figure, Unit, log
from fogcoord.onion.client import OnionClient
from fogcoord.onion.descriptor import DescriptorStore
from fogcoord.onion.directory import Authority, Consensus
from fogcoord.onion.hidden import OnionService, connect_onion, install_hs_relay
from fogcoord.onion.hsdir import install_hsdir
from fogcoord.onion.relay import Relay

FIGURES = ("onion.hidden_service_ready",)
UNIT: Unit = "s"
TIMEOUT_S = 120.0

RELAYS = 7
ROUNDS = 7
WARMUP_ROUNDS = 1
TARGET_S = 1.0
ECHO_HOST = "127.8.0.1"
CLIENT_HOST = "127.9.0.1"
SERVICE_HOST = "127.10.0.1"
MESSAGE = b"hello, onion service"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _round(consensus: Consensus, echo_port: int) -> tuple[float, float]:
    """(publish, publish-to-first-echo) in seconds for one fresh service and client."""
    service_client = OnionClient(consensus, local_address=SERVICE_HOST)
    client = OnionClient(consensus, local_address=CLIENT_HOST)
    service = OnionService(service_client, Ed25519PrivateKey.generate(), (ECHO_HOST, echo_port))
    try:
        started = perf_counter()
        await service.publish()
        published = perf_counter()
        stream = await connect_onion(client, service.address, consensus, port=echo_port)
        await stream.write(MESSAGE)
        echoed = await stream.readexactly(len(MESSAGE))
        ready = perf_counter()
        if echoed != MESSAGE:
            raise RuntimeError("the echo came back altered")
        await stream.close()
        return published - started, ready - started
    finally:
        await service.close()
        await client.close()
        await service_client.close()


async def run() -> list[Figure]:
    relays = [
        Relay(f"127.{i + 1}.0.1", owner=f"owner-{i}", nickname=f"hs{i}") for i in range(RELAYS)
    ]
    echo = await asyncio.start_server(_echo, ECHO_HOST, 0)
    echo_port = int(echo.sockets[0].getsockname()[1])
    for relay in relays:
        await relay.start()
        install_hsdir(relay, DescriptorStore())
        install_hs_relay(relay)
    authority = Authority(Ed25519PrivateKey.generate())
    for relay in relays:
        authority.add(relay.descriptor())
    consensus = authority.consensus().verify(authority.public_key)
    try:
        for _ in range(WARMUP_ROUNDS):
            await _round(consensus, echo_port)
        publish: list[float] = []
        ready: list[float] = []
        for _ in range(ROUNDS):
            p, r = await _round(consensus, echo_port)
            publish.append(p)
            ready.append(r)
    finally:
        for relay in relays:
            await relay.stop()
        echo.close()
        await echo.wait_closed()
    value = statistics.median(ready)
    log(
        f"  publish() to first echo over {ROUNDS} rounds: median {value * 1e3:.0f} ms "
        f"(max {max(ready) * 1e3:.0f} ms); of which publishing: median "
        f"{statistics.median(publish) * 1e3:.0f} ms"
    )
    return [Figure("onion.hidden_service_ready", value, "s", target=TARGET_S, op="<")]
