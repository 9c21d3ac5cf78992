from __future__ import annotations

from pathlib import Path

import pytest

from fogcoord.auth import keys
from fogcoord.auth.models import PrincipalKind, Scope
from fogcoord.auth.service import AuthService
from fogcoord.auth.store import CACHE_TTL_S, KeyStore
from fogcoord.clock import FakeClock
from fogcoord.contracts.errors import NotFound, Unauthenticated, ValidationFailed
from fogcoord.storage.engine import create_engine
from fogcoord.storage.service import StorageService


def store_at(path: Path, clock: FakeClock) -> KeyStore:
    return KeyStore(create_engine(f"sqlite:///{path / 'auth.db'}"), clock)


def test_keys_are_stored_hashed_and_survive_a_restart(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    store = store_at(tmp_path, fake_clock)
    alice = store.create_principal(PrincipalKind.REQUESTER, "alice")
    issued = store.issue_key(alice.principal_id)
    raw = (tmp_path / "auth.db").read_bytes()
    assert issued.key.encode() not in raw
    reopened = store_at(tmp_path, fake_clock)
    who = reopened.authenticate(issued.key)
    assert who.principal == alice
    assert who.allows(Scope.JOBS_WRITE)
    assert not who.allows(Scope.ADMIN)


def test_a_key_with_the_right_id_but_wrong_secret_fails(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    store = store_at(tmp_path, fake_clock)
    principal = store.create_principal(PrincipalKind.DEVICE, "phone")
    issued = store.issue_key(principal.principal_id)
    forged = issued.key[:-4] + ("AAAA" if not issued.key.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthenticated):
        store.authenticate(forged)
    store.authenticate(issued.key)
    with pytest.raises(Unauthenticated):
        store.authenticate(forged)  # the cached verification still checks the secret


def test_revocation_in_another_process_is_seen_after_the_cache_ttl(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    here = store_at(tmp_path, fake_clock)
    there = store_at(tmp_path, fake_clock)
    principal = here.create_principal(PrincipalKind.REQUESTER, "r")
    issued = here.issue_key(principal.principal_id)
    here.authenticate(issued.key)
    there.revoke(issued.info.key_id)
    with pytest.raises(Unauthenticated):
        there.authenticate(issued.key)
    fake_clock.advance(CACHE_TTL_S + 0.1)
    with pytest.raises(Unauthenticated):
        here.authenticate(issued.key)


def test_bad_names_scopes_and_unknowns(tmp_path: Path, fake_clock: FakeClock) -> None:
    store = store_at(tmp_path, fake_clock)
    with pytest.raises(ValidationFailed):
        store.create_principal(PrincipalKind.REQUESTER, "  ")
    principal = store.create_principal(PrincipalKind.REQUESTER, "r")
    with pytest.raises(ValidationFailed):
        store.issue_key(principal.principal_id, [])
    with pytest.raises(ValidationFailed):
        store.issue_key(principal.principal_id, key="short")
    with pytest.raises(NotFound):
        store.issue_key("req_missing")
    with pytest.raises(NotFound):
        store.revoke("0123456789abcdef")
    assert store.list_keys() == []


def test_generated_keys_are_well_formed_and_distinct() -> None:
    generated = {keys.generate()[1] for _ in range(200)}
    assert len(generated) == 200
    assert all(keys.well_formed(k) for k in generated)
    assert not keys.well_formed("fc_xyz_abc")


async def test_bootstrap_creates_one_operator_once(tmp_path: Path, fake_clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    storage = StorageService(url, clock=fake_clock)
    await storage.start()
    first = AuthService(storage, clock=fake_clock)
    await first.start()
    assert first.bootstrap_key is not None
    assert first.authenticate(first.bootstrap_key.key).allows(Scope.ADMIN)
    second = AuthService(storage, clock=fake_clock)
    await second.start()
    assert second.bootstrap_key is None
    await storage.stop()


async def test_configured_operator_key_is_used(tmp_path: Path, fake_clock: FakeClock) -> None:
    _, chosen = keys.generate()
    storage = StorageService(f"sqlite:///{tmp_path / 'db.sqlite'}", clock=fake_clock)
    await storage.start()
    auth = AuthService(storage, operator_key=chosen, clock=fake_clock)
    await auth.start()
    assert auth.bootstrap_key is None
    assert auth.authenticate(chosen).principal.kind is PrincipalKind.OPERATOR
    await storage.stop()
