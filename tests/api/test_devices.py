"""The agent protocol over HTTP and WebSocket: registration with proof of possession, ownership,
device keys that speak only for their own device, listing, deregistration and the channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from fogcoord.api.app import create_app
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogClient
from fogcoord.coordinator import Coordinator
from tests.helpers import make_config, running_api
from tests.served import finish, start


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def registration(
    device_id: str | None, key: Ed25519PrivateKey | None = None, **over: Any
) -> dict[str, Any]:
    """A body signed as documented: ``fogcoord-register|<device_id>|<public_key>``."""
    key = key or Ed25519PrivateKey.generate()
    pk = public_hex(key)
    body: dict[str, Any] = {
        "cpu_cores": 4,
        "gflops": 25.0,
        "ram_mb": 4096,
        "storage_gb": 64.0,
        "battery_percent": 90.0,
        "charging": False,
        "thermal_celsius": 30.0,
        "network": "wifi",
        "bandwidth_mbps": 50.0,
        "platform": "linux",
        "region": "eu",
        "public_key": pk,
        "signature": key.sign(f"fogcoord-register|{device_id or ''}|{pk}".encode()).hex(),
    }
    if device_id is not None:
        body["device_id"] = device_id
    body.update(over)
    return body


BEAT = {"battery_percent": 70.0, "charging": True, "thermal_celsius": 35.0}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Who:
    principal_id: str
    key: str
    http: httpx.AsyncClient


async def connect(app: FastAPI, stack: AsyncExitStack, key: str, principal_id: str) -> Who:
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=bearer(key)
    )
    await stack.enter_async_context(http)
    return Who(principal_id, key, http)


@dataclass
class Api:
    coord: Coordinator
    app: FastAPI
    admin: FogClient
    stack: AsyncExitStack
    operator: Who
    alice: Who
    bob: Who

    async def register(self, owner: Who, device_id: str, **over: Any) -> Who:
        """Register ``device_id`` for ``owner``; returns the device's own client."""
        r = await owner.http.post("/v1/devices", json=registration(device_id, **over))
        assert r.status_code == 201, r.text
        reg = self.coord.harvesting.registry
        meta = reg.meta[reg.rows[device_id]]
        assert meta is not None
        return await connect(self.app, self.stack, r.json()["device_key"], meta.principal_id)

    def devices(self) -> set[str]:
        return set(self.coord.harvesting.registry.rows)

    async def key_ids(self) -> set[str]:
        return {k.key_id for k in await self.admin.list_keys()}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with (
        running_api(make_config(tmp_path)) as (coord, admin, operator_key),
        AsyncExitStack() as stack,
    ):
        app = create_app(coord, manage_lifecycle=False)
        users = []
        for name in ("alice", "bob"):
            issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name=name)
            users.append(await connect(app, stack, issued.key, issued.principal.principal_id))
        me = (await admin.whoami()).principal.principal_id
        operator = await connect(app, stack, operator_key, me)
        yield Api(coord, app, admin, stack, operator, users[0], users[1])


# --- registration ------------------------------------------------------------------------------


async def test_an_owner_registers_a_device(api: Api) -> None:
    key = Ed25519PrivateKey.generate()
    r = await api.alice.http.post("/v1/devices", json=registration("phone-1", key))
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["device"]["device_id"] == "phone-1"
    assert data["device"]["owner"] == api.alice.principal_id
    assert data["device"]["public_key"] == public_hex(key)
    assert data["device"]["cpu_cores"] == 4
    assert data["health"]["state"] == "unverified"
    assert data["device_key"].startswith("fc_")
    # the device key is a device principal of its own, bound to this device
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app),
        base_url="http://test",
        headers=bearer(data["device_key"]),
    ) as device:
        me = (await device.get("/v1/whoami")).json()
    assert me["principal"]["kind"] == "device"
    assert me["principal"]["name"] == "phone-1"
    assert api.coord.harvesting.device_of(me["principal"]["principal_id"]) == "phone-1"
    assert api.devices() == {"phone-1"}


