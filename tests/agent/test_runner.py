"""The agent loop against a real coordinator (HTTP and WebSocket) in the test's event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from fogcoord.agent.backoff import Backoff
from fogcoord.agent.device import DeviceSpec
from fogcoord.agent.handlers import Message
from fogcoord.agent.identity import FileIdentityStore, MemoryIdentityStore
from fogcoord.agent.runner import Agent, AgentError, channel_url
from fogcoord.agent.telemetry import FleetStats
from fogcoord.api.schemas import Heartbeat
from fogcoord.contracts.harvesting import DeviceHealthState
from tests.agent.conftest import LiveApi

SPEC = DeviceSpec(cpu_cores=4, gflops=25.0, ram_mb=8192, storage_gb=50.0, region="eu-west")


class FixedDevice:
    def __init__(self, battery: float = 90.0) -> None:
        self.battery = battery
        self.readings = 0

    def spec(self) -> DeviceSpec:
        return SPEC

    def reading(self) -> Heartbeat:
        self.readings += 1
        return Heartbeat(battery_percent=self.battery, charging=True, thermal_celsius=30.0)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _via(agent: Agent) -> str | None:
    return agent.via


def _agent(live: LiveApi, state: Path, *, owner: bool = True, **kwargs: Any) -> Agent:
    kwargs.setdefault("device", FixedDevice())
    kwargs.setdefault("rng", np.random.default_rng(0))
    return Agent(
        live.url,
        live.operator_key if owner else None,
        state,
        interval=kwargs.pop("interval", 0.05),
        **kwargs,
    )


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


def test_channel_url() -> None:
    assert channel_url("http://h:1/", "d") == "ws://h:1/v1/devices/d/channel"
    assert channel_url("https://h", "d") == "wss://h/v1/devices/d/channel"


async def test_registers_heartbeats_over_the_channel_and_stops_cleanly(
    live_api: LiveApi, tmp_path: Path
) -> None:
    agent = _agent(live_api, tmp_path / "state")
    async with running(agent) as task:
        await eventually(lambda: agent.heartbeats >= 3)
        assert agent.via == "channel"
        assert agent.registrations == 1
        assert agent.last_health is not None
        assert agent.last_health.state in (DeviceHealthState.PASSING, DeviceHealthState.WARNING)
        device_id = agent.device_id
        assert device_id is not None
        view = await live_api.operator.device(device_id)
        assert view.health.online
        assert view.device.owner == (await live_api.operator.whoami()).principal.principal_id
        assert view.device.gflops == 25.0
        assert live_api.coord.channels.is_connected(device_id)
    assert task.done()
    assert _via(agent) is None
    await eventually(lambda: not live_api.coord.channels.is_connected(device_id))
    assert agent.errors == 0


async def test_a_restarted_agent_reuses_its_registration(live_api: LiveApi, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = _agent(live_api, state)
    async with running(first):
        await eventually(lambda: first.heartbeats >= 1)
    again = _agent(live_api, state, owner=False)  # no owner key needed any more
    async with running(again):
        await eventually(lambda: again.heartbeats >= 2)
    assert again.registrations == 0
    assert again.device_id == first.device_id
    assert len(await live_api.operator.devices()) == 1


async def test_without_registration_or_owner_key_the_agent_says_so(
    live_api: LiveApi, tmp_path: Path
) -> None:
    agent = _agent(live_api, tmp_path / "state", owner=False)
    with pytest.raises(AgentError, match="not registered yet"):
        await asyncio.wait_for(agent.run(), 5)


async def test_falls_back_to_http_when_the_channel_is_refused(
    live_api: LiveApi, tmp_path: Path
) -> None:
    refused = live_api.url.replace("http://", "ws://") + "/v1/no-such-channel"
    agent = _agent(live_api, tmp_path / "state", channel=refused)
    async with running(agent):
        await eventually(lambda: agent.heartbeats >= 3)
        assert agent.via == "http"
        assert agent.device_id is not None
        view = await live_api.operator.device(agent.device_id)
        assert view.health.online
    assert agent.errors >= 1  # the failed channel attempts


async def test_a_rejected_device_registers_again_with_the_owner_key(
    live_api: LiveApi, tmp_path: Path
) -> None:
    agent = _agent(live_api, tmp_path / "state")
    async with running(agent):
        await eventually(lambda: agent.heartbeats >= 1)
        device_id = agent.device_id
        assert device_id is not None
        await live_api.operator.deregister_device(device_id)
        await eventually(lambda: agent.registrations == 2)
        await eventually(lambda: live_api.coord.channels.is_connected(device_id))
    assert agent.device_id == device_id  # same key pair, so the same id
    saved = FileIdentityStore(tmp_path / "state").load()
    assert saved is not None
    assert saved.registered


async def test_a_rejected_device_without_owner_key_stops_with_an_error(
    live_api: LiveApi, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = _agent(live_api, state)
    async with running(first):
        await eventually(lambda: first.heartbeats >= 1)
    assert first.device_id is not None
    await live_api.operator.deregister_device(first.device_id)
    again = _agent(live_api, state, owner=False)
    with pytest.raises(AgentError, match="no longer accepts"):
        await asyncio.wait_for(again.run(), 10)


async def test_registration_retries_while_the_coordinator_is_down(tmp_path: Path) -> None:
    stats = FleetStats()
    agent = Agent(
        "http://127.0.0.1:9",  # discard port: connection refused
        "fc_owner",
        tmp_path,
        device=FixedDevice(),
        identities=MemoryIdentityStore(),
        recorder=stats,
        rng=np.random.default_rng(1),
    )
    async with running(agent):
        await eventually(lambda: stats.errors["register"] >= 1)
    assert agent.registrations == 0


# --- a scripted channel, to see what the agent does with pushed messages -----------------------


@asynccontextmanager
async def scripted_channel(
    script: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[str]:
    async with serve(script, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/channel"


def _health(device_id: str = "d") -> str:
    return json.dumps(
        {
            "type": "health",
            "device_id": device_id,
            "state": "passing",
            "online": True,
            "last_seen": 1.0,
            "seconds_since_heartbeat": 0.0,
            "trust": 0.65,
            "reliability": 1.0,
            "reasons": [],
        }
    )


async def test_pushed_messages_go_to_handlers_and_unknown_ones_are_ignored(
    live_api: LiveApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fogcoord.agent")
    received: list[dict[str, Any]] = []

    async def script(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "mystery", "x": 1}))
        await ws.send(json.dumps({"type": "task", "task_id": "t-7"}))
        await ws.send("not json")
        async for raw in ws:
            message = json.loads(raw)
            received.append(message)
            if message["type"] == "heartbeat":
                await ws.send(_health())
            else:
                await ws.send(json.dumps({"type": "error", "error": "validation_failed"}))

    tasks: list[Message] = []

    async def on_task(message: Message) -> Message | None:
        tasks.append(message)
        return {"type": "task_result", "task_id": message["task_id"]}

    async with scripted_channel(script) as url:
        agent = _agent(live_api, tmp_path / "state", channel=url)
        agent.on("task", on_task)
        async with running(agent):
            await eventually(lambda: agent.heartbeats >= 3 and len(received) >= 4)
    assert tasks == [{"type": "task", "task_id": "t-7"}]
    assert {"type": "task_result", "task_id": "t-7"} in received
    assert "ignoring a pushed 'mystery' message" in caplog.text
    assert agent.reconnects == 0  # neither the unknown type nor the bad frame broke the channel


async def test_the_real_coordinator_can_push_to_the_agent(
    live_api: LiveApi, tmp_path: Path
) -> None:
    pushed: list[Message] = []

    async def on_task(message: Message) -> Message | None:
        pushed.append(message)
        return None

    agent = _agent(live_api, tmp_path / "state")
    agent.on("task", on_task)
    async with running(agent):
        await eventually(lambda: agent.heartbeats >= 1)
        assert agent.device_id is not None
        assert await live_api.coord.channels.push(agent.device_id, {"type": "task", "n": 1})
        await eventually(lambda: bool(pushed))
        heartbeats = agent.heartbeats
        await eventually(lambda: agent.heartbeats >= heartbeats + 2)
    assert pushed == [{"type": "task", "n": 1}]


async def test_an_unanswered_channel_is_dropped_and_reopened(
    live_api: LiveApi, tmp_path: Path
) -> None:
    connections: list[int] = []

    async def silent(ws: ServerConnection) -> None:
        connections.append(1)
        async for _ in ws:
            pass  # never answers

    async with scripted_channel(silent) as url:
        agent = _agent(
            live_api,
            tmp_path / "state",
            channel=url,
            reply_timeout=0.2,
            backoff=Backoff(base=0.05, cap=0.1, rng=np.random.default_rng(3)),
        )
        async with running(agent):
            await eventually(lambda: agent.reconnects >= 2 and len(connections) >= 3)
    assert agent.errors >= 2  # one unanswered heartbeat per dropped channel


async def test_heartbeat_errors_on_the_channel_are_counted(
    live_api: LiveApi, tmp_path: Path
) -> None:
    async def refuse(ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send(json.dumps({"type": "error", "error": "validation_failed"}))

    stats = FleetStats()
    async with scripted_channel(refuse) as url:
        agent = _agent(live_api, tmp_path / "state", channel=url, recorder=stats)
        async with running(agent):
            await eventually(lambda: stats.errors["heartbeat"] >= 3)
    assert agent.reconnects == 0
    assert stats.heartbeats == 0


async def test_identity_errors_on_the_channel_lead_to_registering_again(
    live_api: LiveApi, tmp_path: Path
) -> None:
    async def forget(ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send(json.dumps({"type": "error", "error": "not_found"}))

    async with scripted_channel(forget) as url:
        agent = _agent(live_api, tmp_path / "state", channel=url)
        async with running(agent):
            # the coordinator still knows the device, so the agent takes its id over again
            await eventually(lambda: agent.registrations >= 2)
