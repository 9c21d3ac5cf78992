"""Onion services: reachable by name, with neither side learning where the other is.

This follows the v3 protocol of rend-spec-v3 at small scale. A service is named by its Ed25519
identity key (the onion address, section 6). To be reachable it

1. picks a few *introduction points* and builds a circuit to each; over it, ESTABLISH_INTRO
   registers a fresh per-introduction-point *auth key* (section 3.1.1, [EST_INTRO]). The cell is
   signed by that key over the circuit's ntor nonce ``KH``, which only the service and that relay
   know, so the relay learns the service holds the key and the cell cannot be replayed on another
   circuit. The relay answers INTRO_ESTABLISHED (section 3.1.3);
2. signs a descriptor listing them, with a per-introduction-point X25519 *encryption key*
   ``KP_hss_ntor`` (:mod:`fogcoord.onion.descriptor`), and uploads it through circuits to the
   directories the hash ring makes responsible (section 2.2.3, :mod:`fogcoord.onion.hsdir`).

A client that knows the address

1. fetches the descriptor from one of those directories and checks it against the key inside
   the address (section 2.4), so a directory cannot substitute introduction points;
2. picks a *rendezvous point*, builds a circuit to it and sends ESTABLISH_RENDEZVOUS with a
   random 20-byte cookie (section 4.1, [EST_REND_POINT]);
3. builds a circuit to an introduction point and sends INTRODUCE1 (section 3.2, [SEND_INTRO1]),
   which names the service by its auth key and carries, encrypted to the service's encryption
   key, the rendezvous point and the cookie. The introduction point relays it to the service as
   INTRODUCE2 and acknowledges with INTRODUCE_ACK (section 3.2.2).

The service decrypts the introduction (section 3.3, [PROCESS_INTRO2]), builds its own circuit to
the rendezvous point and sends RENDEZVOUS1: the cookie and its half of the handshake. The
rendezvous point matches the cookie, joins the two circuits and hands the client the handshake as
RENDEZVOUS2 (section 4.2, [JOIN_REND]). Both ends then add the handshake's keys as one more layer
beyond the rendezvous point (section 4.2.1), and the client opens streams through it; the service
connects each to its target.

The service only ever talks to relays at the end of its own circuits, and so does the client:
the introduction point sees two circuits' middle hops, the rendezvous point likewise, and the
cells between the two ends are under a layer the rendezvous point does not have.

The handshake is rend-spec-v3's ntor with extra data (section 3.3.2, [NTOR-WITH-EXTRA-DATA]),
with HKDF-SHA256 in place of SHA3-256/SHAKE-256. With ``B`` the introduction point's encryption
key, ``AUTH_KEY`` its auth key, ``X`` the client's ephemeral key and ``Y`` the service's::

    intro keys:   HKDF(EXP(B,x) | AUTH_KEY | X | B | PROTOID,
                       salt=t_hsenc, info=m_hsexpand | subcredential) -> ENC_KEY | MAC_KEY
    rendezvous:   secret = EXP(X,y) | EXP(X,b) | AUTH_KEY | B | X | Y | PROTOID
                  AUTH   = H(H(secret, t_hsverify) | AUTH_KEY | B | Y | X | PROTOID | "Server",
                             t_hsmac)
                  keys   = HKDF(secret, salt=t_hsenc, info=m_hsexpand) -> Df|Db|Kf|Kb|KH

``ENC_KEY`` encrypts the introduction with AES-256-CTR (each key is used once, since ``x`` is
fresh), ``MAC_KEY`` authenticates the whole INTRODUCE1 cell with HMAC-SHA256, and the rendezvous
keys become an ordinary hop of :mod:`fogcoord.onion.relaycrypto` (AES-128, running SHA-1 digests)
where Tor uses AES-256 and SHA3. The subcredential binds the introduction to the service's
identity (section 2.1); without key blinding it is derived from the identity key itself.

Departures from the wire formats of rend-spec-v3, each to report outcomes the protocol would
otherwise leave to a closed circuit:

* INTRO_ESTABLISHED and RENDEZVOUS_ESTABLISHED carry the ``STATUS`` field of INTRODUCE_ACK
  (``STATUS (2) | N_EXTENSIONS (1) | reason``), so a refusal -- notably a relay that already hosts
  ``max_services_per_node`` introduction points -- reaches the service as a reason;
* after the rendezvous the service sends one end-to-end **HS_ACCESS** cell with the same body:
  the verdict of its ``on_access`` check (e.g. a fee was charged). A refused client gets
  :class:`AccessRefused` and the service closes the rendezvous circuit;
* the encrypted part of INTRODUCE1 may carry an opaque *credential* extension, which the client
  presents to ``on_access`` (e.g. a payment reference); it is encrypted to the service.

Introduction and rendezvous points must be listed in the consensus of the party that builds the
circuit: the service will not extend to an address an anonymous client named (that would let a
client have the service connect wherever it liked).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import random
import struct
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fogcoord.onion.cells import (
    RELAY_DATA_LEN,
    CellError,
    EndReason,
    Extend2,
    RelayCell,
    RelayCommand,
    parse_created2,
)
from fogcoord.onion.client import Circuit, OnionClient
from fogcoord.onion.descriptor import (
    DEFAULT_LIFETIME_MINUTES,
    Descriptor,
    DescriptorError,
    IntroductionPoint,
    RevisionCounter,
    public_bytes,
)
from fogcoord.onion.directory import Consensus, PathError, RelayInfo, network_key
from fogcoord.onion.hashring import TimePeriod, responsible_set_change
from fogcoord.onion.hsaddr import canonical_onion_address, onion_address, parse_onion_address
from fogcoord.onion.hsdir import (
    HSDirError,
    HSDirStatus,
    await_on_circuit,
    fetch_descriptor_bytes,
    hsdir_nodes,
    relay_waiter,
    responsible_hsdirs,
    upload_descriptor,
)
from fogcoord.onion.ntor import (
    KEY_MATERIAL_LEN,
    CircuitKeys,
    HandshakeError,
    client_start,
    raw_public,
)
from fogcoord.onion.relay import MAX_RELAY_EARLY, Relay, RelayCircuit
from fogcoord.onion.relaycrypto import HopCrypto
from fogcoord.onion.streams import OnionError, Stream, pipe

log = logging.getLogger(__name__)

# Relay command codes of rend-spec-v3 (tor-spec section 6.1).
ESTABLISH_INTRO = 32
ESTABLISH_RENDEZVOUS = 33
INTRODUCE1 = 34
INTRODUCE2 = 35
RENDEZVOUS1 = 36
RENDEZVOUS2 = 37
INTRO_ESTABLISHED = 38
RENDEZVOUS_ESTABLISHED = 39
INTRODUCE_ACK = 40
HS_ACCESS = 0xD8
"""The service's end-to-end verdict after a rendezvous; outside the ranges the specs assign."""

DEFAULT_MAX_SERVICES_PER_NODE = 5
DEFAULT_INTRO_POINTS = 3
DEFAULT_REPLICATION_FACTOR = 3
DEFAULT_HOPS = 3
MAX_RENDEZVOUS_PER_RELAY = 4096
"""Waiting cookies a rendezvous point keeps, so unanswered ones cannot exhaust its memory."""
MAX_PENDING_INTRODUCTIONS = 64
"""Introductions a service works on at once; more are dropped, as under a flood."""
REPLAY_CACHE_SIZE = 65536

