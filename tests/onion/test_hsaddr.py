"""v3 onion address encoding, checked against Tor's published vectors.

Sources of the vectors:

* tor, ``src/test/test_hs_common.c``, ``test_build_address``: the RFC 8032 test key
  ``d75a9801...f707511a`` encodes to ``25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid``
  (produced there by ``hs_build_address.py``, independently of tor's C code).
* tor, ``src/test/test_hs_common.c``, ``test_validate_address``: addresses rejected for their
  length (``blah``, a 57-character one), for an invalid checksum (two addresses from proposal
  224's drafts, written before the checksum format was settled) and for not being base32.
* torspec, ``rend-spec-v3.txt`` section 6 [ONIONADDRESS]: three example addresses, all valid.
"""

from __future__ import annotations

import base64
import hashlib
import string

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.onion.hsaddr import (
    ADDRESS_LEN,
    OnionAddressError,
    canonical_onion_address,
    is_valid_onion_address,
    onion_address,
    parse_onion_address,
)

RFC8032_PUBKEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
TOR_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid"

SPEC_EXAMPLES = [
    "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion",
    "sp3k262uwy4r2k3ycr5awluarykdpag6a7y33jxop4cs2lu5uz5sseqd.onion",
    "xa4r2iadxm55fbnqgwwi5mymqdcofiu3w6rpbtqn7b2dyn7mgwj64jyd.onion",
]

# Every character a mutation may put in an address: the base32 alphabet, upper case (a different
# spelling of the same bits), and separators.
MUTATION_ALPHABET = string.ascii_lowercase + "234567" + string.ascii_uppercase + "01890.-_ "

keys = st.binary(min_size=32, max_size=32)


def test_tor_build_address_vector() -> None:
    assert onion_address(RFC8032_PUBKEY) == TOR_ADDRESS + ".onion"
    assert parse_onion_address(TOR_ADDRESS + ".onion") == RFC8032_PUBKEY
    assert parse_onion_address(TOR_ADDRESS) == RFC8032_PUBKEY


def test_the_rfc8032_vector_is_the_public_key_of_its_secret_key() -> None:
    # RFC 8032 section 7.1, TEST 1: the address above belongs to a real Ed25519 key pair.
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = (
        Ed25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    assert public == RFC8032_PUBKEY


@pytest.mark.parametrize("address", SPEC_EXAMPLES)
def test_spec_examples_parse_and_re_encode(address: str) -> None:
    assert onion_address(parse_onion_address(address)) == address


def test_the_encoding_is_the_documented_formula() -> None:
    checksum = hashlib.sha3_256(b".onion checksum" + RFC8032_PUBKEY + b"\x03").digest()[:2]
    expected = base64.b32encode(RFC8032_PUBKEY + checksum + b"\x03").decode().lower() + ".onion"
    assert onion_address(RFC8032_PUBKEY) == expected


@pytest.mark.parametrize(
    "address", ["blah", "p3xnclpu4mu22dwaurjtsybyqk4xfjmcfz6z62yl24uwmhjatiwnlnadb", ""]
)
def test_tor_vectors_with_a_bad_length(address: str) -> None:
    with pytest.raises(OnionAddressError, match="invalid length"):
        parse_onion_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "l5satjgud6gucryazcyvyvhuxhr74u6ygigiuyixe3a6ysis67ororad",
        "btojiu7nu5y5iwut64eufevogqdw4wmqzugnoluw232r4t3ecsfv37ad",
    ],
)
def test_tor_vectors_with_a_bad_checksum(address: str) -> None:
    with pytest.raises(OnionAddressError, match="invalid checksum"):
        parse_onion_address(address)


def test_tor_vector_that_is_not_base32() -> None:
    with pytest.raises(OnionAddressError, match="not base32"):
        parse_onion_address("?" * ADDRESS_LEN)


def test_upper_case_is_refused_with_a_hint() -> None:
    with pytest.raises(OnionAddressError, match="lower case"):
        parse_onion_address(TOR_ADDRESS.upper() + ".onion")


def test_wrong_version_is_refused() -> None:
    for version in (0, 2, 4, 255):
        checksum = hashlib.sha3_256(
            b".onion checksum" + RFC8032_PUBKEY + bytes([version])
        ).digest()[:2]
        raw = RFC8032_PUBKEY + checksum + bytes([version])
        address = base64.b32encode(raw).decode().lower()
        with pytest.raises(OnionAddressError, match=f"version {version}"):
            parse_onion_address(address)


def test_a_subdomain_or_other_suffix_is_refused() -> None:
    for address in (f"www.{TOR_ADDRESS}.onion", f"{TOR_ADDRESS}.onion.", f"{TOR_ADDRESS}.tor"):
        with pytest.raises(OnionAddressError, match="invalid length"):
            parse_onion_address(address)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_keys_of_the_wrong_size_have_no_address(length: int) -> None:
    with pytest.raises(OnionAddressError, match="32 bytes"):
        onion_address(bytes(length))


@pytest.mark.parametrize("address", [TOR_ADDRESS + ".onion", *SPEC_EXAMPLES])
def test_every_single_character_change_of_a_published_address_is_refused(address: str) -> None:
    for i, original in enumerate(address):
        for replacement in MUTATION_ALPHABET:
            if replacement == original:
                continue
            mutated = address[:i] + replacement + address[i + 1 :]
            with pytest.raises(OnionAddressError):
                parse_onion_address(mutated)


@given(keys)
def test_round_trip(key: bytes) -> None:
    address = onion_address(key)
    assert len(address) == ADDRESS_LEN + len(".onion")
    assert address == address.lower()
    assert parse_onion_address(address) == key
    assert parse_onion_address(address.removesuffix(".onion")) == key
    assert canonical_onion_address(address.removesuffix(".onion")) == address


@given(keys, keys)
def test_distinct_keys_have_distinct_addresses(a: bytes, b: bytes) -> None:
    assert (onion_address(a) == onion_address(b)) == (a == b)


@settings(max_examples=300)
@given(
    keys, st.integers(min_value=0, max_value=ADDRESS_LEN - 1), st.sampled_from(MUTATION_ALPHABET)
)
def test_a_single_character_change_never_yields_the_same_key(
    key: bytes, position: int, replacement: str
) -> None:
    address = onion_address(key)
    mutated = address[:position] + replacement + address[position + 1 :]
    if mutated == address:
        return
    # A two-byte checksum lets one random change in 65536 through, so the property that holds
    # for every key is weaker than "always refused": a change that survives names another key,
    # and that key's own canonical address is exactly the mutated string.
    try:
        other = parse_onion_address(mutated)
    except OnionAddressError:
        return
    assert other != key
    assert onion_address(other) == mutated


@given(keys, st.integers(min_value=ADDRESS_LEN - 4, max_value=ADDRESS_LEN - 1))
def test_a_change_in_the_checksum_or_version_characters_is_always_refused(
    key: bytes, position: int
) -> None:
    # The last four characters encode only checksum and version bits (bit 255, the key's last,
    # sits in character 51), so the key is unchanged and its checksum cannot match.
    address = onion_address(key)
    for replacement in "abcdefghijklmnopqrstuvwxyz234567":
        if replacement == address[position]:
            continue
        assert not is_valid_onion_address(
            address[:position] + replacement + address[position + 1 :]
        )


def test_a_generated_key_round_trips() -> None:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert parse_onion_address(onion_address(public)) == public
    assert is_valid_onion_address(onion_address(public))
    assert not is_valid_onion_address("example.onion")
