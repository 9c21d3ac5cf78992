"""A real coordinator (uvicorn on a free port) inside the test's event loop, for agent tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from fogcoord.api.app import create_app
from fogcoord.client import FogClient
from fogcoord.coordinator import Coordinator
from tests.helpers import make_config


@dataclass
class LiveApi:
    url: str
    operator_key: str
    coord: Coordinator
    operator: FogClient


class _QuietServer(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # the test runner owns signals
        yield


@pytest.fixture
async def live_api(tmp_path: Path) -> AsyncIterator[LiveApi]:
    coord = Coordinator(make_config(tmp_path / "data"))
    await coord.start()
    app = create_app(coord, manage_lifecycle=False)
    server = _QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = int(server.servers[0].sockets[0].getsockname()[1])
        url = f"http://127.0.0.1:{port}"
        bootstrap = coord.auth.bootstrap_key
        assert bootstrap is not None
        async with FogClient(url, bootstrap.key) as operator:
            yield LiveApi(url, bootstrap.key, coord, operator)
    finally:
        server.should_exit = True
        await task
        await coord.stop()
