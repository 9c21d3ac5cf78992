"""API keys: generation, hashing, parsing.

A key is ``fc_<key id>_<secret>`` with a 256-bit random secret. Only SHA-256 of the whole key is
stored. A fast hash is right here, unlike for passwords: the secret has full entropy, so there is
nothing for a slow KDF to protect, and authentication stays on the hot path of every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "fc"
_KEY_RE = re.compile(r"^fc_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def generate() -> tuple[str, str]:
    """A new ``(key_id, key)``."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, or None."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def well_formed(key: str) -> bool:
    return key_id_of(key) is not None


def matches(key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(key), stored_digest)
