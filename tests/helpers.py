"""Shared test scaffolding: a coordinator on a temporary data directory, an API client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from fogcoord.api.app import create_app
from fogcoord.client import FogClient
from fogcoord.config import FogConfig, parse_config
from fogcoord.coordinator import Coordinator


def make_config(data_dir: Path, **sections: dict[str, object]) -> FogConfig:
    data: dict[str, object] = {"server": {"data_dir": str(data_dir), "port": 0}}
    data.update(sections)
    return parse_config(data)


@asynccontextmanager
async def running_api(config: FogConfig) -> AsyncIterator[tuple[Coordinator, FogClient, str]]:
    """A started coordinator, an ASGI-transport client and the first operator key."""
    coord = Coordinator(config)
    await coord.start()
    try:
        app = create_app(coord, manage_lifecycle=False)
        bootstrap = coord.auth.bootstrap_key
        assert bootstrap is not None
        transport = httpx.ASGITransport(app=app)
        async with FogClient("http://test", bootstrap.key, transport=transport) as client:
            yield coord, client, bootstrap.key
    finally:
        await coord.stop()
