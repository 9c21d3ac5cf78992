"""The ntor circuit handshake (tor-spec section 5.1.4) and its key expansion (section 5.2.2).

ntor (Goldberg, Stebila and Ustaoglu) gives a client keys it shares only with the relay that
holds the private half of a known curve25519 *onion key* B, in one round trip, with forward
secrecy from the ephemeral pair on each side::

    client:  x, X = KEYGEN()                       sends  ID | B | X          (84 bytes)
    relay:   y, Y = KEYGEN()
             secret_input = EXP(X,y) | EXP(X,b) | ID | B | X | Y | PROTOID
             KEY_SEED = H(secret_input, t_key)
             verify   = H(secret_input, t_verify)
             auth_input = verify | ID | B | Y | X | PROTOID | "Server"
                                                   sends  Y | H(auth_input, t_mac)  (64 bytes)
    client:  the same secret_input from EXP(Y,x) | EXP(B,x); checks AUTH.

with ``H(x, t)`` = HMAC-SHA256 keyed by ``t``. Both sides refuse a handshake in which a
Diffie-Hellman output is the all-zero point (a small-order public key).

Key expansion is HKDF-SHA256 (RFC 5869) with salt ``t_key``, input key material
``secret_input`` and info ``m_expand``; since HKDF-Extract is ``HMAC(salt, IKM)``, its PRK is
exactly ``KEY_SEED``. The output is cut into ``Df | Db | Kf | Kb | KH``: the two 20-byte seeds of
the running SHA-1 digests, the two AES-128 keys, and a 20-byte nonce that the hidden-service
protocol uses in place of TAP's KH.

Identity: tor's ``ID`` is the SHA-1 of the relay's RSA identity key. Relays here have only an
Ed25519 identity, so ``ID`` is the SHA-1 of the 32 raw bytes of the Ed25519 public key -- still
20 bytes, still binding the handshake to one relay's identity (see :func:`node_id`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOID = b"ntor-curve25519-sha256-1"
T_MAC = PROTOID + b":mac"
T_KEY = PROTOID + b":key_extract"
T_VERIFY = PROTOID + b":verify"
M_EXPAND = PROTOID + b":key_expand"

ID_LEN = 20
G_LEN = 32
H_LEN = 32
DIGEST_LEN = 20
KEY_LEN = 16
KEY_MATERIAL_LEN = 2 * DIGEST_LEN + 2 * KEY_LEN + DIGEST_LEN
ONIONSKIN_LEN = ID_LEN + 2 * G_LEN
REPLY_LEN = G_LEN + H_LEN


class HandshakeError(Exception):
    """A handshake that must not complete: wrong relay, bad authenticator, degenerate key."""


@dataclass(frozen=True)
class CircuitKeys:
    """The keys one hop shares with the circuit's origin (tor-spec section 5.2.2)."""

    df: bytes
    """Seed of the forward running digest (origin -> hop)."""
    db: bytes
    """Seed of the backward running digest (hop -> origin)."""
    kf: bytes
    """AES-128 key for the forward direction."""
    kb: bytes
    """AES-128 key for the backward direction."""
    nonce: bytes
    """20 bytes for protocols built on top (the hidden-service KH)."""

    @classmethod
    def from_material(cls, km: bytes) -> CircuitKeys:
        if len(km) < KEY_MATERIAL_LEN:
            raise ValueError(f"need {KEY_MATERIAL_LEN} bytes of key material, got {len(km)}")
        d, k = DIGEST_LEN, KEY_LEN
        return cls(
            df=km[:d],
            db=km[d : 2 * d],
            kf=km[2 * d : 2 * d + k],
            kb=km[2 * d + k : 2 * d + 2 * k],
            nonce=km[2 * d + 2 * k : 3 * d + 2 * k],
        )


