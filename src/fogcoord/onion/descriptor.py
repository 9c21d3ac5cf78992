"""Hidden-service descriptors: what a service publishes so clients can reach it.

A descriptor tells a client which relays act as the service's introduction points and which keys
to use with them (rend-spec-v3 section 2.5.2.2). Directory nodes store descriptors for anyone to
fetch, so a descriptor must prove on its own that the service made it:

* The service's long-term identity key (the key inside its onion address, section 6) stays out
  of day-to-day use. It only certifies a short-term *descriptor signing key*
  (``KP_hs_desc_sign``, section 1.9) with a small certificate that carries an expiry, in the
  spirit of the ``descriptor-signing-key-cert`` line of section 2.4. Tor certifies with a key
  blinded per time period (section 2.1, appendix A); blinding needs Edwards-curve arithmetic the
  ``cryptography`` package does not expose, so here the identity key certifies directly.
* The signing key signs the descriptor's canonical bytes, prefixed with a fixed label so the
  signature cannot be replayed as a signature over any other kind of message (section 0.3).
* A *revision counter* (section 2.4) orders the descriptors of one service: a directory keeps the
  highest one it has seen, so nobody can replace a newer descriptor with a captured older one.
  Counters follow appendix F.1, "increment on generation", persisted per service in the
  ``onion_hs_revisions`` table so they keep rising across restarts.
* ``descriptor-lifetime`` (section 2.4, 30 to 720 minutes, 180 by default per section 2.2.5)
  bounds how long a directory serves it.

Each introduction point lists the relay (id, address, port and its ntor onion key), the
per-introduction-point authentication key ``KP_hs_ipt_sid`` (Ed25519) and the service's
per-introduction-point encryption key ``KP_hss_ntor`` (X25519), as in section 2.5.2.2. There are
at most 20 (section 2.5.4). The descriptor is kept in the clear: the two encryption layers of
section 2.5 are not part of this format.

The canonical form is a line format shaped like Tor's directory meta-format::

    hs-descriptor 3
    descriptor-lifetime <minutes>
    descriptor-created <unix seconds>
    descriptor-signing-key-cert <base64 cert>
    revision-counter <n>
    introduction-point <relay id> <relay address> <relay port>     (per introduction point:)
    onion-key ntor <base64>
    auth-key ed25519 <base64>
    enc-key ntor <base64>
    signature <base64>

Parsing re-encodes and demands the exact input back, so every descriptor has one byte encoding
and the signed bytes are the bytes on the wire.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock, SystemClock
from fogcoord.onion.hsaddr import (
    OnionAddressError,
    canonical_onion_address,
    onion_address,
    parse_onion_address,
)

DESCRIPTOR_VERSION = 3
MIN_LIFETIME_MINUTES = 30
MAX_LIFETIME_MINUTES = 720
DEFAULT_LIFETIME_MINUTES = 180
MAX_INTRO_POINTS = 20
MAX_DESCRIPTOR_BYTES = 50_000
"""Section 2.4: directories accept descriptors of up to 50k bytes."""
MAX_REVISION = 2**63 - 1
"""Section 2.4 asks for 64-bit counters; signed, so PostgreSQL's BIGINT holds every value."""
MAX_FUTURE_SKEW_S = 300
"""How far in the future a descriptor's creation time may lie: beyond that it would stay
servable for longer than its lifetime promises, so it is refused as made by a wrong clock."""

KEY_LEN = 32
SIGNATURE_LEN = 64
CERT_VERSION = 1
CERT_TYPE_SIGNING_KEY = 0x08
"""The certificate type Tor uses for descriptor signing keys (section 2.4)."""

_CERT_LABEL = b"fogcoord onion descriptor signing-key cert v1\x00"
_DESCRIPTOR_LABEL = b"fogcoord onion service descriptor sig v1\x00"
_CERT_LEN = 2 + 8 + KEY_LEN + KEY_LEN + SIGNATURE_LEN
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")


class DescriptorError(ValueError):
    """A descriptor, certificate or introduction point that is malformed."""


class DescriptorVerificationError(DescriptorError):
    """A well-formed descriptor that must not be trusted: wrong key, bad signature, expired."""


class StaleRevisionError(DescriptorError):
    """A descriptor whose revision counter is not above the one a directory already holds."""


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public half of an Ed25519 private key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DescriptorError(f"{what} is not base64") from exc
    # Padding bits make several strings decode alike; only the canonical one is accepted.
    if _b64(data) != text:
        raise DescriptorError(f"{what} is not canonical base64")
    return data


