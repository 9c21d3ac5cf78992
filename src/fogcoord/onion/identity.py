"""A relay's long-term keys (tor-spec section 1.1, simplified to two keys).

Tor relays hold an RSA identity, an Ed25519 master identity with a signing subkey, a TLS link
key and a curve25519 *onion key*. Here a relay holds two:

* an **Ed25519 identity key**, which names the relay (its fingerprint is SHA-1 of the public
  key, the 20-byte ``ID`` of the ntor handshake -- :func:`fogcoord.onion.ntor.node_id`) and
  signs on its behalf;
* an **X25519 onion key** ``b``, whose public half ``B`` clients use in ntor. Only the holder
  of ``b`` can answer a handshake, so a client that takes ``B`` from a signed consensus knows
  it is talking to the relay the directory listed, even through relays it does not trust.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fogcoord.onion.ntor import node_id


@dataclass(frozen=True)
class RelayIdentity:
    """An Ed25519 identity key and an X25519 onion key."""

    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    onion_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    @property
    def ed25519_public(self) -> bytes:
        return self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def onion_public(self) -> bytes:
        return self.onion_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def node_id(self) -> bytes:
        """The 20-byte ntor ``ID``: SHA-1 of the Ed25519 public key."""
        return node_id(self.ed25519_public)

    @property
    def fingerprint(self) -> str:
        """``node_id`` in upper-case hex, as relay fingerprints are written."""
        return self.node_id.hex().upper()

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message)


__all__ = ["RelayIdentity"]
