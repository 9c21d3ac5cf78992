"""Version 3 onion addresses: a hidden service's name is its public key.

A v3 onion address is self-authenticating: it *is* the service's Ed25519 master identity key
(rend-spec-v3 section 1.2 [NAMING]), so whoever knows the address can check every signature the
service makes without trusting a directory. Section 6 [ONIONADDRESS] fixes the encoding::

    onion_address = base32(PUBKEY | CHECKSUM | VERSION) + ".onion"
    CHECKSUM      = SHA3-256(".onion checksum" | PUBKEY | VERSION)[:2]
    VERSION       = 0x03

32 + 2 + 1 = 35 bytes are exactly 280 bits, i.e. 56 base32 characters with no padding and no
spare bits, so every 56-character string decodes to exactly one byte string. The two-byte
checksum catches typing mistakes, not forgery: a random change survives it with probability
2**-16. The version byte and the checksum bytes come last, so a change to any of the final four
characters is always detected.

Addresses are produced and accepted in lower case only. Base32 itself is case-insensitive, but
allowing both cases would give one key many spellings; with one canonical string per key an
address can be compared, indexed and used as a database key as plain text.

Section 2.2.7 also asks clients to reject keys with a torsion component; that needs Edwards
curve arithmetic, which the ``cryptography`` package does not expose, so it is not done here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

ONION_SUFFIX = ".onion"
VERSION = 3
PUBKEY_LEN = 32
CHECKSUM_LEN = 2
ADDRESS_LEN = 56
"""Characters before ``.onion``."""

_CHECKSUM_LABEL = b".onion checksum"
_BASE32_LOWER = re.compile(r"[a-z2-7]*")


class OnionAddressError(ValueError):
    """An onion address that is malformed or does not check out."""


def _checksum(pubkey: bytes, version: int) -> bytes:
    digest = hashlib.sha3_256(_CHECKSUM_LABEL + pubkey + bytes([version])).digest()
    return digest[:CHECKSUM_LEN]


def onion_address(ed25519_public_key: bytes) -> str:
    """The canonical (lower-case, ``.onion``-suffixed) v3 address of a 32-byte Ed25519 key."""
    if len(ed25519_public_key) != PUBKEY_LEN:
        raise OnionAddressError(
            f"an Ed25519 public key is {PUBKEY_LEN} bytes, got {len(ed25519_public_key)}"
        )
    raw = ed25519_public_key + _checksum(ed25519_public_key, VERSION) + bytes([VERSION])
    return base64.b32encode(raw).decode("ascii").lower() + ONION_SUFFIX


def parse_onion_address(addr: str) -> bytes:
    """The Ed25519 public key an address encodes, with or without the ``.onion`` suffix.

    Raises :class:`OnionAddressError` naming the first thing wrong: length, alphabet (including
    upper case), version, or checksum.
    """
    label = addr.removesuffix(ONION_SUFFIX)
    if len(label) != ADDRESS_LEN:
        raise OnionAddressError(
            f"invalid length: a v3 onion address has {ADDRESS_LEN} characters before "
            f"{ONION_SUFFIX!r}, got {len(label)}"
        )
    if not _BASE32_LOWER.fullmatch(label):
        bad = next(c for c in label if not _BASE32_LOWER.fullmatch(c))
        hint = " (addresses are lower case)" if "A" <= bad <= "Z" else ""
        raise OnionAddressError(f"not base32: {bad!r} is outside a-z and 2-7{hint}")
    try:
        raw = base64.b32decode(label.upper())
    except binascii.Error as exc:  # pragma: no cover - the alphabet and length were checked
        raise OnionAddressError(f"not base32: {exc}") from exc
    pubkey = raw[:PUBKEY_LEN]
    checksum = raw[PUBKEY_LEN : PUBKEY_LEN + CHECKSUM_LEN]
    version = raw[-1]
    if version != VERSION:
        raise OnionAddressError(f"unsupported onion address version {version}, want {VERSION}")
    if checksum != _checksum(pubkey, version):
        raise OnionAddressError("invalid checksum: the address is mistyped or corrupted")
    return pubkey


def is_valid_onion_address(addr: str) -> bool:
    """Whether :func:`parse_onion_address` accepts ``addr``."""
    try:
        parse_onion_address(addr)
    except OnionAddressError:
        return False
    return True


def canonical_onion_address(addr: str) -> str:
    """``addr`` validated and spelled the one way :func:`onion_address` spells it."""
    return onion_address(parse_onion_address(addr))
