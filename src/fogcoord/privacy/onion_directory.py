"""The coordinator as the onion network's directory authority.

Relays (any agent started with ``--relay``, or ``fogcoord relay``) register their descriptor,
signed with their own Ed25519 identity key so nobody can publish a relay in another's name; the
owner is the authenticated principal, never a field of the body. The authority publishes the
relays as a consensus signed with its Ed25519 key, which clients verify before building circuits.
The authority's key is created once and kept in the store, so clients can pin it.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.engine import Engine

from fogcoord.contracts.errors import Forbidden, NotFound, ValidationFailed
from fogcoord.onion.directory import (
    Authority,
    ConsensusError,
    RelayInfo,
    SignedConsensus,
    registration_message,
)

metadata = sa.MetaData()
keys_t = sa.Table(
    "privacy_onion_keys",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("private_key", sa.LargeBinary, nullable=False),
)
KEY_NAME = "directory"


class OnionDirectory:
    def __init__(self, engine: Engine) -> None:
        metadata.create_all(engine)
        with engine.begin() as conn:
            row = conn.execute(
                sa.select(keys_t.c.private_key).where(keys_t.c.name == KEY_NAME)
            ).first()
            if row is None:
                key = Ed25519PrivateKey.generate()
                raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
                conn.execute(keys_t.insert().values(name=KEY_NAME, private_key=raw))
            else:
                key = Ed25519PrivateKey.from_private_bytes(bytes(row[0]))
        self.authority = Authority(key)
        self._lock = threading.Lock()

    @property
    def public_key_hex(self) -> str:
        return self.authority.public_key_hex

    def register(self, info: dict[str, Any], signature_hex: str, owner: str) -> RelayInfo:
        """Add or refresh a relay; its descriptor must be signed by its own identity key."""
        body = {**info, "owner": owner}
        try:
            relay = RelayInfo.from_dict(body)
        except (ConsensusError, KeyError, TypeError, ValueError) as exc:
            raise ValidationFailed("relay", str(exc)) from None
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(relay.ed25519)).verify(
                bytes.fromhex(signature_hex), registration_message(info)
            )
        except (InvalidSignature, ValueError):
            raise ValidationFailed(
                "signature", "not an Ed25519 signature of the descriptor by the relay's identity"
            ) from None
        with self._lock:
            current = {r.id: r for r in self.authority.relays()}.get(relay.id)
            if current is not None and current.owner != owner:
                raise Forbidden("this relay is registered by another owner", relay=relay.id)
            self.authority.add(relay)
        return relay

    def remove(self, relay_id: str, who: str, *, admin: bool) -> None:
        with self._lock:
            current = {r.id: r for r in self.authority.relays()}.get(relay_id)
            if current is None:
                raise NotFound("relay", relay_id)
            if current.owner != who and not admin:
                raise Forbidden("only the relay's owner or an operator may remove it")
            self.authority.remove(relay_id)

    def consensus(self) -> SignedConsensus:
        with self._lock:
            return self.authority.consensus()
