"""The HSDir hash ring.

The index vectors come from tor, ``src/test/test_hs_common.c``: ``test_hs_indexes`` (a service
key and a node identity of 32 bytes of 0x42, a shared random value of 32 bytes of 0x43, period
42 of the default 1440 minutes) and ``test_disaster_srv`` (period 1). The time-period example is
rend-spec-v3 section 2.2.1's.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.onion.hashring import (
    HSDIR_N_REPLICAS,
    HSDIR_SPREAD_STORE,
    ResponsibleSetChange,
    TimePeriod,
    disaster_srv,
    node_index,
    responsible_nodes,
    responsible_set_change,
    service_index,
)
from fogcoord.onion.hsaddr import onion_address
from fogcoord.onion.hsaddr import parse_onion_address as parse

PERIOD = TimePeriod(16903)
SERVICE_KEY = bytes(range(32))
ADDRESS = onion_address(SERVICE_KEY)


def make_nodes(n: int, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"relay-{i:03d}": rng.randbytes(32) for i in range(n)}


def test_tor_service_index_vector() -> None:
    got = service_index(b"\x42" * 32, 1, TimePeriod(42, 1440))
    assert got.hex() == "37e5cbbd56a22823714f18f1623ece5983a0d64c78495a8cfab854245e5f9a8a"


def test_tor_node_index_vector() -> None:
    got = node_index(b"\x42" * 32, b"\x43" * 32, TimePeriod(42, 1440))
    assert got.hex() == "db475361014a09965e7e5e4d4a25b8f8d4b8f16cb1d8a7e95eed50249cc1a2d5"


def test_tor_disaster_srv_vector() -> None:
    got = disaster_srv(TimePeriod(1, 1440))
    assert got.hex() == "f8a4948707653837fa44abb5bbc75a12f6f101e7f8faf699b9715f4965d3507d"
    assert (
        got
        == hashlib.sha3_256(
            b"shared-random-disaster" + (1440).to_bytes(8, "big") + (1).to_bytes(8, "big")
        ).digest()
    )


def test_spec_time_period_example() -> None:
    # 2016-04-13 11:15:01 UTC is in period 16903, which ran from 2016-04-12 12:00 UTC to
    # 2016-04-13 12:00 UTC.
    period = TimePeriod.at(1460546101)
    assert period == TimePeriod(16903, 1440)
    assert datetime.fromtimestamp(period.start, UTC) == datetime(2016, 4, 12, 12, tzinfo=UTC)
    assert datetime.fromtimestamp(period.end, UTC) == datetime(2016, 4, 13, 12, tzinfo=UTC)
    assert TimePeriod.at(period.end) == period.next()
    assert TimePeriod.at(period.end - 1) == period


def test_time_periods_of_other_lengths() -> None:
    period = TimePeriod.at(1460546101, length_minutes=60)
    assert period.start <= 1460546101 < period.end
    assert period.end - period.start == 3600


@pytest.mark.parametrize(("number", "length"), [(-1, 1440), (0, 29), (0, 14401)])
def test_time_period_bounds(number: int, length: int) -> None:
    with pytest.raises(ValueError, match="period"):
        TimePeriod(number, length)


def reference_placement(
    nodes: dict[str, bytes], key: bytes, replicas: int, spread: int, srv: bytes, period: TimePeriod
) -> list[str]:
    """Section 2.2.3 read literally, to compare against: for each replica, walk the sorted ring
    from the first index not below the replica's and take the first ``spread`` unchosen nodes."""
    ring = sorted((node_index(ident, srv, period), node_id) for node_id, ident in nodes.items())
    chosen: list[str] = []
    for replica in range(1, replicas + 1):
        target = service_index(key, replica, period)
        walk = [n for idx, n in ring if idx >= target] + [n for idx, n in ring if idx < target]
        chosen.extend([n for n in walk if n not in chosen][:spread])
    return chosen


@pytest.mark.parametrize(("replicas", "spread"), [(1, 1), (2, 1), (2, 4), (3, 3), (16, 2)])
def test_placement_matches_the_spec_reading(replicas: int, spread: int) -> None:
    nodes = make_nodes(40)
    got = responsible_nodes(nodes, ADDRESS, replicas, PERIOD, spread=spread)
    assert got == reference_placement(
        nodes, SERVICE_KEY, replicas, spread, disaster_srv(PERIOD), PERIOD
    )
    assert len(got) == len(set(got)) == replicas * spread


