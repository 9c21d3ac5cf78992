"""The coordinator on the distributed stack: NATS event bus and PostgreSQL storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from fogcoord.contracts.events import ServiceStateChanged
from fogcoord.contracts.lifecycle import HealthState
from fogcoord.coordinator import Coordinator
from fogcoord.orchestration.bus.nats import NatsEventBus
from fogcoord.storage.engine import drop_schema
from tests.helpers import make_config
from tests.services import unique

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def test_coordinator_runs_on_nats_and_postgres(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    prefix = unique("fogit")
    schema = unique("fogit")
    config = make_config(
        tmp_path, bus={"url": nats_url, "subject_prefix": prefix}, storage={"url": pg_url}
    )
    coord = Coordinator(config, db_schema=schema)
    seen: list[ServiceStateChanged] = []

    async def record(event: ServiceStateChanged) -> None:
        seen.append(event)

    try:
        await coord.bus.start()
        await coord.bus.subscribe(ServiceStateChanged, record, name="watcher")
        await coord.start()
        health = await coord.orchestration.health_check_all_services()
        assert {k: v.state for k, v in health.items()} == {
            "storage": HealthState.PASSING,
            "auth": HealthState.PASSING,
            "tokenomics": HealthState.PASSING,
            "harvesting": HealthState.PASSING,
            "marketplace": HealthState.PASSING,
            "privacy": HealthState.PASSING,
            "jobs": HealthState.PASSING,
            "stats": HealthState.PASSING,
            "studies": HealthState.PASSING,
        }
        assert coord.storage.backend == "postgresql"
        bootstrap = coord.auth.bootstrap_key
        assert bootstrap is not None
        assert coord.auth.authenticate(bootstrap.key).principal.kind.value == "operator"
        assert await coord.bus.drain(5)
        states = {(e.service_id, e.state) for e in seen}
        assert {("storage", "running"), ("auth", "running")} <= states
    finally:
        await coord.stop()
        bus = coord.bus
        assert isinstance(bus, NatsEventBus)
        await bus.delete_stream()
        drop_schema(pg_url, schema)
