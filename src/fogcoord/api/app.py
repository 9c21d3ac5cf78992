"""The HTTP API: a FastAPI app factory over a coordinator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fogcoord import __version__
from fogcoord.api.errors import install_error_handlers
from fogcoord.api.routes import devices, keys, system, wallets
from fogcoord.coordinator import Coordinator

DESCRIPTION = """
fogcoord coordinates fog computing: devices contribute compute, requesters buy it in tokens,
and the coordinator prices, auctions, verifies and pays. Authenticate with an API key as
`Authorization: Bearer <key>` or `X-API-Key: <key>`; `/healthz` and `/readyz` are open.
"""


def create_app(coord: Coordinator, *, manage_lifecycle: bool = True) -> FastAPI:
    """The API for ``coord``; with ``manage_lifecycle`` the app starts and stops it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await coord.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await coord.stop(graceful=True)

    app = FastAPI(
        title="fogcoord",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.coordinator = coord
    install_error_handlers(app)
    app.include_router(system.router)
    app.include_router(keys.router)
    app.include_router(wallets.router)
    app.include_router(devices.router)
    return app