COOKIE_LEN = 20
KEY_LEN = 32
MAC_LEN = 32
SIG_LEN = 64
LEGACY_KEY_ID_LEN = 20
AUTH_KEY_TYPE_ED25519 = 0x02
ONION_KEY_TYPE_NTOR = 0x01
EXT_CREDENTIAL = 0xF0
"""An INTRODUCE1 plaintext extension: the client's credential for ``on_access``."""

_INTRO1_HEADER_LEN = LEGACY_KEY_ID_LEN + 1 + 2 + KEY_LEN + 1
INTRO_PLAINTEXT_LEN = RELAY_DATA_LEN - _INTRO1_HEADER_LEN - KEY_LEN - MAC_LEN
"""Every introduction is padded to this length, so INTRODUCE1 cells all look alike."""
MAX_CREDENTIAL_LEN = 200
"""Leaves room in the plaintext for an IPv6 rendezvous address, the largest link specifier."""
HANDSHAKE_INFO_LEN = KEY_LEN + MAC_LEN

HS_PROTOID = b"fogcoord-hs-ntor-curve25519-hkdf-sha256-1"
T_HSENC = HS_PROTOID + b":hs_key_extract"
T_HSVERIFY = HS_PROTOID + b":hs_verify"
T_HSMAC = HS_PROTOID + b":hs_mac"
M_HSEXPAND = HS_PROTOID + b":hs_key_expand"
_ESTABLISH_INTRO_LABEL = b"fogcoord establish-intro v1\x00"

LSTYPE_IPV4 = 0x00
LSTYPE_IPV6 = 0x01
LSTYPE_LEGACY_ID = 0x02
LSTYPE_ED25519_ID = 0x03


class HsStatus(IntEnum):
    """``STATUS`` of INTRODUCE_ACK (section 3.2.2), and here of every hidden-service answer."""

    SUCCESS = 0
    SERVICE_NOT_RECOGNIZED = 1
    BAD_MESSAGE = 2
    CANT_RELAY = 3
    LIMIT_REACHED = 4
    BAD_SIGNATURE = 5
    COOKIE_IN_USE = 6
    WRONG_CIRCUIT = 7
    ACCESS_DENIED = 8


# -- errors -----------------------------------------------------------------------------------


class HiddenServiceError(OnionError):
    """An onion service could not be published or reached."""


class HsRefused(HiddenServiceError):
    """A relay or the service answered with a non-success ``status``."""

    def __init__(self, what: str, status: int, reason: str = "") -> None:
        self.status = int(status)
        try:
            name = HsStatus(self.status).name
        except ValueError:
            name = f"status {self.status}"
        self.reason = reason
        text = f"{what} refused ({name})"
        super().__init__(f"{text}: {reason}" if reason else text)


class IntroPointRefused(HsRefused):
    """A relay would not act as an introduction point (e.g. LIMIT_REACHED)."""


class AccessRefused(HsRefused):
    """The service's ``on_access`` check turned the client away."""