def _check_len(value: bytes, length: int, what: str) -> None:
    if len(value) != length:
        raise DescriptorError(f"{what} must be {length} bytes, got {len(value)}")


def _verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class SigningKeyCert:
    """The service's identity key vouching for a descriptor signing key until ``expires_at``.

    Binary layout (all integers big-endian)::

        VERSION (1) | CERT_TYPE 0x08 (1) | EXPIRES_AT unix seconds (8)
        | SIGNING_PUBLIC_KEY (32) | SERVICE_PUBLIC_KEY (32) | SIGNATURE (64)

    The signature covers a fixed label and every byte before it, the service key included, so a
    certificate names the key that made it (Tor's signing-key extension does the same).
    """

    signing_public_key: bytes
    service_public_key: bytes
    expires_at: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_len(self.signing_public_key, KEY_LEN, "signing public key")
        _check_len(self.service_public_key, KEY_LEN, "service public key")
        _check_len(self.signature, SIGNATURE_LEN, "certificate signature")
        if not 0 <= self.expires_at <= MAX_REVISION:
            raise DescriptorError(f"certificate expiry {self.expires_at} is out of range")

    @staticmethod
    def _signed_part(
        signing_public_key: bytes, service_public_key: bytes, expires_at: int
    ) -> bytes:
        return (
            bytes([CERT_VERSION, CERT_TYPE_SIGNING_KEY])
            + expires_at.to_bytes(8, "big")
            + signing_public_key
            + service_public_key
        )

    @classmethod
    def issue(
        cls, service_key: Ed25519PrivateKey, signing_public_key: bytes, expires_at: int
    ) -> SigningKeyCert:
        service_public_key = public_bytes(service_key)
        _check_len(signing_public_key, KEY_LEN, "signing public key")
        if not 0 <= expires_at <= MAX_REVISION:
            raise DescriptorError(f"certificate expiry {expires_at} is out of range")
        body = cls._signed_part(signing_public_key, service_public_key, expires_at)
        return cls(
            signing_public_key=signing_public_key,
            service_public_key=service_public_key,
            expires_at=expires_at,
            signature=service_key.sign(_CERT_LABEL + body),
        )

    def to_bytes(self) -> bytes:
        body = self._signed_part(self.signing_public_key, self.service_public_key, self.expires_at)
        return body + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SigningKeyCert:
        if len(data) != _CERT_LEN:
            raise DescriptorError(
                f"a signing-key certificate is {_CERT_LEN} bytes, got {len(data)}"
            )
        if data[0] != CERT_VERSION or data[1] != CERT_TYPE_SIGNING_KEY:
            raise DescriptorError(
                f"unsupported certificate version {data[0]} or type {data[1]:#04x}"
            )
        return cls(
            expires_at=int.from_bytes(data[2:10], "big"),
            signing_public_key=data[10:42],
            service_public_key=data[42:74],
            signature=data[74:],
        )

    def verify(self, service_public_key: bytes, now: float) -> None:
        """Raise :class:`DescriptorVerificationError` unless ``service_public_key`` made this
        certificate and it has not expired at ``now``."""
        if self.service_public_key != service_public_key:
            raise DescriptorVerificationError("the certificate was made by another service's key")
        body = self._signed_part(self.signing_public_key, self.service_public_key, self.expires_at)
        if not _verify_ed25519(service_public_key, self.signature, _CERT_LABEL + body):
            raise DescriptorVerificationError("the signing-key certificate's signature is invalid")
        if now >= self.expires_at:
            raise DescriptorVerificationError(
                f"the signing-key certificate expired at {self.expires_at}"
            )


