"""The storage database as a lifecycle service: one engine, its health, its disposal."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.lifecycle import ServiceBase
from fogcoord.storage.engine import create_engine


class StorageService(ServiceBase):
    """Owns the engine every store uses; healthy when a trivial query answers."""

    service_type = "storage"

    def __init__(self, url: str, *, schema: str | None = None, clock: Clock | None = None) -> None:
        super().__init__("storage", clock=clock)
        self.url = url
        self.schema = schema
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.url, schema=self.schema)
        return self._engine

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    async def on_start(self) -> None:
        await asyncio.to_thread(self._ping)

    async def on_stop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    async def check_health(self) -> HealthStatus:
        try:
            await asyncio.to_thread(self._ping)
        except Exception as exc:
            return HealthStatus.critical(f"{self.backend} unreachable: {type(exc).__name__}")
        return HealthStatus.passing(f"{self.backend} answers")