async def test_without_a_device_id_the_coordinator_assigns_one(api: Api) -> None:
    r = await api.alice.http.post("/v1/devices", json=registration(None))
    assert r.status_code == 201, r.text
    device_id = r.json()["device"]["device_id"]
    assert device_id.startswith("dev-")
    assert api.devices() == {device_id}


async def test_the_owner_is_the_caller_never_the_body(api: Api) -> None:
    before = await api.key_ids()
    body = registration("phone-1", owner=api.bob.principal_id)
    r = await api.alice.http.post("/v1/devices", json=body)
    assert r.status_code == 422
    assert r.json()["field"] == "owner"
    assert api.devices() == set()
    assert await api.key_ids() == before
    # the same registration without the smuggled field belongs to the caller
    del body["owner"]
    r = await api.alice.http.post("/v1/devices", json=body)
    assert r.status_code == 201
    assert r.json()["device"]["owner"] == api.alice.principal_id


def _other_key_signature(body: dict[str, Any]) -> None:
    body["signature"] = Ed25519PrivateKey.generate().sign(b"anything").hex()


def _signed_for_another_id(body: dict[str, Any]) -> None:
    other = registration("phone-2")
    body["public_key"], body["signature"] = other["public_key"], other["signature"]


def _malformed_public_key(body: dict[str, Any]) -> None:
    body["public_key"] = "zz" * 32


def _short_public_key(body: dict[str, Any]) -> None:
    body["public_key"] = body["public_key"][:-2]


def _missing_cores(body: dict[str, Any]) -> None:
    del body["cpu_cores"]


def _missing_signature(body: dict[str, Any]) -> None:
    del body["signature"]


def _battery_150(body: dict[str, Any]) -> None:
    body["battery_percent"] = 150


def _bad_device_id(body: dict[str, Any]) -> None:
    body["device_id"] = "no spaces/or slashes"


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (_other_key_signature, "signature"),
        (_signed_for_another_id, "signature"),
        (_malformed_public_key, "public_key"),
        (_short_public_key, "public_key"),
        (_missing_cores, "cpu_cores"),
        (_missing_signature, "signature"),
        (_battery_150, "battery_percent"),
        (_bad_device_id, "device_id"),
    ],
)
async def test_bad_registrations_are_422_naming_the_field(api: Api, spoil: Any, field: str) -> None:
    before = await api.key_ids()
    body = registration("phone-1")
    spoil(body)
    r = await api.alice.http.post("/v1/devices", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert data["error"] == "validation_failed"
    assert data["field"] == field
    assert field in data["detail"]
    assert api.devices() == set()
    assert await api.key_ids() == before, "no device key was issued"


async def test_a_duplicate_device_id_is_409(api: Api) -> None:
    await api.register(api.alice, "phone-1")
    before = await api.key_ids()
    for who in (api.alice, api.bob):
        r = await who.http.post("/v1/devices", json=registration("phone-1"))
        assert r.status_code == 409
        assert r.json()["error"] == "conflict"
    assert await api.key_ids() == before
    [device] = api.coord.harvesting.list_devices()
    assert device.owner == api.alice.principal_id


async def test_a_device_cannot_register_devices(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    r = await phone.http.post("/v1/devices", json=registration("phone-2"))
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    assert api.devices() == {"phone-1"}


async def test_registration_needs_a_key(api: Api) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app), base_url="http://test"
    ) as anonymous:
        r = await anonymous.post("/v1/devices", json=registration("phone-1"))
    assert r.status_code == 401
    assert api.devices() == set()


# --- heartbeats --------------------------------------------------------------------------------


