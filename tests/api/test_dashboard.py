"""The dashboard over HTTP: its page and assets, the snapshot, the Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from fogcoord.api.app import create_app
from fogcoord.api.routes.dashboard import dumps, event_stream
from fogcoord.auth.models import PrincipalKind, Scope
from fogcoord.client import FogClient
from fogcoord.contracts.tokenomics import WalletCreated
from fogcoord.coordinator import Coordinator
from tests.helpers import make_config, running_api

Api = tuple[Coordinator, FogClient, str]
SNAPSHOT_KEYS = {"time", "latest", "history", "alerts", "events", "event_counts", "health"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_config(tmp_path)) as ctx:
        yield ctx


@pytest.fixture
async def anon(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no credentials of its own."""
    transport = httpx.ASGITransport(app=create_app(api[0], manage_lifecycle=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_page_is_static_html_that_loads_its_script(anon: httpx.AsyncClient) -> None:
    page = await anon.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/dashboard.js"' in page.text
    assert 'href="/static/dashboard.css"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"

    script = await anon.get("/static/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    style = await anon.get("/static/dashboard.css")
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert (await anon.get("/static/dashboard.html")).status_code == 404
    assert (await anon.get("/static/nothing.js")).status_code == 404


async def test_snapshot_needs_a_key_with_the_stats_scope(api: Api, anon: httpx.AsyncClient) -> None:
    _, client, key = api
    path = "/v1/stats/snapshot"
    anonymous = await anon.get(path)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthenticated"
    assert (await anon.get(path, params={"key": "fc_0000000000000000_nope"})).status_code == 401

    by_query = await anon.get(path, params={"key": key})
    assert by_query.status_code == 200
    assert by_query.headers["content-type"].startswith("application/json")
    assert set(by_query.json()) >= SNAPSHOT_KEYS
    assert (await anon.get(path, headers={"Authorization": f"Bearer {key}"})).status_code == 200
    assert (await anon.get(path, headers={"X-API-Key": key})).status_code == 200

    narrow = await client.create_key(
        kind=PrincipalKind.REQUESTER, name="no-stats", scopes=[Scope.WALLETS_READ]
    )
    assert (await anon.get(path, params={"key": narrow.key})).status_code == 403


async def test_stream_needs_a_key(anon: httpx.AsyncClient) -> None:
    assert (await anon.get("/v1/stats/stream")).status_code == 401
    assert (await anon.get("/v1/stats/stream", params={"key": "nope"})).status_code == 401


class SseClient:
    """Drives the ASGI app by hand: httpx's ASGI transport waits for a response to end,
    and this one never does until the client goes away."""

    def __init__(self, app: ASGIApp, path: str, query: str) -> None:
        self.app = app
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(b"host", b"test"), (b"accept", b"text/event-stream")],
            "server": ("test", 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
        }
        self.requested = False
        self.gone = asyncio.Event()
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.buffer = ""
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        await self.messages.put(message)

    async def start(self) -> dict[str, str]:
        async def serve() -> None:
            await self.app(self.scope, self.receive, self.send)

        self.task = asyncio.get_running_loop().create_task(serve())
        start = await asyncio.wait_for(self.messages.get(), 5)
        assert start["type"] == "http.response.start"
        assert start["status"] == 200
        return {k.decode(): v.decode() for k, v in start["headers"]}

    async def frame(self, timeout: float = 5.0) -> tuple[str, Any]:
        """The next message with data: its event name and decoded data."""
        async with asyncio.timeout(timeout):
            while True:
                while "\n\n" in self.buffer:
                    raw, self.buffer = self.buffer.split("\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in raw.split("\n") if ": " in line)
                    if "data" in fields:
                        return fields.get("event", "message"), json.loads(fields["data"])
                message = await self.messages.get()
                assert message["type"] == "http.response.body"
                self.buffer += message["body"].decode()

    async def frame_where(self, event: str, match: Any) -> Any:
        while True:
            name, data = await self.frame()
            if name == event and match(data):
                return data

    async def close(self) -> None:
        self.gone.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


async def test_stream_sends_a_snapshot_then_live_events_until_the_client_leaves(api: Api) -> None:
    coord, _, key = api
    client = SseClient(create_app(coord, manage_lifecycle=False), "/v1/stats/stream", f"key={key}")
    headers = await client.start()
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"

    name, snapshot = await client.frame()
    assert name == "snapshot"
    assert set(snapshot) >= SNAPSHOT_KEYS

    await coord.orchestration.broadcast_event(
        WalletCreated(source="test", wallet_id="w_dashboard", owner="someone", granted=Decimal(5))
    )
    message = await client.frame_where(
        "event", lambda d: d["event"]["fields"].get("wallet_id") == "w_dashboard"
    )
    assert message["type"] == "event"
    assert message["event"]["type"] == "wallet_created"
    assert message["event"]["source"] == "test"

    await coord.stats.collect_metrics()
    metrics = await client.frame_where("metrics", lambda d: True)
    assert "host.cpu_percent" in metrics["values"]

    await client.close()
    await asyncio.sleep(0)
    assert not coord.stats._listeners  # the stream let go of its live feed


async def test_stream_sends_heartbeats_when_quiet(api: Api) -> None:
    coord, _, _ = api
    stream = event_stream(coord, heartbeat_s=0.05)
    assert (await anext(stream)).startswith("retry: ")
    assert (await anext(stream)).startswith("event: snapshot\ndata: {")
    async with asyncio.timeout(5):
        # services starting up may still be announcing themselves; quiet comes after
        while (await anext(stream)) != ": keep-alive\n\n":
            pass
    assert coord.stats._listeners
    await stream.aclose()
    await asyncio.sleep(0)
    assert not coord.stats._listeners


def test_frames_are_json_a_browser_can_parse() -> None:
    text = dumps({"a": float("inf"), "b": [float("nan"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert "\n" not in dumps({"s": "line\nbreak"})