def test_default_is_one_node_per_replica() -> None:
    got = responsible_nodes(make_nodes(30), ADDRESS, 3, PERIOD)
    assert len(got) == len(set(got)) == 3


def test_tor_defaults_place_eight_copies() -> None:
    got = responsible_nodes(
        make_nodes(30), ADDRESS, HSDIR_N_REPLICAS, PERIOD, spread=HSDIR_SPREAD_STORE
    )
    assert len(set(got)) == 8


def test_each_replica_starts_at_the_first_node_after_its_index() -> None:
    nodes = make_nodes(50)
    srv = disaster_srv(PERIOD)
    ring = sorted((node_index(ident, srv, PERIOD), n) for n, ident in nodes.items())
    got = responsible_nodes(nodes, ADDRESS, 1, PERIOD)
    target = service_index(SERVICE_KEY, 1, PERIOD)
    i = bisect.bisect_left([idx for idx, _ in ring], target) % len(ring)
    assert got == [ring[i][1]]


def test_duplicates_are_skipped_when_replicas_collide() -> None:
    # With two nodes and three replicas at spread 1 at least two replicas share a successor;
    # the later one moves on round the ring, and once every node is taken the walk stops.
    nodes = make_nodes(2)
    got = responsible_nodes(nodes, ADDRESS, 3, PERIOD)
    assert sorted(got) == sorted(nodes)


def test_fewer_nodes_than_copies_gives_every_node() -> None:
    nodes = make_nodes(5)
    got = responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=4)
    assert sorted(got) == sorted(nodes)


def test_no_nodes_no_placement() -> None:
    assert responsible_nodes({}, ADDRESS, 2, PERIOD) == []


def test_address_and_key_give_the_same_placement() -> None:
    nodes = make_nodes(20)
    assert responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=2) == responsible_nodes(
        nodes, parse(ADDRESS), 2, PERIOD, spread=2
    )


def test_placement_is_independent_of_node_order() -> None:
    nodes = make_nodes(60)
    shuffled = list(nodes.items())
    random.Random(7).shuffle(shuffled)
    assert responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=3) == responsible_nodes(
        dict(shuffled), ADDRESS, 2, PERIOD, spread=3
    )


def test_tied_indices_are_ordered_by_node_id() -> None:
    identity = bytes(32)
    one = responsible_nodes({"b": identity, "a": identity}, ADDRESS, 1, PERIOD)
    other = responsible_nodes({"a": identity, "b": identity}, ADDRESS, 1, PERIOD)
    assert one == other == ["a"]


def test_placement_moves_with_the_period_and_the_shared_random_value() -> None:
    nodes = make_nodes(200)
    base = responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=4)
    assert set(base) != set(responsible_nodes(nodes, ADDRESS, 2, PERIOD.next(), spread=4))
    assert set(base) != set(
        responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=4, shared_random=b"\x01" * 32)
    )
    assert base == responsible_nodes(
        nodes, ADDRESS, 2, PERIOD, spread=4, shared_random=disaster_srv(PERIOD)
    )


def test_different_services_land_on_different_nodes() -> None:
    nodes = make_nodes(200)
    other = onion_address(bytes(range(1, 33)))
    assert set(responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=4)) != set(
        responsible_nodes(nodes, other, 2, PERIOD, spread=4)
    )


@pytest.mark.parametrize(
    ("replicas", "spread", "match"),
    [
        (0, 1, "replication factor"),
        (17, 1, "replication factor"),
        (1, 0, "spread"),
        (1, 129, "spread"),
    ],
)
def test_parameter_bounds(replicas: int, spread: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        responsible_nodes(make_nodes(3), ADDRESS, replicas, PERIOD, spread=spread)


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="node identity"):
        responsible_nodes({"x": b"short"}, ADDRESS, 1, PERIOD)
    with pytest.raises(ValueError, match="service key"):
        responsible_nodes(make_nodes(3), b"short", 1, PERIOD)
    with pytest.raises(ValueError, match="shared random"):
        responsible_nodes(make_nodes(3), ADDRESS, 1, PERIOD, shared_random=b"x")
    with pytest.raises(ValueError, match="invalid length"):
        responsible_nodes(make_nodes(3), "nope.onion", 1, PERIOD)