async def test_a_device_heartbeats_itself(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    r = await phone.http.post("/v1/devices/phone-1/heartbeat", json=BEAT)
    assert r.status_code == 200, r.text
    health = r.json()
    assert health["device_id"] == "phone-1"
    assert health["state"] == "passing"
    assert health["online"] is True
    device = api.coord.harvesting.list_devices()[0]
    assert (device.battery_percent, device.charging, device.thermal_celsius) == (70.0, True, 35.0)
    r = await phone.http.post("/v1/devices/phone-1/heartbeat", json={**BEAT, "thermal_celsius": 46})
    assert r.json()["state"] == "warning"
    assert r.json()["reasons"][0].startswith("thermal throttled")


async def test_a_device_cannot_speak_for_another(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    await api.register(api.bob, "laptop-1")
    health = api.coord.harvesting.monitor_device_health
    before = await health("laptop-1")
    for who in (phone, api.alice, api.bob, api.operator):
        r = await who.http.post("/v1/devices/laptop-1/heartbeat", json=BEAT)
        assert r.status_code == 403, (who.principal_id, r.text)
        assert r.json()["error"] == "forbidden"
    after = await health("laptop-1")
    assert after == before
    assert after.state.value == "unverified"
    [laptop] = api.coord.harvesting.list_devices(owner=api.bob.principal_id)
    assert laptop.battery_percent == 90.0
    # an unknown device is 404; a malformed heartbeat is 422 naming the field
    r = await phone.http.post("/v1/devices/ghost/heartbeat", json=BEAT)
    assert r.status_code == 404
    r = await phone.http.post("/v1/devices/phone-1/heartbeat", json={**BEAT, "battery_percent": -1})
    assert (r.status_code, r.json()["field"]) == (422, "battery_percent")
    r = await phone.http.post("/v1/devices/phone-1/heartbeat", json={**BEAT, "gps": "here"})
    assert (r.status_code, r.json()["field"]) == (422, "gps")
    assert (await health("phone-1")).state.value == "unverified"


# --- reading, listing, deregistering -----------------------------------------------------------


async def test_listing_shows_only_the_callers_devices(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    await api.register(api.alice, "tablet-1", region="us")
    await api.register(api.bob, "laptop-1")

    async def listed(who: Who, **params: Any) -> list[str]:
        r = await who.http.get("/v1/devices", params=params)
        assert r.status_code == 200, r.text
        return sorted(d["device_id"] for d in r.json())

    assert await listed(api.alice) == ["phone-1", "tablet-1"]
    assert await listed(api.alice, owner=api.bob.principal_id) == ["phone-1", "tablet-1"]
    assert await listed(api.alice, region="us") == ["tablet-1"]
    assert await listed(api.bob) == ["laptop-1"]
    assert await listed(phone) == []  # a device owns no devices
    assert await listed(api.operator) == ["laptop-1", "phone-1", "tablet-1"]
    assert await listed(api.operator, owner=api.bob.principal_id) == ["laptop-1"]
    assert await listed(api.operator, limit=1, offset=1) == ["tablet-1"]
    r = await api.operator.http.get("/v1/devices", params={"limit": 0})
    assert (r.status_code, r.json()["field"]) == (422, "limit")


async def test_other_principals_get_404_for_someone_elses_device(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    laptop = await api.register(api.bob, "laptop-1")
    for who in (api.alice, phone, api.operator):
        r = await who.http.get("/v1/devices/phone-1")
        assert r.status_code == 200, r.text
        assert r.json()["device"]["owner"] == api.alice.principal_id
        assert r.json()["health"]["state"] == "unverified"
        s = await who.http.get("/v1/devices/phone-1/suitability")
        assert s.status_code == 200
        assert s.json()["eligible"] is False
    for who in (api.bob, laptop):
        for path in ("/v1/devices/phone-1", "/v1/devices/phone-1/suitability"):
            r = await who.http.get(path)
            assert r.status_code == 404
            assert r.json()["error"] == "not_found"
        r = await who.http.delete("/v1/devices/phone-1")
        assert r.status_code == 404
    # indistinguishable from a device that does not exist
    missing = await api.bob.http.get("/v1/devices/ghost")
    hidden = await api.bob.http.get("/v1/devices/phone-1")
    assert missing.status_code == hidden.status_code == 404
    assert api.devices() == {"phone-1", "laptop-1"}


async def test_delete_deregisters_and_revokes_the_device_key(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    laptop = await api.register(api.bob, "laptop-1")
    assert (await phone.http.post("/v1/devices/phone-1/heartbeat", json=BEAT)).status_code == 200
    r = await phone.http.delete("/v1/devices/phone-1")
    assert r.status_code == 403  # a device cannot deregister itself; its owner does
    assert api.devices() == {"phone-1", "laptop-1"}
    r = await api.alice.http.delete("/v1/devices/phone-1")
    assert r.status_code == 204
    assert api.devices() == {"laptop-1"}
    r = await phone.http.post("/v1/devices/phone-1/heartbeat", json=BEAT)
    assert r.status_code == 401
    assert (await api.alice.http.get("/v1/devices/phone-1")).status_code == 404
    keys = await api.admin.list_keys(phone.principal_id)
    assert keys
    assert all(k.revoked_at is not None for k in keys)
    # the operator may deregister anyone's device
    r = await api.operator.http.delete("/v1/devices/laptop-1")
    assert r.status_code == 204
    assert (await laptop.http.get("/v1/whoami")).status_code == 401
    assert api.devices() == set()
    # and the id is free again
    await api.register(api.bob, "phone-1")


# --- the WebSocket channel, in process --------------------------------------------------------


class AsgiSocket:
    """A WebSocket client speaking ASGI straight to the app, on the test's own event loop."""

    def __init__(self, app: FastAPI, path: str, headers: dict[str, str]) -> None:
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "http_version": "1.1",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
            "subprotocols": [],
            "state": {},
        }
        self.task = asyncio.get_running_loop().create_task(
            app(scope, self._to_app.get, self._from_app.put)
        )

    async def _next(self) -> MutableMapping[str, Any]:
        get = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({get, self.task}, timeout=5, return_when="FIRST_COMPLETED")
        if get in done:
            return get.result()
        get.cancel()
        if self.task.done():
            self.task.result()  # the app failed: raise its error here
            raise AssertionError("the app ended the channel without a close frame")
        raise TimeoutError("no answer from the channel")

    async def handshake(self) -> MutableMapping[str, Any]:
        """``websocket.accept`` or ``websocket.close`` (with the refusal code)."""
        await self._to_app.put({"type": "websocket.connect"})
        return await self._next()

    async def send(self, frame: str | bytes) -> None:
        key = "text" if isinstance(frame, str) else "bytes"
        await self._to_app.put({"type": "websocket.receive", key: frame})

    async def receive(self) -> dict[str, Any]:
        message = await self._next()
        assert message["type"] == "websocket.send", message
        data: dict[str, Any] = json.loads(message["text"])
        return data

    async def close(self) -> None:
        await self._to_app.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, 5)


async def test_the_channel_answers_heartbeats_and_survives_bad_frames(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    ws = AsgiSocket(api.app, "/v1/devices/phone-1/channel", bearer(phone.key))
    assert (await ws.handshake())["type"] == "websocket.accept"
    assert api.coord.channels.is_connected("phone-1")
    await ws.send(json.dumps({"type": "heartbeat", **BEAT}))
    health = await ws.receive()
    assert health["type"] == "health"
    assert (health["device_id"], health["online"], health["state"]) == ("phone-1", True, "passing")
    bad_frames: list[str | bytes] = [
        json.dumps({"type": "heartbeat", **BEAT, "battery_percent": 150}),
        json.dumps({"type": "heartbeat", "charging": True}),
        json.dumps({"type": "heartbeat", **BEAT, "extra": 1}),
        json.dumps({"type": "dance"}),
        json.dumps([1, 2, 3]),
        json.dumps("heartbeat"),
        "this is not JSON",
        "",
        b"\x00\x01",
        b'{"type": "heartbeat"}',
    ]
    for frame in bad_frames:
        await ws.send(frame)
        error = await ws.receive()
        assert error["type"] == "error", (frame, error)
        assert error["error"] == "validation_failed", (frame, error)
    await ws.send(json.dumps({"type": "heartbeat", **BEAT, "thermal_celsius": 999}))
    assert (await ws.receive())["detail"].startswith("thermal_celsius")
    # still open, still working
    await ws.send(json.dumps({"type": "heartbeat", **BEAT, "battery_percent": 55.0}))
    assert (await ws.receive())["type"] == "health"
    [device] = api.coord.harvesting.list_devices()
    assert device.battery_percent == 55.0
    # the coordinator can push to the open channel
    assert await api.coord.channels.push("phone-1", {"type": "work", "task": "t1"})
    assert await ws.receive() == {"type": "work", "task": "t1"}
    await ws.close()
    assert not api.coord.channels.is_connected("phone-1")


async def test_the_channel_refuses_wrong_keys(api: Api) -> None:
    phone = await api.register(api.alice, "phone-1")
    tablet = await api.register(api.alice, "tablet-1")
    refusals = [
        ("phone-1", {}, 4401),
        ("phone-1", bearer("fc_0123456789abcdef_" + "x" * 43), 4401),
        ("phone-1", {"Authorization": phone.key}, 4401),  # not a bearer header
        ("phone-1", bearer(tablet.key), 4403),  # another device's key
        ("phone-1", bearer(api.alice.key), 4403),  # the owner is not the device
        ("phone-1", bearer(api.operator.key), 4403),
        ("ghost", bearer(phone.key), 4403),
    ]
    for device_id, headers, code in refusals:
        ws = AsgiSocket(api.app, f"/v1/devices/{device_id}/channel", headers)
        answer = await ws.handshake()
        assert answer["type"] == "websocket.close", (device_id, headers)
        assert answer["code"] == code, (device_id, headers, answer)
        await asyncio.wait_for(ws.task, 5)
    assert len(api.coord.channels) == 0
    health = await api.coord.harvesting.monitor_device_health("phone-1")
    assert health.state.value == "unverified"
    # a revoked device key is refused too
    assert (await api.alice.http.delete("/v1/devices/tablet-1")).status_code == 204
    ws = AsgiSocket(api.app, "/v1/devices/tablet-1/channel", bearer(tablet.key))
    assert (await ws.handshake())["code"] == 4401
    await asyncio.wait_for(ws.task, 5)


# --- the WebSocket channel, through a real `fogcoord serve` --------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A coordinator process on a free port: its URL and the operator key it printed."""
    server = start(tmp_path)
    try:
        yield server.url, server.key
    finally:
        finish(server.proc)


@pytest.mark.slow
async def test_the_channel_over_a_real_server(served: tuple[str, str]) -> None:
    url, operator_key = served
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        issued = await http.post(
            "/v1/keys", json={"kind": "requester", "name": "alice"}, headers=bearer(operator_key)
        )
        alice = bearer(issued.json()["key"])
        r = await http.post("/v1/devices", json=registration("phone-1"), headers=alice)
        assert r.status_code == 201, r.text
        device_key = r.json()["device_key"]
    channel = url.replace("http://", "ws://") + "/v1/devices/phone-1/channel"
    async with ws_connect(channel, additional_headers=bearer(device_key)) as ws:
        await ws.send(json.dumps({"type": "heartbeat", **BEAT}))
        health = json.loads(await ws.recv())
        assert (health["type"], health["device_id"], health["online"]) == (
            "health",
            "phone-1",
            True,
        )
        await ws.send("not JSON at all")
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(json.dumps({"type": "heartbeat", **BEAT, "battery_percent": 150}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error"
        assert "battery_percent" in error["detail"]
        await ws.send(json.dumps({"type": "heartbeat", **BEAT}))
        assert json.loads(await ws.recv())["type"] == "health"
    for headers in (bearer("fc_0123456789abcdef_" + "x" * 43), alice, {}):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(channel, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403
