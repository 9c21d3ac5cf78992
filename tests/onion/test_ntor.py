"""The ntor handshake against a published test vector, and its refusals."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fogcoord.onion import ntor
from fogcoord.onion.identity import RelayIdentity


def test_published_vector() -> None:
    """The ntor v1 test vector of the Arti project (crate ``tor-proto``, file
    ``crates/tor-proto/src/crypto/handshake/ntor.rs``, test ``testvec``): fixed private keys for
    the relay's onion key ``b``, the client's ``x`` and the relay's ``y``, a 20-byte ID, and the
    expected CREATE2 onionskin, CREATED2 reply and the first 72 bytes of key material
    (Df | Db | Kf | Kb)."""
    h = bytes.fromhex
    b = X25519PrivateKey.from_private_bytes(
        h("4820544f4c4420594f5520444f474954204b454550532048415050454e494e47")
    )
    x = X25519PrivateKey.from_private_bytes(
        h("706f6461792069207075742e2e2e2e2e2e2e2e4a454c4c59206f6e2074686973")
    )
    y = X25519PrivateKey.from_private_bytes(
        h("70686520737175697272656c2e2e2e2e2e2e2e2e686173206869732067616d65")
    )
    ident = h("69546f6c64596f7541626f75745374616972732e")
    b_pub = h("ccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471")
    onionskin = h(
        "69546f6c64596f7541626f75745374616972732e"
        "ccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471"
        "e65dfdbef8b2635837fe2cebc086a8096eae3213e6830dc407516083d412b078"
    )
    reply = h(
        "390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a37"
        "1cbdf68b89923e1f85e8e18ee6e805ea333fe4849c790ffd2670bd80fec95cc8"
    )
    keys = h(
        "0c62dee7f48893370d0ef896758d35729867beef1a5121df80e00f79ed349af3"
        "9b51cae125719182f19d932a667dae1afbf2e336e6910e7822223e763afad0a1"
        "3342157969dc6b79"
    )
    assert ntor.raw_public(b.public_key()) == b_pub
    client = ntor.client_start(ident, b_pub, ephemeral=x)
    assert client.onionskin == onionskin
    server_reply, server_keys = ntor.server_handshake(onionskin, ident, b, ephemeral=y)
    assert server_reply == reply
    client_keys = client.complete(reply)
    for k in (client_keys, server_keys):
        assert k.df + k.db + k.kf + k.kb == keys
    assert client_keys == server_keys
    assert len(client_keys.nonce) == 20


def test_constants_are_the_specs() -> None:
    assert ntor.PROTOID == b"ntor-curve25519-sha256-1"
    assert ntor.T_MAC == b"ntor-curve25519-sha256-1:mac"
    assert ntor.T_KEY == b"ntor-curve25519-sha256-1:key_extract"
    assert ntor.T_VERIFY == b"ntor-curve25519-sha256-1:verify"
    assert ntor.M_EXPAND == b"ntor-curve25519-sha256-1:key_expand"
    assert ntor.ONIONSKIN_LEN == 84
    assert ntor.REPLY_LEN == 64


def test_round_trip_with_a_relay_identity() -> None:
    relay = RelayIdentity()
    assert len(relay.node_id) == 20
    client = ntor.client_start(relay.node_id, relay.onion_public)
    reply, server_keys = ntor.server_handshake(client.onionskin, relay.node_id, relay.onion_key)
    assert client.complete(reply) == server_keys


def test_wrong_relay_or_key_is_refused() -> None:
    relay, other = RelayIdentity(), RelayIdentity()
    to_other = ntor.client_start(other.node_id, relay.onion_public)
    with pytest.raises(ntor.HandshakeError, match="another relay"):
        ntor.server_handshake(to_other.onionskin, relay.node_id, relay.onion_key)
    wrong_key = ntor.client_start(relay.node_id, other.onion_public)
    with pytest.raises(ntor.HandshakeError):
        ntor.server_handshake(wrong_key.onionskin, relay.node_id, relay.onion_key)
    with pytest.raises(ntor.HandshakeError, match="84"):
        ntor.server_handshake(b"short", relay.node_id, relay.onion_key)


def test_tampered_reply_is_refused() -> None:
    relay = RelayIdentity()
    client = ntor.client_start(relay.node_id, relay.onion_public)
    reply, _ = ntor.server_handshake(client.onionskin, relay.node_id, relay.onion_key)
    bad = bytearray(reply)
    bad[40] ^= 1
    with pytest.raises(ntor.HandshakeError, match="authenticator"):
        client.complete(bytes(bad))
    with pytest.raises(ntor.HandshakeError):
        client.complete(reply[:-1])


def test_degenerate_keys_are_refused() -> None:
    relay = RelayIdentity()
    client = ntor.client_start(relay.node_id, relay.onion_public)
    zero_x = client.onionskin[:52] + bytes(32)  # X = 0: every shared secret would be zero
    with pytest.raises(ntor.HandshakeError, match="degenerate"):
        ntor.server_handshake(zero_x, relay.node_id, relay.onion_key)
    with pytest.raises(ntor.HandshakeError, match="degenerate"):
        client.complete(bytes(32) + bytes(32))