class _Failures(HiddenServiceError):
    def __init__(self, summary: str, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        detail = "; ".join(f"{relay_id[:8]}: {exc}" for relay_id, exc in errors.items())
        super().__init__(f"{summary}: {detail}" if detail else summary)


class NoIntroductionPoints(_Failures):
    """No relay accepted an introduction point; ``errors`` maps relay id to why."""


class DescriptorUploadFailed(_Failures):
    """No responsible directory stored the descriptor; ``errors`` maps relay id to why."""


class DescriptorUnavailable(_Failures):
    """No responsible directory gave a descriptor that verifies; ``errors`` says why per relay
    (a :class:`~fogcoord.onion.descriptor.DescriptorVerificationError` for a forged one)."""


class IntroductionFailed(_Failures):
    """No introduction point passed the introduction on; ``errors`` maps relay id to why."""


# -- small formats ----------------------------------------------------------------------------


def status_body(status: int, reason: str = "") -> bytes:
    """``STATUS (2) | N_EXTENSIONS (1) = 0 | reason (UTF-8)``, cut to fit one cell."""
    return struct.pack(">HB", status, 0) + reason.encode("utf-8")[: RELAY_DATA_LEN - 3]


def parse_status(body: bytes) -> tuple[int, str]:
    if len(body) < 3:
        raise CellError("a status body is at least 3 bytes")
    status, n_ext = struct.unpack_from(">HB", body)
    if n_ext != 0:
        raise CellError("unexpected extensions in a status body")
    return status, body[3:].decode("utf-8", "replace")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        # An all-zero result means a small-order key: nothing secret would come of it.
        raise HandshakeError("degenerate curve25519 key in the introduction") from exc


def _aes256_ctr(key: bytes, data: bytes) -> bytes:
    # A zero counter is safe only because every ENC_KEY encrypts exactly one message.
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def subcredential(service_public_key: bytes) -> bytes:
    """``N_hs_subcred`` (section 2.1), from the identity key since keys are not blinded here."""
    credential = hashlib.sha3_256(b"credential" + service_public_key).digest()
    return hashlib.sha3_256(b"subcredential" + credential + service_public_key).digest()


def _intro_keys(
    xb: bytes, auth_key: bytes, client_pub: bytes, enc_pub: bytes, subcred: bytes
) -> tuple[bytes, bytes]:
    secret = xb + auth_key + client_pub + enc_pub + HS_PROTOID
    km = HKDF(
        algorithm=hashes.SHA256(), length=2 * KEY_LEN, salt=T_HSENC, info=M_HSEXPAND + subcred
    ).derive(secret)
    return km[:KEY_LEN], km[KEY_LEN:]


def _rendezvous_keys(
    xy: bytes, xb: bytes, auth_key: bytes, enc_pub: bytes, client_pub: bytes, service_pub: bytes
) -> tuple[CircuitKeys, bytes]:
    secret = xy + xb + auth_key + enc_pub + client_pub + service_pub + HS_PROTOID
    verify = _hmac(T_HSVERIFY, secret)
    auth_input = verify + auth_key + enc_pub + service_pub + client_pub + HS_PROTOID + b"Server"
    km = HKDF(
        algorithm=hashes.SHA256(), length=KEY_MATERIAL_LEN, salt=T_HSENC, info=M_HSEXPAND
    ).derive(secret)
    return CircuitKeys.from_material(km), _hmac(T_HSMAC, auth_input)


# -- ESTABLISH_INTRO (section 3.1.1) ----------------------------------------------------------


def establish_intro_body(auth_key: Ed25519PrivateKey, keys_nonce: bytes) -> bytes:
    """``AUTH_KEY_TYPE | AUTH_KEY_LEN | AUTH_KEY | N_EXTENSIONS | SIG_LEN | SIG``; the signature
    covers a label, the circuit's ``KH`` and everything before ``SIG_LEN``."""
    head = struct.pack(">BH", AUTH_KEY_TYPE_ED25519, KEY_LEN) + public_bytes(auth_key) + b"\x00"
    signature = auth_key.sign(_ESTABLISH_INTRO_LABEL + keys_nonce + head)
    return head + struct.pack(">H", len(signature)) + signature


class _BadSignature(Exception):
    pass


def parse_establish_intro(body: bytes, keys_nonce: bytes) -> bytes:
    """The auth key of a valid ESTABLISH_INTRO on the circuit with ``keys_nonce``.

    Raises :class:`CellError` if malformed, :class:`_BadSignature` if not signed for this circuit.
    """
    head_len = 1 + 2 + KEY_LEN + 1
    if len(body) != head_len + 2 + SIG_LEN:
        raise CellError(f"ESTABLISH_INTRO is {head_len + 2 + SIG_LEN} bytes, got {len(body)}")
    key_type, key_len = struct.unpack_from(">BH", body)
    if key_type != AUTH_KEY_TYPE_ED25519 or key_len != KEY_LEN:
        raise CellError("ESTABLISH_INTRO auth key must be a 32-byte Ed25519 key")
    auth_key = body[3 : 3 + KEY_LEN]
    if body[3 + KEY_LEN] != 0:
        raise CellError("ESTABLISH_INTRO extensions are not supported")
    (sig_len,) = struct.unpack_from(">H", body, head_len)
    if sig_len != SIG_LEN:
        raise CellError("ESTABLISH_INTRO signature must be 64 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(auth_key).verify(
            body[head_len + 2 :], _ESTABLISH_INTRO_LABEL + keys_nonce + body[:head_len]
        )
    except (InvalidSignature, ValueError) as exc:
        raise _BadSignature("the ESTABLISH_INTRO signature is not for this circuit") from exc
    return auth_key


# -- INTRODUCE1 (section 3.2.1) and its encrypted part (section 3.3) ---------------------------


@dataclass(frozen=True)
class Introduction:
    """The decrypted part of an INTRODUCE2: where the client waits, and what it presents."""

    cookie: bytes
    onion_key: bytes
    address: str
    port: int
    node_id: bytes
    ed25519_id: bytes
    credential: bytes = b""

    def encode(self) -> bytes:
        if len(self.credential) > MAX_CREDENTIAL_LEN:
            raise ValueError(f"a credential is at most {MAX_CREDENTIAL_LEN} bytes")
        out = bytearray(self.cookie)
        if self.credential:
            out += bytes((1, EXT_CREDENTIAL, len(self.credential))) + self.credential
        else:
            out += b"\x00"
        out += struct.pack(">BH", ONION_KEY_TYPE_NTOR, KEY_LEN) + self.onion_key
        ip = ipaddress.ip_address(self.address)
        lstype = LSTYPE_IPV4 if ip.version == 4 else LSTYPE_IPV6
        specs = [
            (lstype, ip.packed + struct.pack(">H", self.port)),
            (LSTYPE_LEGACY_ID, self.node_id),
            (LSTYPE_ED25519_ID, self.ed25519_id),
        ]
        out.append(len(specs))
        for kind, data in specs:
            out += bytes((kind, len(data))) + data
        if len(out) > INTRO_PLAINTEXT_LEN:  # pragma: no cover - bounded by MAX_CREDENTIAL_LEN
            raise ValueError("the introduction does not fit in a cell")
        return bytes(out) + bytes(INTRO_PLAINTEXT_LEN - len(out))

    @classmethod
    def decode(cls, data: bytes) -> Introduction:
        reader = _Reader(data)
        cookie = reader.take(COOKIE_LEN)
        credential = b""
        for _ in range(reader.byte()):
            ext_type, ext = reader.byte(), reader.take(reader.byte())
            if ext_type == EXT_CREDENTIAL:
                credential = ext
            # unknown extensions are skipped, as section 3.2.1 asks
        key_type, key_len = reader.byte(), reader.u16()
        if key_type != ONION_KEY_TYPE_NTOR or key_len != KEY_LEN:
            raise CellError("the rendezvous onion key must be a 32-byte ntor key")
        onion_key = reader.take(KEY_LEN)
        address: str | None = None
        port = 0
        node_id = ed_id = b""
        for _ in range(reader.byte()):
            kind, spec = reader.byte(), reader.take(reader.byte())
            if kind == LSTYPE_IPV4 and len(spec) == 6:
                address = str(ipaddress.IPv4Address(spec[:4]))
                port = struct.unpack(">H", spec[4:])[0]
            elif kind == LSTYPE_IPV6 and len(spec) == 18:
                address = str(ipaddress.IPv6Address(spec[:16]))
                port = struct.unpack(">H", spec[16:])[0]
            elif kind == LSTYPE_LEGACY_ID and len(spec) == LEGACY_KEY_ID_LEN:
                node_id = spec
            elif kind == LSTYPE_ED25519_ID and len(spec) == KEY_LEN:
                ed_id = spec
        if address is None or not port or not node_id or not ed_id:
            raise CellError("the rendezvous point is not fully specified")
        return cls(cookie, onion_key, address, port, node_id, ed_id, credential)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CellError("truncated hidden-service message")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])


def _introduce1_header(auth_key: bytes) -> bytes:
    # LEGACY_KEY_ID is all zero in v3 (section 3.2.1); it stays for the format's sake.
    return (
        bytes(LEGACY_KEY_ID_LEN)
        + struct.pack(">BH", AUTH_KEY_TYPE_ED25519, KEY_LEN)
        + (auth_key + b"\x00")
    )


def introduce1_auth_key(body: bytes) -> bytes:
    """The auth key an INTRODUCE1 names (all the introduction point reads)."""
    if len(body) != _INTRO1_HEADER_LEN + KEY_LEN + INTRO_PLAINTEXT_LEN + MAC_LEN:
        raise CellError("INTRODUCE1 has the wrong length")
    if body[:LEGACY_KEY_ID_LEN] != bytes(LEGACY_KEY_ID_LEN):
        raise CellError("INTRODUCE1 names a legacy key")
    key_type, key_len = struct.unpack_from(">BH", body, LEGACY_KEY_ID_LEN)
    if key_type != AUTH_KEY_TYPE_ED25519 or key_len != KEY_LEN:
        raise CellError("INTRODUCE1 auth key must be a 32-byte Ed25519 key")
    return body[LEGACY_KEY_ID_LEN + 3 : LEGACY_KEY_ID_LEN + 3 + KEY_LEN]


@dataclass
class ClientHandshake:
    """The client's side of one introduction, kept until RENDEZVOUS2 arrives."""

    auth_key: bytes
    enc_key: bytes
    private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    @property
    def public(self) -> bytes:
        return raw_public(self.private.public_key())

    def introduce1(self, introduction: Introduction, subcred: bytes) -> bytes:
        header = _introduce1_header(self.auth_key)
        xb = _exchange(self.private, self.enc_key)
        enc_key, mac_key = _intro_keys(xb, self.auth_key, self.public, self.enc_key, subcred)
        encrypted = _aes256_ctr(enc_key, introduction.encode())
        signed = header + self.public + encrypted
        return signed + _hmac(mac_key, signed)

    def complete(self, handshake_info: bytes) -> CircuitKeys:
        """The rendezvous keys, if the service's ``Y | AUTH`` checks out; else HandshakeError."""
        if len(handshake_info) != HANDSHAKE_INFO_LEN:
            raise HandshakeError("RENDEZVOUS2 handshake info has the wrong length")
        service_pub, auth = handshake_info[:KEY_LEN], handshake_info[KEY_LEN:]
        xy = _exchange(self.private, service_pub)
        xb = _exchange(self.private, self.enc_key)
        keys, expected = _rendezvous_keys(
            xy, xb, self.auth_key, self.enc_key, self.public, service_pub
        )
        if not hmac.compare_digest(auth, expected):
            raise HandshakeError("the service's rendezvous authenticator does not verify")
        return keys


