"""Onion routing across processes: a real `fogcoord serve` as directory authority, three
`fogcoord relay` processes of three owners on three loopback /16s, and `fogcoord onion socks`
carrying an ordinary HTTP request through a 3-hop circuit."""

from __future__ import annotations

import asyncio
import http.server
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fogcoord.onion.client import OnionClient
from fogcoord.onion.directory import SignedConsensus
from fogcoord.onion.hidden import AccessRefused, connect_onion
from tests.integration.test_job_agents import _owner_key
from tests.integration.test_market_agents import _env, _finish, _wait_for
from tests.served import Served, start

pytestmark = pytest.mark.slow

HOSTS = ("127.11.0.1", "127.12.0.1", "127.13.0.1", "127.14.0.1")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start(tmp_path / "data", env=_env())
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=10)
        finally:
            _finish(server.proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fogcoord", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello through three hops"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_request_crosses_three_relays_of_three_owners(served: Served) -> None:
    procs: list[subprocess.Popen[str]] = []
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        for i, host in enumerate(HOSTS):
            key = _owner_key(served, f"relay-owner-{i}")
            flags = ["--exit"] if i >= len(HOSTS) - 2 else []
            procs.append(
                _process(
                    "relay", "--coordinator", served.url, "--api-key", key, "--host", host, *flags
                )
            )

        def registered() -> bool:
            return len(served.get("/v1/onion/consensus")["consensus"]["relays"]) == len(HOSTS)

        _wait_for(registered, timeout=30, what="the relays in the consensus")
        socks_port = _free_port()
        env = _env(FOGCOORD_URL=served.url, FOGCOORD_API_KEY=served.key)
        socks = subprocess.Popen(
            [sys.executable, "-m", "fogcoord", "onion", "socks", "--port", str(socks_port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        procs.append(socks)
        assert socks.stdout is not None
        line = socks.stdout.readline()
        assert re.search(r"SOCKS5 on 127\.0\.0\.1:\d+ through 4 relays", line), line
        url = f"http://127.0.0.1:{web.server_address[1]}/"
        with httpx.Client(proxy=f"socks5://127.0.0.1:{socks_port}", timeout=20) as client:
            response = client.get(url)
        assert response.status_code == 200
        assert response.text == "hello through three hops"
        route = httpx.post(
            f"{served.url}/v1/privacy/routes",
            json={"hops": 3},
            headers={"Authorization": f"Bearer {served.key}"},
            timeout=20,
        )
        assert route.status_code == 200, route.text
        assert len(route.json()["relays"]) == 3
        asyncio.run(_hidden_service(served, web.server_address[1]))
    finally:
        web.shutdown()
        web.server_close()
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            finally:
                _finish(proc)


async def _hidden_service(served: Served, target_port: int) -> None:
    """A hidden service in front of the web server: the address at once, published soon after;
    a paying client reaches it by address, a client without a ticket is refused."""
    operator = {"Authorization": f"Bearer {served.key}"}
    async with httpx.AsyncClient(base_url=served.url, headers=operator, timeout=20) as api:
        created = (await api.post("/v1/onion/services", json={"target_port": target_port})).json()
        address = created["address"]
        assert created["created"] is True
        assert address.endswith(".onion")

        async def published() -> dict[str, Any]:
            for _ in range(200):
                view: dict[str, Any] = (await api.get(f"/v1/onion/services/{address}")).json()
                if view["published"]:
                    return view
                await asyncio.sleep(0.05)
            raise AssertionError(f"never published: {view}")

        view = await published()
        assert len(view["stored_on"]) >= 1
        authority = (await api.get("/v1/onion/authority")).json()["ed25519"]
        raw = (await api.get("/v1/onion/consensus")).content
        consensus = SignedConsensus.from_json(raw).verify(
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(authority))
        )
        client = OnionClient(consensus)
        try:
            with pytest.raises(AccessRefused):
                await connect_onion(client, address, consensus, port=target_port, timeout=15)
            requester = await api.post("/v1/keys", json={"kind": "requester", "name": "visitor"})
            visitor = {"Authorization": f"Bearer {requester.json()['key']}"}
            broke = await api.post(f"/v1/onion/services/{address}/tickets", headers=visitor)
            assert broke.status_code in (404, 409), broke.text  # no wallet, no access
            await api.post("/v1/wallets", json={}, headers=visitor)
            bought = await api.post(f"/v1/onion/services/{address}/tickets", headers=visitor)
            assert bought.status_code == 201, bought.text
            ticket = bytes.fromhex(bought.json()["ticket"])
            stream = await connect_onion(
                client, address, consensus, port=target_port, credential=ticket, timeout=15
            )
            await stream.write(b"GET / HTTP/1.0\r\nHost: hidden\r\n\r\n")
            reply = b""
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    break
                reply += chunk
            assert reply.startswith(b"HTTP/1.0 200")
            assert reply.endswith(b"hello through three hops")
        finally:
            await client.close()
