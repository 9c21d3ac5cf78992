"""The signed consensus and path selection."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogcoord.onion.directory import (
    FLAG_EXIT,
    Authority,
    Consensus,
    ConsensusError,
    PathError,
    RelayInfo,
    SignedConsensus,
    network_key,
    select_path,
)
from fogcoord.onion.identity import RelayIdentity
from fogcoord.onion.policy import ExitPolicy, ExitRule, PolicyError


def relay(
    address: str,
    *,
    owner: str = "",
    exit: bool = False,
    bandwidth: int = 100,
    policy: tuple[str, ...] = ("127.0.0.0/8:1-65535",),
) -> RelayInfo:
    ident = RelayIdentity()
    return RelayInfo(
        id=ident.fingerprint,
        address=address,
        port=9001,
        ed25519=ident.ed25519_public.hex(),
        onion_key=ident.onion_public.hex(),
        flags=(FLAG_EXIT,) if exit else (),
        bandwidth=bandwidth,
        owner=owner or address,
        exit_policy=policy if exit else (),
    )


def consensus(*relays: RelayInfo) -> Consensus:
    return Consensus(tuple(relays), valid_after=1_000, valid_until=2_000)


def test_authority_signs_and_clients_verify() -> None:
    key = Ed25519PrivateKey.generate()
    authority = Authority(key, clock=lambda: 1_700_000_000.0)
    a, b = relay("127.1.0.1"), relay("127.2.0.1", exit=True)
    authority.add(a)
    authority.add(b)
    signed = authority.consensus()
    got = signed.verify(key.public_key())
    assert {r.id for r in got.relays} == {a.id, b.id}
    assert got.valid_after == 1_700_000_000
    assert got.is_live(1_700_000_100)
    assert got.get(b.id) == b
    assert authority.remove(a.id)
    assert not authority.remove(a.id)
    assert [r.id for r in authority.consensus().verify(authority.public_key).relays] == [b.id]


def test_json_round_trip_keeps_the_signature_valid() -> None:
    key = Ed25519PrivateKey.generate()
    signed = consensus(relay("127.1.0.1"), relay("127.2.0.1", exit=True)).sign(key)
    text = json.dumps(signed.to_dict())
    back = SignedConsensus.from_json(text)
    assert back.verify(bytes.fromhex(Authority(key).public_key_hex)) == signed.consensus


def test_bad_signatures_and_forgeries_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    signed = consensus(relay("127.1.0.1"), relay("127.2.0.1", exit=True)).sign(key)
    with pytest.raises(ConsensusError, match="does not verify"):
        signed.verify(Ed25519PrivateKey.generate().public_key())
    signed.consensus.verify(signed.signature, key.public_key())
    with pytest.raises(ConsensusError, match="does not verify"):
        signed.consensus.verify(bytes(64), key.public_key())
    with pytest.raises(ConsensusError, match="public key"):
        signed.verify(b"short")
    data = signed.to_dict()
    data["consensus"]["relays"][0]["bandwidth"] = 10_000  # a relay boosts itself
    with pytest.raises(ConsensusError, match="does not verify"):
        SignedConsensus.from_dict(data).verify(key.public_key())
    mallory = relay("127.3.0.1")
    data = signed.to_dict()
    data["consensus"]["relays"][0]["onion_key"] = mallory.onion_key  # swap in another key
    with pytest.raises(ConsensusError, match="does not verify"):
        SignedConsensus.from_dict(data).verify(key.public_key())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"port": "9001"}, "expected int"),
        ({"port": True}, "expected int"),
        ({"id": "00" * 20}, "SHA-1"),
        ({"ed25519": "zz"}, "64 lower-case hex"),
        ({"address": "example.com"}, "IP literal"),
        ({"exit_policy": ["nonsense"]}, "NETWORK"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_malformed_entries_are_refused(change: dict[str, object], message: str) -> None:
    entry = relay("127.1.0.1").to_dict()
    entry.update(change)
    with pytest.raises(ConsensusError, match=message):
        RelayInfo.from_dict(entry)


def test_malformed_documents_are_refused() -> None:
    for text in ("not json", "[]", '{"consensus": {}, "signature": "00"}', '{"signature": 1}'):
        with pytest.raises(ConsensusError):
            SignedConsensus.from_json(text)


def test_exit_policies() -> None:
    policy = ExitPolicy.parse(["127.0.0.0/8:80-443", "10.1.2.3/32:22"])
    assert policy.allows("127.5.0.1", 80)
    assert not policy.allows("127.5.0.1", 8080)
    assert policy.allows("10.1.2.3", 22)
    assert not policy.allows("10.1.2.4", 22)
    assert not policy.allows("example.com", 80)
    assert policy.allows_port(443)
    assert not policy.allows_port(444)
    assert ExitPolicy.parse(list(policy.to_strings())) == policy
    assert ExitPolicy.loopback().allows("::1", 1)
    assert not ExitPolicy.reject_all().allows_port(80)
    assert str(ExitRule.parse("[::1/128]:5-6")) == "::1/128:5-6"
    for bad in ("127.0.0.1", "127.0.0.1/33:80", "127.0.0.1/32:90-80", "127.0.0.1/32:x"):
        with pytest.raises(PolicyError):
            ExitRule.parse(bad)


def test_network_keys() -> None:
    assert network_key("127.1.0.1") == network_key("127.1.200.9") == "127.1.0.0/16"
    assert network_key("127.1.0.1") != network_key("127.2.0.1")
    assert network_key("2001:db8::1") == "2001:db8::/32"


def test_paths_avoid_shared_owners_and_networks() -> None:
    relays = [
        relay("127.1.0.1", owner="alice"),
        relay("127.1.0.2", owner="bob"),  # same /16 as alice's
        relay("127.2.0.1", owner="alice"),
        relay("127.3.0.1", owner="carol"),
        relay("127.4.0.1", owner="dave", exit=True),
        relay("127.5.0.1", owner="alice", exit=True),
    ]
    rng = random.Random(7)
    for _ in range(300):
        path = select_path(consensus(*relays), rng=rng)
        assert len(path) == 3
        assert path[-1].is_exit
        assert len({r.owner for r in path}) == 3
        assert len({network_key(r.address) for r in path}) == 3


def test_exit_must_allow_the_port() -> None:
    web = relay("127.4.0.1", exit=True, policy=("127.0.0.0/8:80-80",))
    any_port = relay("127.5.0.1", exit=True)
    c = consensus(relay("127.1.0.1"), relay("127.2.0.1"), web, any_port)
    rng = random.Random(1)
    assert {select_path(c, rng=rng, exit_port=22)[-1].id for _ in range(50)} == {any_port.id}
    assert {select_path(c, rng=rng, exit_port=80)[-1].id for _ in range(200)} == {
        web.id,
        any_port.id,
    }
    only_web = consensus(relay("127.1.0.1"), relay("127.2.0.1"), web)
    with pytest.raises(PathError, match="no exit relay allowing port 22"):
        select_path(only_web, rng=rng, exit_port=22)


def test_selection_is_weighted_by_bandwidth() -> None:
    fat = relay("127.1.0.1", bandwidth=900)
    thin = relay("127.2.0.1", bandwidth=100)
    exit_relay = relay("127.3.0.1", exit=True)
    c = consensus(fat, thin, exit_relay)
    rng = random.Random(3)
    firsts = Counter(select_path(c, 2, rng=rng)[0].id for _ in range(4000))
    share = firsts[fat.id] / 4000
    assert 0.85 < share < 0.95  # 900 / (900 + 100)


def test_impossible_paths_say_why() -> None:
    rng = random.Random(0)
    with pytest.raises(PathError, match="needs 3"):
        select_path(consensus(relay("127.1.0.1"), relay("127.2.0.1", exit=True)), rng=rng)
    with pytest.raises(PathError, match="no exit relay"):
        select_path(consensus(*(relay(f"127.{i}.0.1") for i in range(1, 5))), rng=rng)
    same_owner = [relay(f"127.{i}.0.1", owner="mallory", exit=True) for i in range(1, 30)]
    with pytest.raises(PathError, match="distinct owners"):
        select_path(consensus(*same_owner), rng=rng)
    same_net = [relay(f"127.1.0.{i}", exit=True) for i in range(1, 30)]
    with pytest.raises(PathError, match="/16"):
        select_path(consensus(*same_net), rng=rng)
    with pytest.raises(ValueError):
        select_path(consensus(*same_net), 0, rng=rng)


def test_backtracking_finds_the_only_path() -> None:
    # the exit's owner also runs the fattest relay: a greedy pick would get stuck
    relays = [
        relay("127.1.0.1", owner="eve", bandwidth=10_000),
        relay("127.2.0.1", owner="eve", exit=True),
        relay("127.3.0.1", owner="frank", bandwidth=1),
        relay("127.4.0.1", owner="grace", bandwidth=1),
    ]
    path = select_path(consensus(*relays), rng=random.Random(5))
    assert [r.owner for r in path][-1] == "eve"
    assert {r.owner for r in path[:2]} == {"frank", "grace"}