def node_id(ed25519_public: bytes) -> bytes:
    """The 20-byte ntor ``ID`` of a relay: SHA-1 of its raw Ed25519 identity public key."""
    if len(ed25519_public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    digest = hashes.Hash(hashes.SHA1())
    digest.update(ed25519_public)
    return digest.finalize()


def _h(message: bytes, key: bytes) -> bytes:
    mac = HMAC(key, hashes.SHA256())
    mac.update(message)
    return mac.finalize()


def expand(secret_input: bytes, length: int = KEY_MATERIAL_LEN) -> bytes:
    """KDF-RFC5869: HKDF-SHA256(salt=t_key, IKM=secret_input, info=m_expand)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=T_KEY, info=M_EXPAND).derive(
        secret_input
    )


def raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _exp(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except (ValueError, InvalidKey) as exc:
        # cryptography refuses an all-zero shared secret: the "point at infinity" check.
        raise HandshakeError("degenerate curve25519 key in the handshake") from exc


def _derive(
    xy: bytes, xb: bytes, ident: bytes, b_pub: bytes, x_pub: bytes, y_pub: bytes
) -> tuple[bytes, bytes]:
    """``(key material, AUTH)`` from the two shared secrets and the public values."""
    secret_input = xy + xb + ident + b_pub + x_pub + y_pub + PROTOID
    verify = _h(secret_input, T_VERIFY)
    auth_input = verify + ident + b_pub + y_pub + x_pub + PROTOID + b"Server"
    return expand(secret_input), _h(auth_input, T_MAC)


@dataclass(frozen=True)
class ClientHandshake:
    """The client's state between sending its onionskin and receiving the relay's reply."""

    ident: bytes
    onion_key: bytes
    private: X25519PrivateKey
    public: bytes

    @property
    def onionskin(self) -> bytes:
        """NODEID | KEYID(B) | CLIENT_KP: the 84-byte CREATE2/EXTEND2 handshake data."""
        return self.ident + self.onion_key + self.public

    def complete(self, reply: bytes) -> CircuitKeys:
        """Check the relay's ``Y | AUTH`` and derive the keys; :class:`HandshakeError` if bad."""
        if len(reply) != REPLY_LEN:
            raise HandshakeError(f"an ntor reply is {REPLY_LEN} bytes, got {len(reply)}")
        y_pub, auth = reply[:G_LEN], reply[G_LEN:]
        xy = _exp(self.private, y_pub)
        xb = _exp(self.private, self.onion_key)
        km, expected = _derive(xy, xb, self.ident, self.onion_key, self.public, y_pub)
        if not hmac.compare_digest(expected, auth):
            raise HandshakeError("the relay's ntor authenticator does not verify")
        return CircuitKeys.from_material(km)


def client_start(
    ident: bytes, onion_key: bytes, *, ephemeral: X25519PrivateKey | None = None
) -> ClientHandshake:
    """Begin a handshake with the relay whose ID is ``ident`` and whose onion key is ``onion_key``.

    ``ephemeral`` is for test vectors only; normally a fresh key is generated.
    """
    if len(ident) != ID_LEN or len(onion_key) != G_LEN:
        raise ValueError("ntor needs a 20-byte ID and a 32-byte onion key")
    private = ephemeral or X25519PrivateKey.generate()
    return ClientHandshake(ident, onion_key, private, raw_public(private.public_key()))


def server_handshake(
    onionskin: bytes,
    ident: bytes,
    onion_private: X25519PrivateKey,
    *,
    ephemeral: X25519PrivateKey | None = None,
) -> tuple[bytes, CircuitKeys]:
    """The relay's side: ``(reply, keys)`` or :class:`HandshakeError`.

    The onionskin must name this relay (``ident``) and its current onion key; anything else is
    refused, since the client would then be talking to a relay it did not choose.
    """
    if len(onionskin) != ONIONSKIN_LEN:
        raise HandshakeError(f"an ntor onionskin is {ONIONSKIN_LEN} bytes, got {len(onionskin)}")
    b_pub = raw_public(onion_private.public_key())
    their_id = onionskin[:ID_LEN]
    their_b = onionskin[ID_LEN : ID_LEN + G_LEN]
    x_pub = onionskin[ID_LEN + G_LEN :]
    if not (hmac.compare_digest(their_id, ident) and hmac.compare_digest(their_b, b_pub)):
        raise HandshakeError("the onionskin is for another relay or another onion key")
    private = ephemeral or X25519PrivateKey.generate()
    y_pub = raw_public(private.public_key())
    xy = _exp(private, x_pub)
    xb = _exp(onion_private, x_pub)
    km, auth = _derive(xy, xb, ident, b_pub, x_pub, y_pub)
    return y_pub + auth, CircuitKeys.from_material(km)


__all__ = [
    "KEY_MATERIAL_LEN",
    "ONIONSKIN_LEN",
    "PROTOID",
    "REPLY_LEN",
    "CircuitKeys",
    "ClientHandshake",
    "HandshakeError",
    "client_start",
    "expand",
    "node_id",
    "server_handshake",
]
