"""Hidden-service descriptors, their revision counters and a directory's descriptor store."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from fogcoord.clock import FakeClock
from fogcoord.onion.descriptor import (
    DEFAULT_LIFETIME_MINUTES,
    MAX_DESCRIPTOR_BYTES,
    MAX_FUTURE_SKEW_S,
    MAX_INTRO_POINTS,
    MAX_REVISION,
    Descriptor,
    DescriptorError,
    DescriptorStore,
    DescriptorVerificationError,
    IntroductionPoint,
    RevisionCounter,
    SigningKeyCert,
    StaleRevisionError,
    public_bytes,
)
from fogcoord.onion.hsaddr import OnionAddressError, onion_address
from fogcoord.storage.engine import create_engine

NOW = 1_700_000_000


def x25519_public() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def intro_point(n: int = 0) -> IntroductionPoint:
    return IntroductionPoint(
        relay_id=f"relay-{n}",
        relay_address=f"10.0.0.{n + 1}",
        relay_port=9000 + n,
        onion_key=x25519_public(),
        auth_key=public_bytes(Ed25519PrivateKey.generate()),
        enc_key=x25519_public(),
    )


class Service:
    """A service identity with its current descriptor signing key."""

    def __init__(self) -> None:
        self.identity = Ed25519PrivateKey.generate()
        self.signing = Ed25519PrivateKey.generate()
        self.address = onion_address(public_bytes(self.identity))

    def descriptor(
        self,
        revision: int = 0,
        *,
        created_at: float = NOW,
        intros: Sequence[IntroductionPoint] | None = None,
        lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES,
        cert_expires_at: int | None = None,
    ) -> Descriptor:
        return Descriptor.sign(
            self.identity,
            self.signing,
            revision_counter=revision,
            introduction_points=(intro_point(0), intro_point(1)) if intros is None else intros,
            created_at=created_at,
            lifetime_minutes=lifetime_minutes,
            cert_expires_at=cert_expires_at,
        )


@pytest.fixture
def service() -> Service:
    return Service()


# --- signing and verification ------------------------------------------------------------------


def test_a_signed_descriptor_verifies_for_its_address(service: Service) -> None:
    desc = service.descriptor(3)
    desc.verify(service.address, now=NOW + 60)
    desc.verify(service.address.removesuffix(".onion"), now=NOW + 60)
    assert desc.address == service.address
    assert desc.service_public_key == public_bytes(service.identity)
    assert desc.signing_public_key == public_bytes(service.signing)
    assert desc.revision_counter == 3
    assert desc.expires_at == NOW + DEFAULT_LIFETIME_MINUTES * 60
    assert desc.signing_key_cert.expires_at == desc.expires_at


def test_another_services_address_is_refused(service: Service) -> None:
    other = Service()
    with pytest.raises(DescriptorVerificationError, match="certified by"):
        service.descriptor().verify(other.address, now=NOW)


def test_a_malformed_address_is_a_verification_failure(service: Service) -> None:
    with pytest.raises(DescriptorVerificationError, match="bad onion address"):
        service.descriptor().verify("nope.onion", now=NOW)


def test_a_certificate_from_an_impostor_is_refused(service: Service) -> None:
    # The impostor claims the service's key in the certificate but signs it with its own.
    impostor = Ed25519PrivateKey.generate()
    honest = service.descriptor()
    forged_cert = dataclasses.replace(
        SigningKeyCert.issue(impostor, public_bytes(service.signing), honest.expires_at),
        service_public_key=public_bytes(service.identity),
    )
    forged = Descriptor.sign(impostor, service.signing, revision_counter=1, created_at=NOW)
    forged = dataclasses.replace(forged, signing_key_cert=forged_cert)
    with pytest.raises(DescriptorVerificationError, match="certificate's signature"):
        forged.verify(service.address, now=NOW)


def test_a_signing_key_the_service_did_not_certify_is_refused(service: Service) -> None:
    rogue = Ed25519PrivateKey.generate()
    desc = service.descriptor()
    # Keep the genuine certificate, but sign the body with a key it does not name.
    resigned = Descriptor.sign(
        service.identity, rogue, revision_counter=0, created_at=NOW, introduction_points=()
    )
    swapped = dataclasses.replace(resigned, signing_key_cert=desc.signing_key_cert)
    with pytest.raises(DescriptorVerificationError, match="descriptor signature"):
        swapped.verify(service.address, now=NOW)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: dataclasses.replace(d, revision_counter=99),
        lambda d: dataclasses.replace(d, created_at=NOW + 1),
        lambda d: dataclasses.replace(d, lifetime_minutes=720),
        lambda d: dataclasses.replace(d, introduction_points=()),
        lambda d: dataclasses.replace(d, introduction_points=d.introduction_points[::-1]),
        lambda d: dataclasses.replace(d, signature=bytes(64)),
    ],
)
def test_any_change_to_a_signed_field_breaks_the_signature(
    service: Service, change: Callable[[Descriptor], Descriptor]
) -> None:
    tampered = change(service.descriptor())
    with pytest.raises(DescriptorVerificationError, match="descriptor signature"):
        tampered.verify(service.address, now=NOW + 2)


def test_expiry(service: Service) -> None:
    desc = service.descriptor(lifetime_minutes=30, cert_expires_at=NOW + 7200)
    desc.verify(service.address, now=NOW + 30 * 60 - 1)
    with pytest.raises(DescriptorVerificationError, match="descriptor expired"):
        desc.verify(service.address, now=NOW + 30 * 60)


def test_an_expired_certificate_is_refused(service: Service) -> None:
    desc = service.descriptor(cert_expires_at=NOW + 10)
    desc.verify(service.address, now=NOW + 9)
    with pytest.raises(DescriptorVerificationError, match="certificate expired"):
        desc.verify(service.address, now=NOW + 10)


def test_a_descriptor_from_the_future_is_refused(service: Service) -> None:
    desc = service.descriptor(created_at=NOW + MAX_FUTURE_SKEW_S + 1)
    with pytest.raises(DescriptorVerificationError, match="future"):
        desc.verify(service.address, now=NOW)
    service.descriptor(created_at=NOW + MAX_FUTURE_SKEW_S).verify(service.address, now=NOW)


def test_verify_defaults_to_the_system_clock(service: Service) -> None:
    Descriptor.sign(service.identity, service.signing, revision_counter=0).verify(service.address)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("relay_id", "has space", "relay id"),
        ("relay_id", "", "relay id"),
        ("relay_address", "x" * 256, "relay address"),
        ("relay_port", 0, "relay port"),
        ("relay_port", 65536, "relay port"),
        ("onion_key", b"short", "onion key"),
        ("auth_key", bytes(33), "auth key"),
        ("enc_key", b"", "encryption key"),
    ],
)
def test_introduction_point_validation(field: str, value: Any, match: str) -> None:
    with pytest.raises(DescriptorError, match=match):
        dataclasses.replace(intro_point(), **{field: value})


@pytest.mark.parametrize(("revision", "match"), [(-1, "revision"), (MAX_REVISION + 1, "revision")])
def test_revision_counter_range(service: Service, revision: int, match: str) -> None:
    with pytest.raises(DescriptorError, match=match):
        service.descriptor(revision)


@pytest.mark.parametrize("lifetime", [0, 29, 721])
def test_lifetime_range(service: Service, lifetime: int) -> None:
    with pytest.raises(DescriptorError, match="lifetime"):
        service.descriptor(lifetime_minutes=lifetime)


def test_certificate_expiry_range(service: Service) -> None:
    with pytest.raises(DescriptorError, match="certificate expiry"):
        service.descriptor(cert_expires_at=-1)
    with pytest.raises(DescriptorError, match="creation time"):
        service.descriptor(created_at=-10_000_000, cert_expires_at=NOW)


def test_at_most_twenty_introduction_points(service: Service) -> None:
    with pytest.raises(DescriptorError, match="at most 20"):
        service.descriptor(intros=[intro_point(i) for i in range(MAX_INTRO_POINTS + 1)])


def test_limits_are_accepted(service: Service) -> None:
    intros = [intro_point(i) for i in range(MAX_INTRO_POINTS)]
    desc = service.descriptor(MAX_REVISION, intros=intros, lifetime_minutes=720)
    assert Descriptor.from_bytes(desc.to_bytes()) == desc
    assert len(desc.to_bytes()) < MAX_DESCRIPTOR_BYTES
    service.descriptor(0, intros=(), lifetime_minutes=30).verify(service.address, now=NOW)


# --- encoding ----------------------------------------------------------------------------------


def test_wire_form_round_trips_and_is_deterministic(service: Service) -> None:
    desc = service.descriptor(7)
    wire = desc.to_bytes()
    assert wire == desc.to_bytes()
    parsed = Descriptor.from_bytes(wire)
    assert parsed == desc
    parsed.verify(service.address, now=NOW)
    text = wire.decode()
    assert text.startswith("hs-descriptor 3\ndescriptor-lifetime 180\n")
    assert "\nrevision-counter 7\n" in text
    assert text.count("introduction-point ") == 2
    assert text.endswith("\n")
    assert text.splitlines()[-1].startswith("signature ")
    assert wire == desc.body() + text.splitlines()[-1].encode() + b"\n"


def test_certificate_round_trips(service: Service) -> None:
    cert = service.descriptor().signing_key_cert
    assert SigningKeyCert.from_bytes(cert.to_bytes()) == cert
    with pytest.raises(DescriptorError, match="138 bytes"):
        SigningKeyCert.from_bytes(cert.to_bytes()[:-1])
    with pytest.raises(DescriptorError, match="version"):
        SigningKeyCert.from_bytes(b"\x02" + cert.to_bytes()[1:])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("revision-counter 0\n", "revision-counter 00\n"),
        ("revision-counter 0\n", "revision-counter  0\n"),
        ("revision-counter 0\n", "revision-counter +0\n"),
        ("revision-counter 0\n", "revision-counter -1\n"),
        ("hs-descriptor 3\n", "hs-descriptor 2\n"),
        ("hs-descriptor 3\n", ""),
        ("revision-counter 0\n", "revision-counter 0\nunknown-keyword x\n"),
        ("onion-key ntor", "onion-key rsa"),
        ("descriptor-lifetime 180\n", "descriptor-lifetime 1\n"),
    ],
)
def test_non_canonical_or_malformed_text_is_refused(service: Service, old: str, new: str) -> None:
    wire = service.descriptor(0).to_bytes().decode()
    assert old in wire
    with pytest.raises(DescriptorError):
        Descriptor.from_bytes(wire.replace(old, new, 1).encode())


@pytest.mark.parametrize(
    "mangle",
    [
        lambda w: w[:-1],
        lambda w: w + b"\n",
        lambda w: w + b"trailing\n",
        lambda w: w.replace(b"\n", b"\r\n"),
        lambda w: w + b"\xff",
        lambda w: b"",
        lambda w: w + b"x" * MAX_DESCRIPTOR_BYTES,
    ],
)
def test_damaged_wire_forms_are_refused(service: Service, mangle: Callable[[bytes], bytes]) -> None:
    wire = service.descriptor(0).to_bytes()
    with pytest.raises(DescriptorError):
        Descriptor.from_bytes(mangle(wire))


def test_every_single_byte_change_is_caught(service: Service) -> None:
    desc = service.descriptor(5, intros=(intro_point(0),))
    wire = desc.to_bytes()
    for i in range(len(wire)):
        for delta in (1, 0x20):
            mutated = bytearray(wire)
            mutated[i] ^= delta
            with pytest.raises(DescriptorError):
                Descriptor.from_bytes(bytes(mutated)).verify(service.address, now=NOW)


tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)
intro_points = st.builds(
    IntroductionPoint,
    relay_id=tokens,
    relay_address=tokens,
    relay_port=st.integers(1, 65535),
    onion_key=st.binary(min_size=32, max_size=32),
    auth_key=st.binary(min_size=32, max_size=32),
    enc_key=st.binary(min_size=32, max_size=32),
)
SERVICE = Service()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(intro_points, max_size=4),
    st.integers(0, MAX_REVISION),
    st.integers(0, 2**40),
    st.integers(30, 720),
)
def test_round_trip_property(
    intros: list[IntroductionPoint], revision: int, created: int, lifetime: int
) -> None:
    desc = SERVICE.descriptor(
        revision, created_at=created, intros=intros, lifetime_minutes=lifetime
    )
    parsed = Descriptor.from_bytes(desc.to_bytes())
    assert parsed == desc
    parsed.verify(SERVICE.address, now=created)


# --- revision counters -------------------------------------------------------------------------


def test_revision_counter_increments_per_service(backend_engine: Engine) -> None:
    counter = RevisionCounter(backend_engine)
    a, b = Service().address, Service().address
    assert counter.current(a) is None
    assert [counter.next(a) for _ in range(3)] == [0, 1, 2]
    assert counter.next(b) == 0
    assert counter.current(a) == 2
    assert counter.current(b) == 0


def test_revision_counter_uses_the_canonical_address(backend_engine: Engine) -> None:
    counter = RevisionCounter(backend_engine)
    address = Service().address
    assert counter.next(address) == 0
    assert counter.next(address.removesuffix(".onion")) == 1
    with backend_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT address, counter FROM onion_hs_revisions")).all()
    assert [tuple(r) for r in rows] == [(address, 1)]


def test_revision_counter_refuses_bad_addresses(backend_engine: Engine) -> None:
    counter = RevisionCounter(backend_engine)
    with pytest.raises(OnionAddressError):
        counter.next("example.onion")


def test_revision_counter_survives_a_restart(backend_engine: Engine) -> None:
    address = Service().address
    assert RevisionCounter(backend_engine).next(address) == 0
    assert RevisionCounter(backend_engine).next(address) == 1
    backend_engine.dispose()
    assert RevisionCounter(backend_engine).next(address) == 2


def test_revision_counter_survives_a_new_process_on_sqlite(tmp_path: Path) -> None:
    address = Service().address
    url = f"sqlite:///{tmp_path / 'hs.db'}"
    first = create_engine(url)
    try:
        assert [RevisionCounter(first).next(address) for _ in range(2)] == [0, 1]
    finally:
        first.dispose()
    second = create_engine(url)
    try:
        assert RevisionCounter(second).next(address) == 2
    finally:
        second.dispose()


def test_concurrent_callers_get_distinct_values(backend_engine: Engine) -> None:
    address = Service().address
    counters = [RevisionCounter(backend_engine) for _ in range(4)]
    start = threading.Barrier(8)

    def draw(worker: int) -> list[int]:
        start.wait()
        return [counters[worker % 4].next(address) for _ in range(25)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(draw, range(8)))
    values = [v for r in results for v in r]
    assert sorted(values) == list(range(200))
    for r in results:
        assert r == sorted(r)


# --- the directory's store ---------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0, wall_offset=float(NOW))


@pytest.fixture
def store(clock: FakeClock) -> DescriptorStore:
    return DescriptorStore(clock)


def test_store_keeps_the_newest_descriptor(service: Service, store: DescriptorStore) -> None:
    first = service.descriptor(1)
    assert store.put(service.address, first) is first
    assert store.get(service.address) == first
    second = service.descriptor(2)
    store.put(service.address, second)
    assert store.get(service.address) == second
    assert store.get(service.address.removesuffix(".onion")) == second
    assert store.highest_revision(service.address) == 2
    assert len(store) == 1


@pytest.mark.parametrize("revision", [4, 3, 0])
def test_store_refuses_a_revision_that_is_not_higher(
    service: Service, store: DescriptorStore, revision: int
) -> None:
    current = service.descriptor(4)
    store.put(service.address, current)
    with pytest.raises(StaleRevisionError, match="not above 4"):
        store.put(service.address, service.descriptor(revision))
    assert store.get(service.address) == current


def test_store_refuses_a_descriptor_that_fails_verification(
    service: Service, store: DescriptorStore
) -> None:
    current = service.descriptor(1)
    store.put(service.address, current)
    forged = dataclasses.replace(service.descriptor(2), revision_counter=9)
    with pytest.raises(DescriptorVerificationError):
        store.put(service.address, forged)
    with pytest.raises(DescriptorVerificationError, match="certified by"):
        store.put(service.address, Service().descriptor(10))
    with pytest.raises(DescriptorVerificationError, match="bad onion address"):
        store.put("bogus.onion", service.descriptor(11))
    assert store.get(service.address) == current
    assert store.highest_revision(service.address) == 1
    store.put(service.address, service.descriptor(2))


def test_store_accepts_wire_bytes(service: Service, store: DescriptorStore) -> None:
    desc = service.descriptor(1)
    assert store.put(service.address, desc.to_bytes()) == desc
    with pytest.raises(DescriptorError):
        store.put(service.address, b"hs-descriptor 3\n")


def test_store_drops_expired_descriptors_but_remembers_their_revision(
    service: Service, store: DescriptorStore, clock: FakeClock
) -> None:
    desc = service.descriptor(5, lifetime_minutes=30)
    store.put(service.address, desc)
    other = Service()
    store.put(other.address, other.descriptor(0, lifetime_minutes=720))
    clock.advance(30 * 60)
    assert store.prune() == 1
    assert len(store) == 1
    assert store.get(service.address) is None
    assert store.highest_revision(service.address) == 5
    # A replay of an older descriptor stays refused after the newer one expired.
    with pytest.raises(StaleRevisionError):
        store.put(service.address, service.descriptor(4, created_at=clock.time()))
    store.put(service.address, service.descriptor(6, created_at=clock.time()))
    assert store.get(service.address) is not None


def test_store_get_notices_expiry_without_prune(
    service: Service, store: DescriptorStore, clock: FakeClock
) -> None:
    store.put(service.address, service.descriptor(0, lifetime_minutes=30))
    clock.advance(30 * 60 - 1)
    assert store.get(service.address) is not None
    clock.advance(1)
    assert store.get(service.address) is None
    assert len(store) == 0


def test_store_get_of_an_unknown_or_malformed_address(store: DescriptorStore) -> None:
    assert store.get(Service().address) is None
    assert store.get("not an address") is None
    assert store.highest_revision(Service().address) is None


def test_store_refuses_an_expired_upload(service: Service, store: DescriptorStore) -> None:
    with pytest.raises(DescriptorVerificationError, match="expired"):
        store.put(service.address, service.descriptor(0, created_at=NOW - 181 * 60))


def test_concurrent_uploads_keep_the_highest(service: Service, store: DescriptorStore) -> None:
    descriptors = [service.descriptor(r) for r in range(40)]

    def upload(desc: Descriptor) -> bool:
        try:
            store.put(service.address, desc)
        except StaleRevisionError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = list(pool.map(upload, descriptors))
    assert accepted[-1]
    assert store.highest_revision(service.address) == 39
    assert store.get(service.address) == descriptors[-1]


@pytest.fixture
def publisher(backend_engine: Engine) -> RevisionCounter:
    return RevisionCounter(backend_engine)


def test_publishing_with_persisted_counters_across_a_restart(
    backend_engine: Engine, publisher: RevisionCounter, service: Service, store: DescriptorStore
) -> None:
    for _ in range(3):
        store.put(service.address, service.descriptor(publisher.next(service.address)))
    backend_engine.dispose()
    restarted = RevisionCounter(backend_engine)
    desc = service.descriptor(restarted.next(service.address))
    assert desc.revision_counter == 3
    store.put(service.address, desc)
    assert store.get(service.address) == desc
