"""The SOCKS5 front end, driven by a raw socket client (and by httpx when socksio is present)."""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import os
import struct
from collections.abc import AsyncIterator

import pytest

from fogcoord.onion.socks import SocksServer
from tests.onion.conftest import ECHO_HOST, Network


@pytest.fixture
async def proxy(net: Network) -> AsyncIterator[SocksServer]:
    server = SocksServer(net.client())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def socks_connect(
    proxy: SocksServer, host: str, port: int
) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    try:
        address = b"\x01" + ipaddress.IPv4Address(host).packed
    except ValueError:
        address = b"\x03" + bytes([len(host)]) + host.encode()
    writer.write(b"\x05\x01\x00" + address + struct.pack(">H", port))
    reply = await asyncio.wait_for(reader.readexactly(10), 10)
    assert reply[:1] == b"\x05"
    return reply[1], reader, writer


async def test_socks_round_trip(net: Network, proxy: SocksServer) -> None:
    code, reader, writer = await socks_connect(proxy, ECHO_HOST, net.echo_port)
    assert code == 0
    data = os.urandom(300_000)
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), 20) == data
    writer.close()
    # a second connection reuses the circuit
    code, reader, writer = await socks_connect(proxy, ECHO_HOST, net.echo_port)
    assert code == 0
    writer.write(b"again")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"again"
    writer.close()
    assert len(proxy._circuits) == 1


async def test_socks_with_a_domain_name(proxy: SocksServer) -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0)
    try:
        code, reader, writer = await socks_connect(
            proxy, "localhost", server.sockets[0].getsockname()[1]
        )
        assert code == 0
        assert await asyncio.wait_for(reader.read(), 5) == b"HTTP/1.0 200 OK\r\n\r\nhi"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_socks_errors(net: Network, proxy: SocksServer) -> None:
    code, _, writer = await socks_connect(proxy, "192.0.2.7", 80)
    assert code == 0x02  # refused by the exit's policy
    writer.close()
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6))  # BIND
    assert await reader.readexactly(2) == b"\x05\x00"
    assert (await reader.readexactly(10))[1] == 0x07
    writer.close()
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"\x05\x01\x02")  # username/password only
    assert await reader.readexactly(2) == b"\x05\xff"
    writer.close()


@pytest.mark.skipif(
    importlib.util.find_spec("socksio") is None, reason="httpx needs socksio for SOCKS"
)
async def test_httpx_through_the_proxy(proxy: SocksServer) -> None:
    import httpx

    async def web(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nonion")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(web, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(proxy=f"socks5://{proxy.host}:{proxy.port}") as http:
            response = await http.get(f"http://127.0.0.1:{port}/")
        assert response.text == "onion"
    finally:
        server.close()
        await server.wait_closed()