def service_open_introduction(
    body: bytes, auth_key: bytes, enc_private: X25519PrivateKey, subcred: bytes
) -> tuple[bytes, Introduction, Callable[[], tuple[bytes, CircuitKeys]]]:
    """Check and decrypt an INTRODUCE2 for the introduction point with these keys.

    Returns the client's ephemeral key, the introduction, and a function that makes the
    service's RENDEZVOUS1 handshake info ``Y | AUTH`` and the rendezvous keys. Raises
    :class:`CellError` or :class:`HandshakeError` for a cell that is malformed, for another
    introduction point, or whose MAC does not verify.
    """
    if introduce1_auth_key(body) != auth_key:
        raise CellError("INTRODUCE2 for another introduction point")
    pos = _INTRO1_HEADER_LEN
    client_pub = body[pos : pos + KEY_LEN]
    encrypted = body[pos + KEY_LEN : -MAC_LEN]
    enc_pub = raw_public(enc_private.public_key())
    xb = _exchange(enc_private, client_pub)
    enc_key, mac_key = _intro_keys(xb, auth_key, client_pub, enc_pub, subcred)
    if not hmac.compare_digest(_hmac(mac_key, body[:-MAC_LEN]), body[-MAC_LEN:]):
        raise HandshakeError("the introduction's MAC does not verify")
    introduction = Introduction.decode(_aes256_ctr(enc_key, encrypted))

    def respond() -> tuple[bytes, CircuitKeys]:
        ephemeral = X25519PrivateKey.generate()
        service_pub = raw_public(ephemeral.public_key())
        xy = _exchange(ephemeral, client_pub)
        keys, auth = _rendezvous_keys(xy, xb, auth_key, enc_pub, client_pub, service_pub)
        return service_pub + auth, keys

    return client_pub, introduction, respond


# -- the relay's side: introduction and rendezvous points ---------------------------------------

_INTROS = "hs.intro_points"
_COOKIES = "hs.rendezvous"
_ROLE = "hs.role"


def install_hs_relay(
    relay: Relay, *, max_services_per_node: int = DEFAULT_MAX_SERVICES_PER_NODE
) -> None:
    """Let ``relay`` serve as an introduction point (for at most ``max_services_per_node``
    services at a time) and as a rendezvous point."""
    if max_services_per_node < 1:
        raise ValueError("max_services_per_node must be at least 1")
    intros: dict[bytes, RelayCircuit] = relay.state.setdefault(_INTROS, {})
    cookies: dict[bytes, RelayCircuit] = relay.state.setdefault(_COOKIES, {})

    def usable(circuit: RelayCircuit) -> bool:
        # A circuit plays one part, and only at its end: otherwise cells meant for the service
        # or the client would be read here or sent on past this relay.
        return _ROLE not in circuit.state and circuit.is_last_hop and circuit.spliced is None

    def establish_intro(circuit: RelayCircuit, cell: RelayCell) -> None:
        if not usable(circuit):
            reason = "this circuit cannot become an introduction circuit"
            circuit.send(INTRO_ESTABLISHED, status_body(HsStatus.WRONG_CIRCUIT, reason))
            return
        try:
            auth_key = parse_establish_intro(cell.data, circuit.keys_nonce)
        except CellError as exc:
            circuit.send(INTRO_ESTABLISHED, status_body(HsStatus.BAD_MESSAGE, str(exc)))
            return
        except _BadSignature as exc:
            circuit.send(INTRO_ESTABLISHED, status_body(HsStatus.BAD_SIGNATURE, str(exc)))
            return
        older = intros.get(auth_key)
        if older is not None:
            # Section 3.1.1: a second circuit for the same key replaces the first.
            older.destroy()
            intros.pop(auth_key, None)
        if len(intros) >= max_services_per_node:
            reason = (
                f"this relay already hosts {len(intros)} introduction points "
                f"(at most {max_services_per_node} per relay)"
            )
            circuit.send(INTRO_ESTABLISHED, status_body(HsStatus.LIMIT_REACHED, reason))
            return
        intros[auth_key] = circuit
        circuit.state[_ROLE] = "intro"

        def forget(closed: RelayCircuit) -> None:
            if intros.get(auth_key) is closed:
                del intros[auth_key]

        circuit.on_close(forget)
        circuit.send(INTRO_ESTABLISHED, status_body(HsStatus.SUCCESS))

    def introduce1(circuit: RelayCircuit, cell: RelayCell) -> None:
        if not usable(circuit):
            reason = "this circuit cannot carry an introduction"
            circuit.send(INTRODUCE_ACK, status_body(HsStatus.WRONG_CIRCUIT, reason))
            return
        try:
            auth_key = introduce1_auth_key(cell.data)
        except CellError as exc:
            circuit.send(INTRODUCE_ACK, status_body(HsStatus.BAD_MESSAGE, str(exc)))
            return
        service = intros.get(auth_key)
        if service is None or service.closed:
            circuit.send(INTRODUCE_ACK, status_body(HsStatus.SERVICE_NOT_RECOGNIZED))
            return
        # The cell goes on unchanged: its MAC covers every byte, and the service checks it.
        service.send(INTRODUCE2, cell.data)
        circuit.state[_ROLE] = "introduced"
        circuit.send(INTRODUCE_ACK, status_body(HsStatus.SUCCESS))

    def establish_rendezvous(circuit: RelayCircuit, cell: RelayCell) -> None:
        if not usable(circuit):
            reason = "this circuit cannot become a rendezvous circuit"
            circuit.send(RENDEZVOUS_ESTABLISHED, status_body(HsStatus.WRONG_CIRCUIT, reason))
            return
        cookie = cell.data
        if len(cookie) != COOKIE_LEN:
            reason = f"a rendezvous cookie is {COOKIE_LEN} bytes"
            circuit.send(RENDEZVOUS_ESTABLISHED, status_body(HsStatus.BAD_MESSAGE, reason))
            return
        if cookie in cookies:
            circuit.send(RENDEZVOUS_ESTABLISHED, status_body(HsStatus.COOKIE_IN_USE))
            return
        if len(cookies) >= MAX_RENDEZVOUS_PER_RELAY:
            circuit.send(RENDEZVOUS_ESTABLISHED, status_body(HsStatus.LIMIT_REACHED))
            return
        cookies[cookie] = circuit
        circuit.state[_ROLE] = "rendezvous"

        def forget(closed: RelayCircuit) -> None:
            if cookies.get(cookie) is closed:
                del cookies[cookie]

        circuit.on_close(forget)
        circuit.send(RENDEZVOUS_ESTABLISHED, status_body(HsStatus.SUCCESS))

    def rendezvous1(circuit: RelayCircuit, cell: RelayCell) -> None:
        if not usable(circuit):
            circuit.destroy()
            return
        if len(cell.data) != COOKIE_LEN + HANDSHAKE_INFO_LEN:
            raise CellError("RENDEZVOUS1 has the wrong length")
        cookie, handshake_info = cell.data[:COOKIE_LEN], cell.data[COOKIE_LEN:]
        waiting = cookies.pop(cookie, None)
        if waiting is None or waiting.closed or not waiting.is_last_hop:
            # Section 4.2: an unknown cookie closes the service's circuit; nothing else to say.
            circuit.destroy()
            return
        circuit.state[_ROLE] = "rendezvous-service"
        circuit.splice(waiting)
        # Sent before this handler returns, so it precedes anything the service relays next.
        waiting.send(RENDEZVOUS2, handshake_info)

    relay.register_command("ESTABLISH_INTRO", ESTABLISH_INTRO, establish_intro)
    relay.register_command("INTRODUCE1", INTRODUCE1, introduce1)
    relay.register_command("ESTABLISH_RENDEZVOUS", ESTABLISH_RENDEZVOUS, establish_rendezvous)
    relay.register_command("RENDEZVOUS1", RENDEZVOUS1, rendezvous1)