def test_removing_an_uninvolved_node_changes_nothing() -> None:
    nodes = make_nodes(40)
    chosen = responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=2)
    bystander = next(n for n in nodes if n not in chosen)
    change = responsible_set_change(
        nodes, {k: v for k, v in nodes.items() if k != bystander}, ADDRESS, 2, PERIOD, spread=2
    )
    assert not change.changed
    assert change.added == change.removed == frozenset()
    assert change.before == change.after == tuple(chosen)


def test_removing_a_responsible_node_brings_in_one_replacement() -> None:
    nodes = make_nodes(40)
    chosen = responsible_nodes(nodes, ADDRESS, 2, PERIOD, spread=2)
    gone = chosen[0]
    change = responsible_set_change(
        nodes, {k: v for k, v in nodes.items() if k != gone}, ADDRESS, 2, PERIOD, spread=2
    )
    assert change.changed
    assert change.removed == {gone}
    assert len(change.added) == 1
    assert change.added.isdisjoint(chosen)


def test_a_joining_node_that_lands_in_front_takes_over() -> None:
    nodes = make_nodes(40)
    srv = disaster_srv(PERIOD)
    target = service_index(SERVICE_KEY, 1, PERIOD)
    first = responsible_nodes(nodes, ADDRESS, 1, PERIOD)[0]
    first_index = node_index(nodes[first], srv, PERIOD)
    rng = random.Random(1)
    # Search for an identity whose index falls between the replica's index and the current
    # first node: on a ring of 40 roughly one candidate in 40 does.
    while True:
        identity = rng.randbytes(32)
        idx = node_index(identity, srv, PERIOD)
        in_gap = (
            target <= idx < first_index
            if target <= first_index
            else idx >= target or idx < first_index
        )
        if in_gap:
            break
    change = responsible_set_change(nodes, {**nodes, "newcomer": identity}, ADDRESS, 1, PERIOD)
    assert change.after == ("newcomer",)
    assert change.added == {"newcomer"}
    assert change.removed == {first}


def test_a_reordering_alone_is_not_a_change() -> None:
    change = ResponsibleSetChange(before=("a", "b"), after=("b", "a"))
    assert not change.changed
    assert change.added == change.removed == frozenset()


def test_change_across_a_period_rollover() -> None:
    nodes = make_nodes(200)
    change = responsible_set_change(nodes, nodes, ADDRESS, 2, PERIOD, new_period=PERIOD.next())
    assert change.before == tuple(responsible_nodes(nodes, ADDRESS, 2, PERIOD))
    assert change.after == tuple(responsible_nodes(nodes, ADDRESS, 2, PERIOD.next()))
    assert change.changed
    srv_change = responsible_set_change(
        nodes, nodes, ADDRESS, 2, PERIOD, new_shared_random=b"\x07" * 32
    )
    assert srv_change.after == tuple(
        responsible_nodes(nodes, ADDRESS, 2, PERIOD, shared_random=b"\x07" * 32)
    )


node_maps = st.dictionaries(
    st.text("abcdefghij", min_size=1, max_size=6),
    st.binary(min_size=32, max_size=32),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    node_maps,
    st.binary(min_size=32, max_size=32),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=30000),
)
def test_placement_properties(
    nodes: dict[str, bytes], key: bytes, replicas: int, spread: int, number: int
) -> None:
    period = TimePeriod(number)
    got = responsible_nodes(nodes, key, replicas, period, spread=spread)
    assert len(got) == len(set(got)) == min(replicas * spread, len(nodes))
    assert set(got) <= set(nodes)
    reversed_nodes = dict(reversed(list(nodes.items())))
    assert got == responsible_nodes(reversed_nodes, key, replicas, period, spread=spread)
    assert got == reference_placement(nodes, key, replicas, spread, disaster_srv(period), period)