@dataclass(frozen=True)
class IntroductionPoint:
    """One relay a client can ask to introduce it to the service (section 2.5.2.2).

    ``onion_key`` is the relay's ntor onion key, for the circuit the client extends to it;
    ``auth_key`` (Ed25519, ``KP_hs_ipt_sid``) names the service's session at that relay; and
    ``enc_key`` (X25519, ``KP_hss_ntor``) is what the client encrypts its introduction to. The
    service makes fresh ``auth_key`` and ``enc_key`` pairs per introduction point, so sessions at
    different relays cannot be linked.
    """

    relay_id: str
    relay_address: str
    relay_port: int
    onion_key: bytes
    auth_key: bytes
    enc_key: bytes

    def __post_init__(self) -> None:
        for what, token in (("relay id", self.relay_id), ("relay address", self.relay_address)):
            if not _TOKEN.fullmatch(token):
                raise DescriptorError(
                    f"{what} {token!r} must be 1 to 255 visible ASCII characters without spaces"
                )
        if not 1 <= self.relay_port <= 65535:
            raise DescriptorError(f"relay port {self.relay_port} is not in 1..65535")
        _check_len(self.onion_key, KEY_LEN, "relay onion key")
        _check_len(self.auth_key, KEY_LEN, "introduction auth key")
        _check_len(self.enc_key, KEY_LEN, "introduction encryption key")

    def lines(self) -> list[str]:
        return [
            f"introduction-point {self.relay_id} {self.relay_address} {self.relay_port}",
            f"onion-key ntor {_b64(self.onion_key)}",
            f"auth-key ed25519 {_b64(self.auth_key)}",
            f"enc-key ntor {_b64(self.enc_key)}",
        ]


@dataclass(frozen=True)
class Descriptor:
    """A signed hidden-service descriptor. Build one with :meth:`sign`, check it with
    :meth:`verify`; :meth:`to_bytes` / :meth:`from_bytes` give its one wire encoding."""

    signing_key_cert: SigningKeyCert
    revision_counter: int
    created_at: int
    lifetime_minutes: int
    introduction_points: tuple[IntroductionPoint, ...]
    signature: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.revision_counter <= MAX_REVISION:
            raise DescriptorError(f"revision counter {self.revision_counter} is out of range")
        if not 0 <= self.created_at <= MAX_REVISION:
            raise DescriptorError(f"creation time {self.created_at} is out of range")
        if not MIN_LIFETIME_MINUTES <= self.lifetime_minutes <= MAX_LIFETIME_MINUTES:
            raise DescriptorError(
                f"lifetime {self.lifetime_minutes} min is not in "
                f"{MIN_LIFETIME_MINUTES}..{MAX_LIFETIME_MINUTES}"
            )
        if len(self.introduction_points) > MAX_INTRO_POINTS:
            raise DescriptorError(
                f"{len(self.introduction_points)} introduction points, at most {MAX_INTRO_POINTS}"
            )
        _check_len(self.signature, SIGNATURE_LEN, "descriptor signature")

    @classmethod
    def sign(
        cls,
        service_key: Ed25519PrivateKey,
        signing_key: Ed25519PrivateKey,
        *,
        revision_counter: int,
        introduction_points: Iterable[IntroductionPoint] = (),
        created_at: float | None = None,
        lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES,
        cert_expires_at: int | None = None,
    ) -> Descriptor:
        """A descriptor signed by ``signing_key``, which ``service_key`` certifies.

        The certificate expires with the descriptor unless ``cert_expires_at`` says otherwise
        (a service reusing one signing key for many descriptors wants it longer).
        """
        created = int(time.time() if created_at is None else created_at)
        expires = created + lifetime_minutes * 60 if cert_expires_at is None else cert_expires_at
        cert = SigningKeyCert.issue(service_key, public_bytes(signing_key), expires)
        intros = tuple(introduction_points)
        body = _body(cert, revision_counter, created, lifetime_minutes, intros)
        return cls(
            signing_key_cert=cert,
            revision_counter=revision_counter,
            created_at=created,
            lifetime_minutes=lifetime_minutes,
            introduction_points=intros,
            signature=signing_key.sign(_DESCRIPTOR_LABEL + body),
        )

    @property
    def service_public_key(self) -> bytes:
        return self.signing_key_cert.service_public_key

    @property
    def signing_public_key(self) -> bytes:
        return self.signing_key_cert.signing_public_key

    @property
    def address(self) -> str:
        """The onion address of the key that certified this descriptor (not yet verified)."""
        return onion_address(self.service_public_key)

    @property
    def expires_at(self) -> int:
        return self.created_at + self.lifetime_minutes * 60

    def body(self) -> bytes:
        """The canonical bytes the signature covers (everything but the signature line)."""
        return _body(
            self.signing_key_cert,
            self.revision_counter,
            self.created_at,
            self.lifetime_minutes,
            self.introduction_points,
        )

    def to_bytes(self) -> bytes:
        return self.body() + f"signature {_b64(self.signature)}\n".encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Descriptor:
        """Parse the canonical encoding; anything else raises :class:`DescriptorError`."""
        if len(data) > MAX_DESCRIPTOR_BYTES:
            raise DescriptorError(
                f"descriptor is {len(data)} bytes, at most {MAX_DESCRIPTOR_BYTES}"
            )
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DescriptorError("descriptor is not ASCII") from exc
        if not text.endswith("\n"):
            raise DescriptorError("descriptor must end with a newline")
        parsed = _parse(text[:-1].split("\n"))
        # The parser checks structure; re-encoding catches the alternative spellings it lets
        # through (leading zeros, non-canonical base64 padding), so one descriptor has one form.
        if parsed.to_bytes() != data:
            raise DescriptorError("descriptor is not in canonical form")
        return parsed

    def verify(self, address: str, *, now: float | None = None) -> None:
        """Raise :class:`DescriptorVerificationError` unless this descriptor may be trusted as
        ``address``'s at ``now``: the address's key certified the signing key, the certificate
        is unexpired, the signing key signed these exact bytes, and the descriptor is within
        its lifetime."""
        at = time.time() if now is None else now
        try:
            service_key = parse_onion_address(address)
        except OnionAddressError as exc:
            raise DescriptorVerificationError(f"bad onion address: {exc}") from exc
        if self.service_public_key != service_key:
            raise DescriptorVerificationError(
                f"descriptor is certified by {self.address}, not {address}"
            )
        self.signing_key_cert.verify(service_key, at)
        if not _verify_ed25519(
            self.signing_public_key, self.signature, _DESCRIPTOR_LABEL + self.body()
        ):
            raise DescriptorVerificationError("the descriptor signature is invalid")
        if at >= self.expires_at:
            raise DescriptorVerificationError(f"the descriptor expired at {self.expires_at}")
        if self.created_at > at + MAX_FUTURE_SKEW_S:
            raise DescriptorVerificationError(
                f"the descriptor claims to be created at {self.created_at}, in the future"
            )


