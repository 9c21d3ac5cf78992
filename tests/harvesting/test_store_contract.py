"""One contract, both backends: SqlDeviceStore on SQLite (a temp file) and PostgreSQL (a schema
of its own per test, dropped afterwards)."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fogcoord.harvesting.store import LIVE_FIELDS, DeviceRecord, SqlDeviceStore


@pytest.fixture
def engine(backend_engine: Engine) -> Engine:
    return backend_engine


@pytest.fixture
def store(engine: Engine) -> SqlDeviceStore:
    return SqlDeviceStore(engine)


def record(device_id: str, **over: object) -> DeviceRecord:
    base = DeviceRecord(
        device_id=device_id,
        owner="req_alice",
        principal_id=f"dev_{device_id}",
        public_key="0f" * 32,
        platform="linux",
        region="eu",
        network="wifi",
        cpu_cores=4,
        gflops=12.25,
        ram_mb=4096,
        storage_gb=31.5,
        bandwidth_mbps=100.0,
        battery=80.0,
        charging=False,
        thermal=30.5,
        registered_at=1_700_000_000.25,
        last_seen=0.0,
        verified=False,
        trust=0.65,
        reliability=1.0,
        valid=0.0,
        invalid=0.0,
    )
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def loaded(store: SqlDeviceStore) -> dict[str, DeviceRecord]:
    return {r.device_id: r for r in store.load()}


def test_empty_store_loads_nothing(store: SqlDeviceStore) -> None:
    assert store.load() == []


def test_insert_round_trips_every_field(store: SqlDeviceStore) -> None:
    a = record("a")
    b = record("b", owner="req_bob", charging=True, verified=True, network="ethernet", region="")
    store.insert(a)
    store.insert(b)
    got = loaded(store)
    assert got == {"a": a, "b": b}
    assert isinstance(got["b"].charging, bool)
    assert isinstance(got["a"].cpu_cores, int)


def test_duplicate_insert_is_refused(store: SqlDeviceStore) -> None:
    store.insert(record("a"))
    with pytest.raises(sa.exc.IntegrityError):
        store.insert(record("a", owner="req_mallory"))
    assert loaded(store)["a"].owner == "req_alice"


def test_delete_removes_only_that_device(store: SqlDeviceStore) -> None:
    store.insert(record("a"))
    store.insert(record("b"))
    store.delete("a")
    store.delete("never-there")
    assert set(loaded(store)) == {"b"}
    store.insert(record("a", owner="req_carol"))
    assert loaded(store)["a"].owner == "req_carol"


def test_update_live_writes_live_fields_only(store: SqlDeviceStore) -> None:
    store.insert(record("a"))
    store.insert(record("b"))
    live = {
        "battery": 12.5,
        "charging": True,
        "thermal": 44.25,
        "last_seen": 1_700_000_123.5,
        "verified": True,
        "trust": 0.325,
        "reliability": 0.5,
        "valid": 1.0,
        "invalid": 0.98,
    }
    assert set(live) == set(LIVE_FIELDS)
    changed = record(
        "a", owner="req_mallory", cpu_cores=64, region="elsewhere", public_key="ee" * 32, **live
    )
    store.update_live([changed, record("ghost", **live)])
    got = loaded(store)
    assert got["a"] == record("a", **live), "identity and capabilities are not live state"
    assert got["b"] == record("b")
    assert "ghost" not in got
    store.update_live([])
    assert loaded(store) == got


def test_many_updates_in_one_batch(store: SqlDeviceStore) -> None:
    for i in range(50):
        store.insert(record(f"d{i}"))
    store.update_live([record(f"d{i}", battery=float(i), verified=True) for i in range(50)])
    got = loaded(store)
    assert all(got[f"d{i}"].battery == float(i) and got[f"d{i}"].verified for i in range(50))


def test_a_second_store_on_the_same_database_sees_the_devices(engine: Engine) -> None:
    first = SqlDeviceStore(engine)
    first.insert(record("a"))
    second = SqlDeviceStore(engine)  # create_all again: no error, nothing lost
    assert loaded(second) == {"a": record("a")}
