"""Onion routing across processes: a real `fogcoord serve` as directory authority, three
`fogcoord relay` processes of three owners on three loopback /16s, and `fogcoord onion socks`
carrying an ordinary HTTP request through a 3-hop circuit."""

from __future__ import annotations

import http.server
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_job_agents import _owner_key
from tests.integration.test_market_agents import _env, _finish, _wait_for
from tests.served import Served, start

pytestmark = pytest.mark.slow

HOSTS = ("127.11.0.1", "127.12.0.1", "127.13.0.1")


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
            flags = ["--exit"] if i == len(HOSTS) - 1 else []
            procs.append(
                _process(
                    "relay", "--coordinator", served.url, "--api-key", key, "--host", host, *flags
                )
            )

        def registered() -> bool:
            return len(served.get("/v1/onion/consensus")["consensus"]["relays"]) == len(HOSTS)

        _wait_for(registered, timeout=30, what="three relays in the consensus")
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
        assert re.search(r"SOCKS5 on 127\.0\.0\.1:\d+ through 3 relays", line), line
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