def _body(
    cert: SigningKeyCert,
    revision_counter: int,
    created_at: int,
    lifetime_minutes: int,
    intros: tuple[IntroductionPoint, ...],
) -> bytes:
    lines = [
        f"hs-descriptor {DESCRIPTOR_VERSION}",
        f"descriptor-lifetime {lifetime_minutes}",
        f"descriptor-created {created_at}",
        f"descriptor-signing-key-cert {_b64(cert.to_bytes())}",
        f"revision-counter {revision_counter}",
    ]
    for intro in intros:
        lines.extend(intro.lines())
    return "".join(line + "\n" for line in lines).encode("ascii")


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise DescriptorError(f"{what} {text!r} is not a non-negative integer")
    return int(text)


def _parse(lines: list[str]) -> Descriptor:
    pos = 0

    def take(keyword: str, nargs: int) -> list[str]:
        nonlocal pos
        if pos >= len(lines):
            raise DescriptorError(f"descriptor ends before {keyword!r}")
        words = lines[pos].split(" ")
        if words[0] != keyword or len(words) != nargs + 1:
            raise DescriptorError(f"line {pos + 1}: expected {keyword!r} with {nargs} argument(s)")
        pos += 1
        return words[1:]

    (version,) = take("hs-descriptor", 1)
    if version != str(DESCRIPTOR_VERSION):
        raise DescriptorError(f"unsupported descriptor version {version!r}")
    lifetime = _int(take("descriptor-lifetime", 1)[0], "lifetime")
    created = _int(take("descriptor-created", 1)[0], "creation time")
    cert = SigningKeyCert.from_bytes(_unb64(take("descriptor-signing-key-cert", 1)[0], "cert"))
    revision = _int(take("revision-counter", 1)[0], "revision counter")
    intros: list[IntroductionPoint] = []
    while pos < len(lines) and lines[pos].startswith("introduction-point "):
        relay_id, relay_address, port = take("introduction-point", 3)
        onion_type, onion_key = take("onion-key", 2)
        auth_type, auth_key = take("auth-key", 2)
        enc_type, enc_key = take("enc-key", 2)
        if (onion_type, auth_type, enc_type) != ("ntor", "ed25519", "ntor"):
            raise DescriptorError("unsupported introduction point key type")
        intros.append(
            IntroductionPoint(
                relay_id=relay_id,
                relay_address=relay_address,
                relay_port=_int(port, "relay port"),
                onion_key=_unb64(onion_key, "onion key"),
                auth_key=_unb64(auth_key, "auth key"),
                enc_key=_unb64(enc_key, "enc key"),
            )
        )
    (signature,) = take("signature", 1)
    if pos != len(lines):
        raise DescriptorError(f"line {pos + 1}: unexpected data after the signature")
    return Descriptor(
        signing_key_cert=cert,
        revision_counter=revision,
        created_at=created,
        lifetime_minutes=lifetime,
        introduction_points=tuple(intros),
        signature=_unb64(signature, "signature"),
    )


