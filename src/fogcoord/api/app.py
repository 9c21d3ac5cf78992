"""The HTTP API: a FastAPI app factory over a coordinator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from fogcoord import __version__
from fogcoord.announcer import AnnouncerLease, start_announcer
from fogcoord.api.errors import install_error_handlers
from fogcoord.api.routes import (
    dashboard,
    devices,
    jobs,
    keys,
    market,
    onion,
    privacy,
    stats,
    studies,
    system,
    wallets,
)
from fogcoord.coordinator import Coordinator

DESCRIPTION = """
fogcoord coordinates fog computing: devices contribute compute, requesters buy it in tokens,
and the coordinator prices, auctions, verifies and pays. Authenticate with an API key as
`Authorization: Bearer <key>` or `X-API-Key: <key>`; `/healthz` and `/readyz` are open.
"""


class _Announcing:
    """The app's hold on its coordinator's auction announcer, shared by lifespan and requests."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.lease: AnnouncerLease | None = None
        self._lock = asyncio.Lock()  # concurrent first requests take one lease between them

    async def start(self) -> None:
        async with self._lock:
            if self.lease is None and self.coord.marketplace.running:
                self.lease = await start_announcer(self.coord)

    async def stop(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            await lease.unsubscribe()


class _AnnounceOnFirstRequest:
    """Starts the announcer when no lifespan did (a coordinator started elsewhere and served
    without lifespan events): at the first request, so before any device channel opens."""

    def __init__(self, app: ASGIApp, announcing: _Announcing) -> None:
        self.app = app
        self.announcing = announcing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.announcing.lease is None and scope["type"] != "lifespan":
            await self.announcing.start()
        await self.app(scope, receive, send)


def create_app(coord: Coordinator, *, manage_lifecycle: bool = True) -> FastAPI:
    """The API for ``coord``; with ``manage_lifecycle`` the app starts and stops it."""

    announcing = _Announcing(coord)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await coord.start()
        await announcing.start()
        try:
            yield
        finally:
            await announcing.stop()
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
    app.add_middleware(_AnnounceOnFirstRequest, announcing=announcing)
    app.include_router(system.router)
    app.include_router(keys.router)
    app.include_router(wallets.router)
    app.include_router(devices.router)
    app.include_router(market.router)
    app.include_router(jobs.router)
    app.include_router(privacy.router)
    app.include_router(onion.router)
    app.include_router(stats.router)
    app.include_router(studies.router)
    app.include_router(dashboard.router)
    return app
