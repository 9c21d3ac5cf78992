"""Device persistence on SQLite or PostgreSQL, so a restart loses no device.

Registrations and deregistrations are written at once; heartbeat state (battery, thermal, last
seen, trust) is written behind, in batches, by the service's flush loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

devices_t = sa.Table(
    "harvest_devices",
    metadata,
    sa.Column("device_id", sa.String(96), primary_key=True),
    sa.Column("owner", sa.String(96), nullable=False),
    sa.Column("principal_id", sa.String(96), nullable=False),
    sa.Column("public_key", sa.String(128), nullable=False),
    sa.Column("platform", sa.String(64), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("network", sa.String(16), nullable=False),
    sa.Column("cpu_cores", sa.Integer, nullable=False),
    sa.Column("gflops", sa.Float, nullable=False),
    sa.Column("ram_mb", sa.Integer, nullable=False),
    sa.Column("storage_gb", sa.Float, nullable=False),
    sa.Column("bandwidth_mbps", sa.Float, nullable=False),
    sa.Column("battery", sa.Float, nullable=False),
    sa.Column("charging", sa.Boolean, nullable=False),
    sa.Column("thermal", sa.Float, nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("verified", sa.Boolean, nullable=False),
    sa.Column("trust", sa.Float, nullable=False),
    sa.Column("reliability", sa.Float, nullable=False),
    sa.Column("valid", sa.Float, nullable=False),
    sa.Column("invalid", sa.Float, nullable=False),
    sa.Index("ix_harvest_devices_owner", "owner"),
)

LIVE_FIELDS = (
    "battery",
    "charging",
    "thermal",
    "last_seen",
    "verified",
    "trust",
    "reliability",
    "valid",
    "invalid",
)


@dataclass
class DeviceRecord:
    device_id: str
    owner: str
    principal_id: str
    public_key: str
    platform: str
    region: str
    network: str
    cpu_cores: int
    gflops: float
    ram_mb: int
    storage_gb: float
    bandwidth_mbps: float
    battery: float
    charging: bool
    thermal: float
    registered_at: float
    last_seen: float
    verified: bool
    trust: float
    reliability: float
    valid: float
    invalid: float


class DeviceStore(Protocol):
    def load(self) -> list[DeviceRecord]: ...

    def insert(self, record: DeviceRecord) -> None: ...

    def delete(self, device_id: str) -> None: ...

    def update_live(self, records: Sequence[DeviceRecord]) -> None: ...

    def update_state(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows of ``(*LIVE_FIELDS, device_id)``: the write-behind path for heartbeat state."""
        ...


class SqlDeviceStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def load(self) -> list[DeviceRecord]:
        with self.engine.connect() as conn:
            return [DeviceRecord(**r._asdict()) for r in conn.execute(devices_t.select())]

    def insert(self, record: DeviceRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(devices_t.insert().values(**record.__dict__))

    def delete(self, device_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(devices_t.delete().where(devices_t.c.device_id == device_id))

    def update_state(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        # Plain DB-API executemany: this runs for every heartbeating device every few seconds,
        # and per-row statement processing would hold the interpreter lock for most of it.
        marker = "%s" if self.engine.dialect.name == "postgresql" else "?"
        sets = ", ".join(f"{f} = {marker}" for f in LIVE_FIELDS)
        sql = f"UPDATE harvest_devices SET {sets} WHERE device_id = {marker}"
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql, list(rows))

    def update_live(self, records: Sequence[DeviceRecord]) -> None:
        self.update_state([(*(getattr(r, f) for f in LIVE_FIELDS), r.device_id) for r in records])