metadata = sa.MetaData()

revisions_t = sa.Table(
    "onion_hs_revisions",
    metadata,
    sa.Column("address", sa.String(62), primary_key=True),
    sa.Column("counter", sa.BigInteger, nullable=False),
)


class RevisionCounter:
    """Per-service revision counters that only go up, kept in ``onion_hs_revisions``.

    Each :meth:`next` is one upsert-and-return statement in one transaction, so the database's
    row lock (PostgreSQL) or write lock (SQLite) hands concurrent callers distinct values, and a
    committed value is never handed out again after a restart.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        metadata.create_all(engine)

    def next(self, address: str) -> int:
        """The service's next revision counter: 0 the first time, then 1, 2, ..."""
        canonical = canonical_onion_address(address)
        bump = (
            self._insert(revisions_t)
            .values(address=canonical, counter=0)
            .on_conflict_do_update(
                index_elements=[revisions_t.c.address],
                set_={"counter": revisions_t.c.counter + 1},
            )
            .returning(revisions_t.c.counter)
        )
        with self._engine.begin() as conn:
            value = int(conn.execute(bump).scalar_one())
        if value > MAX_REVISION:  # pragma: no cover - 2**63 publications
            raise OverflowError(f"revision counter of {canonical} is exhausted")
        return value

    def current(self, address: str) -> int | None:
        """The last value :meth:`next` returned for ``address``, or None if it never ran."""
        canonical = canonical_onion_address(address)
        with self._engine.connect() as conn:
            value = conn.execute(
                sa.select(revisions_t.c.counter).where(revisions_t.c.address == canonical)
            ).scalar_one_or_none()
        return None if value is None else int(value)


class DescriptorStore:
    """The descriptors a directory node holds, one per onion address.

    A descriptor is accepted only if it verifies for the address it is stored under and its
    revision counter is above every revision already accepted for that address. The highest
    accepted revision is remembered even after the descriptor itself expires and is dropped, so
    an old descriptor replayed later cannot take its place.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._descriptors: dict[str, Descriptor] = {}
        self._highest: dict[str, int] = {}

    def put(self, address: str, descriptor: Descriptor | bytes) -> Descriptor:
        """Store ``descriptor`` (or its wire bytes) for ``address`` and return it.

        Raises :class:`DescriptorError` if malformed, :class:`DescriptorVerificationError` if it
        fails :meth:`Descriptor.verify`, :class:`StaleRevisionError` if not newer.
        """
        desc = Descriptor.from_bytes(descriptor) if isinstance(descriptor, bytes) else descriptor
        try:
            key = canonical_onion_address(address)
        except OnionAddressError as exc:
            raise DescriptorVerificationError(f"bad onion address: {exc}") from exc
        with self._lock:
            highest = self._highest.get(key)
            # Cheap check first: a stale descriptor is refused whatever its signature says, so
            # replays cost the directory no signature verification.
            if highest is not None and desc.revision_counter <= highest:
                raise StaleRevisionError(
                    f"revision {desc.revision_counter} of {key} is not above {highest}"
                )
            desc.verify(key, now=self._clock.time())
            self._descriptors[key] = desc
            self._highest[key] = desc.revision_counter
        return desc

    def get(self, address: str) -> Descriptor | None:
        """The live descriptor for ``address``, or None if there is none or it has expired."""
        try:
            key = canonical_onion_address(address)
        except OnionAddressError:
            return None
        with self._lock:
            desc = self._descriptors.get(key)
            if desc is not None and self._clock.time() >= desc.expires_at:
                del self._descriptors[key]
                return None
            return desc

    def highest_revision(self, address: str) -> int | None:
        """The highest revision accepted for ``address``, even if that descriptor expired."""
        with self._lock:
            return self._highest.get(canonical_onion_address(address))

    def prune(self) -> int:
        """Drop expired descriptors (keeping their revisions); return how many were dropped."""
        now = self._clock.time()
        with self._lock:
            expired = [k for k, d in self._descriptors.items() if now >= d.expires_at]
            for key in expired:
                del self._descriptors[key]
        return len(expired)

    def __len__(self) -> int:
        with self._lock:
            return len(self._descriptors)