def intro_point_count(relay: Relay) -> int:
    """How many services currently have an introduction point at ``relay``."""
    intros: dict[bytes, RelayCircuit] = relay.state.get(_INTROS, {})
    return len(intros)


# -- circuits that end at a chosen relay ----------------------------------------------------


_MAX_PATH_EXPANSIONS = 100_000
"""Bounds the backtracking when owners and networks make a path impossible."""


def path_to(
    consensus: Consensus, target: RelayInfo, length: int, rng: random.Random
) -> list[RelayInfo]:
    """``length`` relays ending at ``target``, no two sharing an owner or a network (as
    :func:`~fogcoord.onion.directory.select_path` requires), drawn by bandwidth."""
    if not 1 <= length <= MAX_RELAY_EARLY + 1:
        raise ValueError(f"a circuit has 1 to {MAX_RELAY_EARLY + 1} hops")

    def compatible(candidate: RelayInfo, chosen: Sequence[RelayInfo]) -> bool:
        net = network_key(candidate.address)
        return all(
            other.id != candidate.id
            and network_key(other.address) != net
            and not (candidate.owner and candidate.owner == other.owner)
            for other in chosen
        )

    budget = [_MAX_PATH_EXPANSIONS]

    def search(chosen: list[RelayInfo]) -> list[RelayInfo] | None:
        if len(chosen) == length:
            return chosen
        pool = [r for r in consensus.relays if r.bandwidth > 0 and compatible(r, chosen)]
        # Efraimidis-Spirakis keys: sorting by them is a bandwidth-weighted draw without
        # replacement, so the first candidate is the weighted pick and the rest are fallbacks.
        keyed = sorted(pool, key=lambda r: rng.random() ** (1.0 / r.bandwidth), reverse=True)
        for relay in keyed:
            budget[0] -= 1
            if budget[0] < 0:
                return None
            found = search([*chosen, relay])
            if found is not None:
                return found
        return None

    found = search([target])
    if found is None:
        raise PathError(f"no {length}-hop path to relay {target.id[:8]} with distinct owners")
    return [*reversed(found[1:]), target]


class _EntryGate:
    """Per client: the first hops a circuit has been built through, and a lock per first hop."""

    def __init__(self) -> None:
        self.ready: set[tuple[str, int]] = set()
        self.locks: dict[tuple[str, int], asyncio.Lock] = {}


_gates: weakref.WeakKeyDictionary[OnionClient, _EntryGate] = weakref.WeakKeyDictionary()


async def build_circuit(client: OnionClient, path: Sequence[RelayInfo]) -> Circuit:
    """``client.build_circuit(path)``, but the first circuit through each first hop is built
    alone: concurrent first builds through one relay would each open a link to it, and only one
    of those links would stay known to the client (and be closed with it)."""
    key = (path[0].address, path[0].port)
    gate = _gates.setdefault(client, _EntryGate())
    if key in gate.ready:
        return await client.build_circuit(path)
    async with gate.locks.setdefault(key, asyncio.Lock()):
        circuit = await client.build_circuit(path)
        gate.ready.add(key)
        return circuit


async def _extend_to(circuit: Circuit, relay: RelayInfo) -> CircuitKeys:
    """Extend ``circuit`` by ``relay`` and keep the hop's keys (the service needs its ``KH``)."""
    handshake = client_start(relay.node_id, relay.onion_key_bytes)
    body = Extend2(
        relay.address,
        relay.port,
        handshake.onionskin,
        node_id=relay.node_id,
        ed25519_id=relay.ed25519_bytes,
    ).encode()
    reply = relay_waiter(circuit, RelayCommand.EXTENDED2)
    await asyncio.sleep(0)  # let the waiter register before the answer can arrive
    try:
        circuit.send_relay(RelayCommand.EXTEND2, body)
        cell = await reply
    finally:
        reply.cancel()
    try:
        keys = handshake.complete(parse_created2(cell.data))
    except (CellError, HandshakeError) as exc:
        circuit.violation(str(exc))
        raise HiddenServiceError(f"extending to {relay.id[:8]} failed: {exc}") from exc
    circuit.crypto.add_hop(HopCrypto(keys))
    circuit.path.append(relay)
    return keys


async def _close_quietly(circuit: Circuit) -> None:
    with contextlib.suppress(OnionError):
        await circuit.close()


# -- the service ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientInfo:
    """What a service knows about a client asking in: never where it is.

    ``session`` is the client's ephemeral key (hex), unique per introduction and unlinkable to
    any other; ``credential`` is whatever the client chose to present (``b""`` if nothing).
    """

    session: str
    credential: bytes
    intro_point: str
    rendezvous_point: str


AccessCheck = Callable[[ClientInfo], Awaitable[bool]]


@dataclass
class _IntroPoint:
    relay: RelayInfo
    circuit: Circuit
    auth_key: Ed25519PrivateKey
    enc_key: X25519PrivateKey
    seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    @property
    def auth_public(self) -> bytes:
        return public_bytes(self.auth_key)

    def entry(self) -> IntroductionPoint:
        return IntroductionPoint(
            relay_id=self.relay.id,
            relay_address=self.relay.address,
            relay_port=self.relay.port,
            onion_key=self.relay.onion_key_bytes,
            auth_key=self.auth_public,
            enc_key=raw_public(self.enc_key.public_key()),
        )

    def replayed(self, client_pub: bytes) -> bool:
        """Whether this client key was seen before (section 3.3's replay cache); records it."""
        if client_pub in self.seen:
            return True
        self.seen[client_pub] = None
        if len(self.seen) > REPLAY_CACHE_SIZE:
            self.seen.popitem(last=False)
        return False


