"""The device's key pair, id and device key: made once, kept privately, reused."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fogcoord.agent.identity import (
    DeviceIdentity,
    FileIdentityStore,
    MemoryIdentityStore,
    device_id_for,
    registration_message,
    write_private,
)
from fogcoord.api.routes.devices import registration_message as server_message


def test_the_signed_message_is_the_one_the_coordinator_checks() -> None:
    assert registration_message("dev-1", "ab" * 32) == server_message("dev-1", "ab" * 32)


def test_generated_identity_signs_its_registration() -> None:
    identity = DeviceIdentity.generate("http://c")
    assert identity.device_id == device_id_for(identity.public_key)
    assert identity.device_id.startswith("dev-")
    assert len(identity.device_id) == 20
    assert not identity.registered
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(identity.public_key))
    signature = bytes.fromhex(identity.registration_signature())
    key.verify(signature, registration_message(identity.device_id, identity.public_key))


def test_two_identities_differ() -> None:
    assert DeviceIdentity.generate().device_id != DeviceIdentity.generate().device_id


def test_file_store_round_trip_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = FileIdentityStore(state)
    assert store.load() is None
    identity = DeviceIdentity.generate("http://c").with_key("fc_key", "http://c")
    store.save(identity)
    assert store.load() == identity
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert sorted(p.name for p in state.iterdir()) == ["identity.json"]  # no temp files left
    data = json.loads(store.path.read_text())
    assert data["device_id"] == identity.device_id
    assert data["device_key"] == "fc_key"


def test_saving_again_replaces_the_file(tmp_path: Path) -> None:
    store = FileIdentityStore(tmp_path)
    identity = DeviceIdentity.generate()
    store.save(identity)
    store.save(identity.with_key("k2"))
    loaded = store.load()
    assert loaded is not None
    assert loaded.device_key == "k2"
    assert loaded.public_key == identity.public_key


def test_a_corrupt_identity_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text('{"device_id": "x", "private_key": "00"}')
    with pytest.raises(ValueError, match="not a valid identity file"):
        FileIdentityStore(tmp_path).load()


def test_write_private_leaves_nothing_behind_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_private(tmp_path / "f.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_memory_store() -> None:
    store = MemoryIdentityStore()
    assert store.load() is None
    identity = DeviceIdentity.generate()
    store.save(identity)
    assert store.load() is identity
