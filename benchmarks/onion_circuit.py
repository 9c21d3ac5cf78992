"""``onion.circuit_build.p50`` and ``onion.stream_throughput``: onion routing on loopback.

Setup: three relays (entry, middle, exit) as asyncio TCP servers on 127.1.0.1, 127.2.0.1 and
127.3.0.1 in this process, a consensus signed by a fresh authority, and an
:class:`~fogcoord.onion.client.OnionClient`. Everything shares one event loop on one core, so
the figures are the cost of the protocol in Python, not of a network.

``onion.circuit_build.p50`` (ms): time to build a 3-hop circuit -- CREATE2 to the entry, then
two EXTEND2s, i.e. three ntor handshakes and three round trips -- and tear it down, repeated;
the median build (the p95 is logged). Target < 20 ms.

``onion.stream_throughput`` (MB/s): one stream through the 3-hop circuit to a local sink that
discards what it reads; the time runs from the first write until the sink has received every
byte (so SENDME flow control and all three layers of AES-CTR are included). Baseline, same run:
the same bytes over a direct TCP connection to the same sink. Rounds alternate between the two;
the median counts. Target >= 5 MB/s.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from time import perf_counter

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.harness import Figure, Unit, log, percentile
from fogcoord.onion.client import OnionClient
from fogcoord.onion.directory import Authority, RelayInfo
from fogcoord.onion.relay import Relay

FIGURES = ("onion.circuit_build.p50", "onion.stream_throughput")
UNITS: dict[str, Unit] = {"onion.circuit_build.p50": "ms", "onion.stream_throughput": "MB/s"}
TIMEOUT_S = 120.0

BUILDS = 200
WARMUP_BUILDS = 10
BUILD_TARGET_MS = 20.0
PAYLOAD_BYTES = 16 * 1024 * 1024
ROUNDS = 3
THROUGHPUT_TARGET = 5.0
SINK_HOST = "127.8.0.1"
MB = 1024 * 1024


class _Sink:
    """Counts bytes per connection and signals when the expected amount has arrived."""

    def __init__(self) -> None:
        self.expected = 0
        self.received = 0
        self.done = asyncio.Event()

    def expect(self, n: int) -> None:
        self.expected, self.received = n, 0
        self.done.clear()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(256 * 1024):
            self.received += len(data)
            if self.received >= self.expected:
                self.done.set()
        writer.close()


async def _through_circuit(
    client: OnionClient, path: list[RelayInfo], sink: _Sink, port: int
) -> float:
    circuit = await client.build_circuit(path)
    stream = await circuit.open_stream(SINK_HOST, port)
    data = os.urandom(PAYLOAD_BYTES)
    sink.expect(len(data))
    started = perf_counter()
    await stream.write(data)
    await asyncio.wait_for(sink.done.wait(), 60)
    elapsed = perf_counter() - started
    await stream.close()
    await circuit.close()
    return len(data) / elapsed / MB


async def _direct(sink: _Sink, port: int) -> float:
    _reader, writer = await asyncio.open_connection(SINK_HOST, port)
    data = os.urandom(PAYLOAD_BYTES)
    sink.expect(len(data))
    started = perf_counter()
    writer.write(data)
    await writer.drain()
    await asyncio.wait_for(sink.done.wait(), 60)
    elapsed = perf_counter() - started
    writer.close()
    return len(data) / elapsed / MB


async def run() -> list[Figure]:
    relays = [
        Relay(f"127.{i + 1}.0.1", owner=f"owner-{i}", exit=i == 2, nickname=f"bench{i}")
        for i in range(3)
    ]
    sink = _Sink()
    server = await asyncio.start_server(sink.serve, SINK_HOST, 0)
    port = int(server.sockets[0].getsockname()[1])
    for relay in relays:
        await relay.start()
    authority = Authority(Ed25519PrivateKey.generate())
    for relay in relays:
        authority.add(relay.descriptor())
    client = OnionClient(authority.consensus().verify(authority.public_key))
    path = [r.descriptor() for r in relays]
    try:
        for _ in range(WARMUP_BUILDS):
            await (await client.build_circuit(path)).close()
        builds: list[float] = []
        for _ in range(BUILDS):
            started = perf_counter()
            circuit = await client.build_circuit(path)
            builds.append((perf_counter() - started) * 1e3)
            await circuit.close()
        p50, p95 = percentile(builds, 50), percentile(builds, 95)
        log(f"  circuit build over {BUILDS} builds: p50 {p50:.2f} ms, p95 {p95:.2f} ms")

        onion: list[float] = []
        direct: list[float] = []
        for _ in range(ROUNDS):
            onion.append(await _through_circuit(client, path, sink, port))
            direct.append(await _direct(sink, port))
        value, baseline = statistics.median(onion), statistics.median(direct)
        log(
            f"  {PAYLOAD_BYTES // MB} MB per round: 3-hop circuit {value:.1f} MB/s "
            f"(rounds {', '.join(f'{x:.1f}' for x in onion)}), direct TCP {baseline:.0f} MB/s"
        )
    finally:
        await client.close()
        for relay in relays:
            await relay.stop()
        server.close()
        await server.wait_closed()
    return [
        Figure(
            "onion.circuit_build.p50",
            p50,
            "ms",
            target=BUILD_TARGET_MS,
            op="<",
        ),
        Figure(
            "onion.stream_throughput",
            value,
            "MB/s",
            baseline=baseline,
            target=THROUGHPUT_TARGET,
            op=">=",
        ),
    ]