class OnionService:
    """A hidden service for ``target`` (host, port), reachable as :attr:`address`.

    ``await publish()`` establishes introduction points, then signs and uploads the descriptor;
    :attr:`published` is set once a directory has stored it. Clients' streams (to
    ``virtual_port``, the target's port by default) are connected to ``target``. ``on_access``,
    if given, is awaited for each client before the rendezvous completes; False (or an error)
    refuses it. Revision counters come from ``revision_counter`` (persistent, so they keep
    rising across restarts) or, without one, from the clock in milliseconds.

    The service builds every circuit with ``client`` and uses ``client.consensus``;
    :meth:`republish_if_changed` installs a newer consensus on it.
    """

    def __init__(
        self,
        client: OnionClient,
        service_key: Ed25519PrivateKey,
        target: tuple[str, int],
        *,
        revision_counter: RevisionCounter | None = None,
        intro_points: int = DEFAULT_INTRO_POINTS,
        replication_factor: int = DEFAULT_REPLICATION_FACTOR,
        on_access: AccessCheck | None = None,
        virtual_port: int | None = None,
        hops: int = DEFAULT_HOPS,
        lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES,
        connect_timeout: float = 5.0,
    ) -> None:
        if not 1 <= intro_points <= 10:
            raise ValueError("intro_points must be in 1..10")
        if not 3 <= hops <= MAX_RELAY_EARLY + 1:
            # The last hop of an introduction circuit is added by hand to learn its KH, and the
            # EXTEND2 for it must travel in RELAY_EARLY, which a client only uses beyond hop 1.
            raise ValueError(f"a service's circuits have 3 to {MAX_RELAY_EARLY + 1} hops")
        self.client = client
        self.target = target
        self.virtual_port = target[1] if virtual_port is None else virtual_port
        self.intro_points = intro_points
        self.replication_factor = replication_factor
        self.on_access = on_access
        self.hops = hops
        self.lifetime_minutes = lifetime_minutes
        self.connect_timeout = connect_timeout
        self._service_key = service_key
        self._signing_key = Ed25519PrivateKey.generate()
        self._revisions = revision_counter
        self._last_revision = -1
        self.public_key = public_bytes(service_key)
        self.address = onion_address(self.public_key)
        """Known from the key alone: usable before anything is published."""
        self.published = asyncio.Event()
        """Set once a responsible directory has stored a descriptor."""
        self.descriptor: Descriptor | None = None
        self.stored_on: tuple[str, ...] = ()
        """Ids of the directories that accepted the current descriptor."""
        self.upload_errors: dict[str, BaseException] = {}
        self.introductions = 0
        self.refused = 0
        self.rejected_introductions = 0
        """INTRODUCE2 cells dropped: malformed, failed MAC, replayed, unknown rendezvous point."""
        self._subcred = subcredential(self.public_key)
        self._intros: list[_IntroPoint] = []
        self._published_with: tuple[dict[str, bytes], TimePeriod] | None = None
        self._rendezvous: set[Circuit] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    # -- publishing ---------------------------------------------------------------------------

    @property
    def intro_relays(self) -> list[str]:
        """Ids of the relays currently acting as introduction points."""
        return [ip.relay.id for ip in self._intros if not ip.circuit.closed]

    @property
    def rendezvous_circuits(self) -> list[Circuit]:
        """The open circuits joined to clients, each ending in the client's layer."""
        return [c for c in self._rendezvous if not c.closed]

    async def publish(self) -> Descriptor:
        """Establish introduction points, then sign and upload a new descriptor.

        Raises :class:`NoIntroductionPoints` if no relay accepts an introduction point and
        :class:`DescriptorUploadFailed` if no responsible directory stores the descriptor.
        """
        async with self._lock:
            self._check_open()
            await self._ensure_intro_points()
            return await self._upload()

    async def republish_if_changed(self, consensus: Consensus) -> bool:
        """Adopt ``consensus`` and republish (with a new revision) if the responsible
        directories changed -- membership or a new time period -- or an introduction point was
        lost. Whether it republished."""
        async with self._lock:
            self._check_open()
            self.client.consensus = consensus
            lost = self._drop_dead_intro_points()
            if self._published_with is None:
                await self._ensure_intro_points()
                await self._upload()
                return True
            old_nodes, old_period = self._published_with
            change = responsible_set_change(
                old_nodes,
                hsdir_nodes(consensus),
                self.public_key,
                self.replication_factor,
                old_period,
                new_period=TimePeriod.at(time.time()),
            )
            if not change.changed and not lost:
                return False
            if lost:
                await self._ensure_intro_points()
            await self._upload()
            return True

    def _check_open(self) -> None:
        if self._closed:
            raise HiddenServiceError("the service is closed")

    def _next_revision(self) -> int:
        if self._revisions is not None:
            value = self._revisions.next(self.address)
        else:
            value = max(self._last_revision + 1, int(time.time() * 1000))
        self._last_revision = value
        return value

    def _drop_dead_intro_points(self) -> bool:
        listed = {r.id for r in self.client.consensus.relays}
        live = [ip for ip in self._intros if not ip.circuit.closed and ip.relay.id in listed]
        lost = len(live) != len(self._intros)
        for ip in self._intros:
            if ip not in live:
                self._spawn(_close_quietly(ip.circuit))
        self._intros = live
        return lost

    async def _ensure_intro_points(self) -> None:
        self._drop_dead_intro_points()
        used = {ip.relay.id for ip in self._intros}
        candidates = [r for r in self.client.consensus.relays if r.bandwidth > 0]
        self.client.rng.shuffle(candidates)
        candidates = [r for r in candidates if r.id not in used]
        errors: dict[str, BaseException] = {}
        while len(self._intros) < self.intro_points and candidates:
            batch = candidates[: self.intro_points - len(self._intros)]
            del candidates[: len(batch)]
            results = await asyncio.gather(
                *(self._establish(r) for r in batch), return_exceptions=True
            )
            for relay, result in zip(batch, results, strict=True):
                if isinstance(result, _IntroPoint):
                    self._intros.append(result)
                elif isinstance(result, Exception):
                    errors[relay.id] = result
                else:
                    raise result
        if not self._intros:
            raise NoIntroductionPoints("no relay accepted an introduction point", errors)
        if len(self._intros) < self.intro_points:
            log.warning(
                "onion service %s: only %d of %d introduction points",
                self.address[:16],
                len(self._intros),
                self.intro_points,
            )

    async def _establish(self, relay: RelayInfo) -> _IntroPoint:
        consensus = self.client.consensus
        prefix = path_to(consensus, relay, self.hops, self.client.rng)[:-1]
        circuit = await build_circuit(self.client, prefix)
        try:
            keys = await _extend_to(circuit, relay)
            ip = _IntroPoint(
                relay, circuit, Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
            )
            last = circuit.hops - 1
            circuit.on_relay(
                INTRODUCE2, lambda hop, cell: self._on_introduce2(ip, hop == last, cell)
            )
            ack = relay_waiter(circuit, INTRO_ESTABLISHED)
            await asyncio.sleep(0)
            try:
                circuit.send_relay(ESTABLISH_INTRO, establish_intro_body(ip.auth_key, keys.nonce))
                status, reason = parse_status((await ack).data)
            finally:
                ack.cancel()
            if status != HsStatus.SUCCESS:
                raise IntroPointRefused(f"introduction point {relay.id[:8]}", status, reason)
            return ip
        except BaseException:
            await _close_quietly(circuit)
            raise

    async def _upload(self) -> Descriptor:
        consensus = self.client.consensus
        now = time.time()
        hsdirs = responsible_hsdirs(consensus, self.address, self.replication_factor, now=now)
        descriptor = Descriptor.sign(
            self._service_key,
            self._signing_key,
            revision_counter=self._next_revision(),
            introduction_points=[ip.entry() for ip in self._intros],
            created_at=now,
            lifetime_minutes=self.lifetime_minutes,
        )
        data = descriptor.to_bytes()
        results = await asyncio.gather(
            *(self._store_at(relay, data) for relay in hsdirs), return_exceptions=True
        )
        stored: list[str] = []
        errors: dict[str, BaseException] = {}
        for relay, result in zip(hsdirs, results, strict=True):
            if result is None:
                stored.append(relay.id)
            elif isinstance(result, Exception):
                errors[relay.id] = result
            else:
                raise result
        self.upload_errors = errors
        if not stored:
            raise DescriptorUploadFailed("no directory stored the descriptor", errors)
        self.descriptor = descriptor
        self.stored_on = tuple(stored)
        self._published_with = (hsdir_nodes(consensus), TimePeriod.at(now))
        self.published.set()
        return descriptor

    async def _store_at(self, relay: RelayInfo, data: bytes) -> None:
        path = path_to(self.client.consensus, relay, self.hops, self.client.rng)
        circuit = await build_circuit(self.client, path)
        try:
            await upload_descriptor(circuit, data)
        finally:
            await _close_quietly(circuit)

    # -- introductions ------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_introduce2(self, ip: _IntroPoint, from_intro_point: bool, cell: RelayCell) -> None:
        if not from_intro_point or self._closed:
            return
        if len(self._tasks) >= MAX_PENDING_INTRODUCTIONS:
            self.rejected_introductions += 1
            return
        self._spawn(self._introduced(ip, cell.data))

    async def _introduced(self, ip: _IntroPoint, body: bytes) -> None:
        try:
            client_pub, intro, respond = service_open_introduction(
                body, ip.auth_public, ip.enc_key, self._subcred
            )
        except (CellError, HandshakeError) as exc:
            self.rejected_introductions += 1
            log.info("onion service %s: bad introduction: %s", self.address[:16], exc)
            return
        if ip.replayed(client_pub):
            self.rejected_introductions += 1
            return
        rendezvous = self._rendezvous_point(intro)
        if rendezvous is None:
            self.rejected_introductions += 1
            log.info("onion service %s: rendezvous point not in the consensus", self.address[:16])
            return
        self.introductions += 1
        info = ClientInfo(client_pub.hex(), intro.credential, ip.relay.id, rendezvous.id)
        decision = asyncio.ensure_future(self._decide(info))
        try:
            path = path_to(self.client.consensus, rendezvous, self.hops, self.client.rng)
            circuit = await build_circuit(self.client, path)
        except BaseException as exc:
            decision.cancel()
            if isinstance(exc, Exception):
                log.info("onion service %s: no rendezvous circuit: %s", self.address[:16], exc)
                return
            raise
        try:
            allowed, reason = await decision
            handshake_info, keys = respond()
            circuit.send_relay(RENDEZVOUS1, intro.cookie + handshake_info)
            circuit.add_virtual_hop(keys, reverse=True)
            if not allowed:
                self.refused += 1
                circuit.send_relay(HS_ACCESS, status_body(HsStatus.ACCESS_DENIED, reason))
                await _close_quietly(circuit)
                return
            circuit.begin_handler = self._serve
            self._rendezvous = {c for c in self._rendezvous if not c.closed}
            self._rendezvous.add(circuit)
            circuit.send_relay(HS_ACCESS, status_body(HsStatus.SUCCESS))
        except OnionError as exc:
            # The client or a relay hung up mid-rendezvous: nobody is left to tell.
            log.info("onion service %s: rendezvous failed: %s", self.address[:16], exc)
            await _close_quietly(circuit)
        except BaseException:
            await _close_quietly(circuit)
            raise

    def _rendezvous_point(self, intro: Introduction) -> RelayInfo | None:
        try:
            relay = self.client.consensus.get(intro.node_id.hex().upper())
        except KeyError:
            return None
        listed = (relay.ed25519_bytes, relay.onion_key_bytes, relay.address, relay.port)
        named = (intro.ed25519_id, intro.onion_key, intro.address, intro.port)
        return relay if listed == named else None

    async def _decide(self, info: ClientInfo) -> tuple[bool, str]:
        if self.on_access is None:
            return True, ""
        try:
            allowed = await self.on_access(info)
        except Exception:
            log.exception("onion service %s: the access check failed", self.address[:16])
            return False, "the service could not check access"
        return (True, "") if allowed else (False, "access refused by the service")

    async def _serve(self, stream: Stream, host: str, port: int) -> None:
        if port != self.virtual_port:
            stream.refuse(EndReason.EXITPOLICY)
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self.connect_timeout
            )
        except (OSError, TimeoutError):
            stream.refuse(EndReason.CONNECTREFUSED)
            return
        try:
            stream.accept()  # the default 0.0.0.0: the client learns no address
        except OnionError:
            writer.close()
            raise
        await pipe(stream, reader, writer)

    async def close(self) -> None:
        """Close introduction and rendezvous circuits; the client stays open."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for ip in self._intros:
            await _close_quietly(ip.circuit)
        for circuit in self._rendezvous:
            await _close_quietly(circuit)
        self._intros.clear()
        self._rendezvous.clear()

    async def __aenter__(self) -> OnionService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- the client -------------------------------------------------------------------------------


async def fetch_descriptor(
    client: OnionClient,
    address: str,
    consensus: Consensus,
    *,
    replication_factor: int = DEFAULT_REPLICATION_FACTOR,
    hops: int = DEFAULT_HOPS,
) -> Descriptor:
    """``address``'s descriptor from a responsible directory, verified against the address.

    Tries the responsible directories in random order; raises :class:`DescriptorUnavailable`
    (``errors`` per directory) if none has one that verifies.
    """
    address = canonical_onion_address(address)
    hsdirs = responsible_hsdirs(consensus, address, replication_factor)
    client.rng.shuffle(hsdirs)
    errors: dict[str, BaseException] = {}
    for relay in hsdirs:
        try:
            circuit = await build_circuit(client, path_to(consensus, relay, hops, client.rng))
            try:
                data = await fetch_descriptor_bytes(circuit, address)
            finally:
                await _close_quietly(circuit)
            if data is None:
                raise HSDirError(HSDirStatus.NOT_FOUND)
            descriptor = Descriptor.from_bytes(data)
            descriptor.verify(address)
        except (OnionError, TimeoutError, PathError, DescriptorError) as exc:
            errors[relay.id] = exc
            continue
        return descriptor
    raise DescriptorUnavailable(f"no verified descriptor for {address}", errors)


async def _expect_status(circuit: Circuit, command: int, send: int, body: bytes) -> tuple[int, str]:
    reply = relay_waiter(circuit, command)
    await asyncio.sleep(0)
    try:
        circuit.send_relay(send, body)
        cell = await reply
    finally:
        reply.cancel()
    try:
        return parse_status(cell.data)
    except CellError as exc:
        circuit.violation(str(exc))
        raise HiddenServiceError(f"malformed answer: {exc}") from exc


async def connect_onion(
    client: OnionClient,
    address: str,
    consensus: Consensus,
    *,
    port: int,
    replication_factor: int = DEFAULT_REPLICATION_FACTOR,
    credential: bytes = b"",
    hops: int = DEFAULT_HOPS,
    timeout: float | None = None,
) -> Stream:
    """A stream to port ``port`` of the onion service ``address``.

    Fetches and verifies the descriptor, sets up a rendezvous point, introduces itself through
    an introduction point (presenting ``credential`` to the service's access check) and opens
    the stream over the joined circuit, ``hops`` relays on this side. ``stream.end`` is that
    circuit; close it when done.

    Raises :class:`DescriptorUnavailable`, :class:`IntroductionFailed`, :class:`AccessRefused`,
    :class:`HiddenServiceError` (rendezvous), :class:`~fogcoord.onion.streams.StreamClosed`
    (the service refused the port), or :class:`~fogcoord.onion.streams.CircuitClosed` /
    :class:`TimeoutError`.
    """
    if len(credential) > MAX_CREDENTIAL_LEN:
        raise ValueError(f"a credential is at most {MAX_CREDENTIAL_LEN} bytes")
    address = canonical_onion_address(address)
    service_key = parse_onion_address(address)
    descriptor = await fetch_descriptor(
        client, address, consensus, replication_factor=replication_factor, hops=hops
    )
    listed = {r.id: r for r in consensus.relays}
    intros = [
        (listed[ip.relay_id], ip)
        for ip in descriptor.introduction_points
        if ip.relay_id in listed and listed[ip.relay_id].onion_key_bytes == ip.onion_key
    ]
    if not intros:
        raise IntroductionFailed("no introduction point of the descriptor is in the consensus", {})
    client.rng.shuffle(intros)
    intro_ids = {relay.id for relay, _ in intros}
    candidates = [r for r in consensus.relays if r.bandwidth > 0 and r.id not in intro_ids]
    if not candidates:
        candidates = [r for r in consensus.relays if r.bandwidth > 0]
    rendezvous = client.rng.choice(candidates)
    circuit = await build_circuit(client, path_to(consensus, rendezvous, hops, client.rng))
    try:
        return await _rendezvous(
            client,
            consensus,
            circuit,
            rendezvous,
            intros,
            service_key,
            address,
            port,
            credential,
            hops,
            timeout,
        )
    except BaseException:
        await _close_quietly(circuit)
        raise


async def _rendezvous(
    client: OnionClient,
    consensus: Consensus,
    circuit: Circuit,
    rendezvous: RelayInfo,
    intros: list[tuple[RelayInfo, IntroductionPoint]],
    service_key: bytes,
    address: str,
    port: int,
    credential: bytes,
    hops: int,
    timeout: float | None,
) -> Stream:
    cookie = os.urandom(COOKIE_LEN)
    status, reason = await _expect_status(
        circuit, RENDEZVOUS_ESTABLISHED, ESTABLISH_RENDEZVOUS, cookie
    )
    if status != HsStatus.SUCCESS:
        raise HsRefused(f"rendezvous point {rendezvous.id[:8]}", status, reason)

    loop = asyncio.get_running_loop()
    joined: asyncio.Future[None] = loop.create_future()
    verdict: asyncio.Future[bytes] = loop.create_future()
    attempts: list[ClientHandshake] = []
    relay_hop = circuit.hops - 1

    def on_rendezvous2(hop: int, cell: RelayCell) -> None:
        # Runs as the cell is decrypted, so the service's layer is in place before its next
        # cell (the access verdict, right behind this one) has to be decrypted.
        if joined.done() or hop != relay_hop:
            return
        for attempt in attempts:
            try:
                keys = attempt.complete(cell.data)
            except HandshakeError:
                continue
            circuit.add_virtual_hop(keys)
            joined.set_result(None)
            return
        joined.set_exception(HiddenServiceError("RENDEZVOUS2 does not complete any handshake"))

    def on_verdict(hop: int, cell: RelayCell) -> None:
        # Only the service's own layer may deliver it, never a relay on the way.
        if joined.done() and hop == relay_hop + 1 and not verdict.done():
            verdict.set_result(cell.data)

    circuit.on_relay(RENDEZVOUS2, on_rendezvous2)
    circuit.on_relay(HS_ACCESS, on_verdict)
    subcred = subcredential(service_key)
    introduction = Introduction(
        cookie=cookie,
        onion_key=rendezvous.onion_key_bytes,
        address=rendezvous.address,
        port=rendezvous.port,
        node_id=rendezvous.node_id,
        ed25519_id=rendezvous.ed25519_bytes,
        credential=credential,
    )
    errors: dict[str, BaseException] = {}
    for relay, ip in intros:
        attempt = ClientHandshake(auth_key=ip.auth_key, enc_key=ip.enc_key)
        try:
            body = attempt.introduce1(introduction, subcred)
            attempts.append(attempt)
            intro_circuit = await build_circuit(client, path_to(consensus, relay, hops, client.rng))
            try:
                status, reason = await _expect_status(
                    intro_circuit, INTRODUCE_ACK, INTRODUCE1, body
                )
            finally:
                await _close_quietly(intro_circuit)
        except (OnionError, TimeoutError, PathError, HandshakeError) as exc:
            errors[relay.id] = exc
            continue
        if status == HsStatus.SUCCESS:
            break
        errors[relay.id] = HsRefused(f"introduction point {relay.id[:8]}", status, reason)
    else:
        raise IntroductionFailed("no introduction point passed the introduction on", errors)

    await await_on_circuit(circuit, joined, timeout)
    try:
        status, reason = parse_status(await await_on_circuit(circuit, verdict, timeout))
    except CellError as exc:
        raise HiddenServiceError(f"malformed access verdict: {exc}") from exc
    if status != HsStatus.SUCCESS:
        raise AccessRefused(f"onion service {address[:16]}", status, reason)
    return await circuit.open_stream(address, port, timeout=timeout)


__all__ = [
    "DEFAULT_MAX_SERVICES_PER_NODE",
    "ESTABLISH_INTRO",
    "ESTABLISH_RENDEZVOUS",
    "HS_ACCESS",
    "INTRODUCE1",
    "INTRODUCE2",
    "INTRODUCE_ACK",
    "INTRO_ESTABLISHED",
    "MAX_CREDENTIAL_LEN",
    "RENDEZVOUS1",
    "RENDEZVOUS2",
    "RENDEZVOUS_ESTABLISHED",
    "AccessCheck",
    "AccessRefused",
    "ClientHandshake",
    "ClientInfo",
    "DescriptorUnavailable",
    "DescriptorUploadFailed",
    "HiddenServiceError",
    "HsRefused",
    "HsStatus",
    "IntroPointRefused",
    "Introduction",
    "IntroductionFailed",
    "NoIntroductionPoints",
    "OnionService",
    "build_circuit",
    "connect_onion",
    "establish_intro_body",
    "fetch_descriptor",
    "install_hs_relay",
    "intro_point_count",
    "parse_establish_intro",
    "parse_status",
    "path_to",
    "service_open_introduction",
    "status_body",
    "subcredential",
]
