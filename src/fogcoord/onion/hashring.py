"""Where hidden-service descriptors live: the HSDir hash ring of rend-spec-v3 section 2.2.

Every party that holds the same directory node list and agrees on the time period computes the
same set of directories responsible for a service, with no coordination, and that set moves
every period so no fixed group of directories can be set up in advance to censor a service
(section 2.2, [HASHRING]). All hashes are SHA3-256 and all integers 8-byte big-endian
(section 0.2, ``INT_8``).

Time periods (section 2.2.1, [TIME-PERIODS]) count ``length_minutes`` slices of time since the
epoch, shifted by a 12-hour rotation offset so periods start at 12:00 UTC by default.

Each directory node sits on a ring at (section 2.2.3, [WHERE-HSDESC])::

    node_index(node) = H("node-idx" | node_identity | shared_random_value
                         | INT_8(period_num) | INT_8(period_length))

and each replica of a service's descriptor at::

    service_index(replica) = H("store-at-idx" | service_key | INT_8(replica)
                               | INT_8(period_length) | INT_8(period_num))

Tor hashes the period-blinded key here; blinding is optional in this system, and any 32-byte
key (blinded or the address's own) may be passed. Replica ``r`` (numbered from 1) is stored on
the first ``spread`` nodes at or after ``service_index(r)`` going round the ring; a node already
picked for a lower replica is skipped over, so replicas land on distinct nodes.

The shared random value comes from the directory authorities (section 2.3). Without one, section
2.3.1's fallback ``H("shared-random-disaster" | INT_8(period_length) | INT_8(period_num))`` is
used, which every party can compute alone.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from fogcoord.onion.hsaddr import parse_onion_address

DEFAULT_PERIOD_LENGTH_MINUTES = 1440
MIN_PERIOD_LENGTH_MINUTES = 30
MAX_PERIOD_LENGTH_MINUTES = 14400
ROTATION_OFFSET_MINUTES = 12 * 60
"""Twelve one-hour voting rounds (section 2.2.1): periods start half a day after the epoch."""

HSDIR_N_REPLICAS = 2
HSDIR_SPREAD_STORE = 4
HSDIR_SPREAD_FETCH = 3
MAX_REPLICAS = 16
MAX_SPREAD = 128
"""Section 2.2.3's ranges for ``hsdir_n_replicas`` and ``hsdir_spread_*``."""

KEY_LEN = 32
SRV_LEN = 32


def _int8(value: int) -> bytes:
    return (value % 2**64).to_bytes(8, "big")


@dataclass(frozen=True, order=True)
class TimePeriod:
    """Period ``number`` of ``length_minutes`` minutes (section 2.2.1)."""

    number: int
    length_minutes: int = DEFAULT_PERIOD_LENGTH_MINUTES

    def __post_init__(self) -> None:
        if self.number < 0:
            raise ValueError(f"time period number {self.number} is negative")
        if not MIN_PERIOD_LENGTH_MINUTES <= self.length_minutes <= MAX_PERIOD_LENGTH_MINUTES:
            raise ValueError(
                f"period length {self.length_minutes} min is not in "
                f"{MIN_PERIOD_LENGTH_MINUTES}..{MAX_PERIOD_LENGTH_MINUTES}"
            )

    @classmethod
    def at(
        cls, unix_time: float, length_minutes: int = DEFAULT_PERIOD_LENGTH_MINUTES
    ) -> TimePeriod:
        """The period that contains ``unix_time``."""
        minutes = int(unix_time // 60) - ROTATION_OFFSET_MINUTES
        return cls(minutes // length_minutes, length_minutes)

    @property
    def start(self) -> int:
        """Unix seconds at which the period begins."""
        return (self.number * self.length_minutes + ROTATION_OFFSET_MINUTES) * 60

    @property
    def end(self) -> int:
        """Unix seconds at which the next period begins."""
        return self.start + self.length_minutes * 60

    def next(self) -> TimePeriod:
        return TimePeriod(self.number + 1, self.length_minutes)


def disaster_srv(period: TimePeriod) -> bytes:
    """Section 2.3.1's shared random value for when the authorities published none."""
    return hashlib.sha3_256(
        b"shared-random-disaster" + _int8(period.length_minutes) + _int8(period.number)
    ).digest()


def service_index(service_key: bytes, replica: int, period: TimePeriod) -> bytes:
    """Where replica ``replica`` (from 1) of the service's descriptor sits on the ring."""
    _check_key(service_key, "service key")
    return hashlib.sha3_256(
        b"store-at-idx"
        + service_key
        + _int8(replica)
        + _int8(period.length_minutes)
        + _int8(period.number)
    ).digest()


def node_index(node_identity: bytes, shared_random: bytes, period: TimePeriod) -> bytes:
    """Where a directory node with Ed25519 identity ``node_identity`` sits on the ring."""
    _check_key(node_identity, "node identity")
    if len(shared_random) != SRV_LEN:
        raise ValueError(f"a shared random value is {SRV_LEN} bytes, got {len(shared_random)}")
    # Note the order: period number before length here, after it in service_index (as in Tor).
    return hashlib.sha3_256(
        b"node-idx"
        + node_identity
        + shared_random
        + _int8(period.number)
        + _int8(period.length_minutes)
    ).digest()


def _check_key(key: bytes, what: str) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"a {what} is {KEY_LEN} bytes, got {len(key)}")


def _service_key(address: str | bytes) -> bytes:
    if isinstance(address, str):
        return parse_onion_address(address)
    _check_key(address, "service key")
    return address


def responsible_nodes(
    nodes: Mapping[str, bytes],
    address: str | bytes,
    replication_factor: int,
    period: TimePeriod,
    *,
    spread: int = 1,
    shared_random: bytes | None = None,
) -> list[str]:
    """The ids of the directory nodes that store ``address``'s descriptor in ``period``.

    ``nodes`` maps node id to the node's 32-byte Ed25519 identity key. ``address`` is an onion
    address or a 32-byte (possibly blinded) service key. ``replication_factor`` is the number of
    replicas (Tor's ``hsdir_n_replicas``), each placed on ``spread`` distinct nodes (Tor's
    ``hsdir_spread_store``; 1 keeps exactly one node per replica). The result lists replica 1's
    nodes in ring order, then replica 2's, and so on: ``replication_factor * spread`` distinct
    ids, or every node if there are fewer. ``shared_random`` defaults to :func:`disaster_srv`.

    Nodes whose indices tie (the same identity under two ids) are ordered by id, so the answer
    does not depend on the mapping's iteration order.
    """
    if not 1 <= replication_factor <= MAX_REPLICAS:
        raise ValueError(f"replication factor {replication_factor} is not in 1..{MAX_REPLICAS}")
    if not 1 <= spread <= MAX_SPREAD:
        raise ValueError(f"spread {spread} is not in 1..{MAX_SPREAD}")
    service_key = _service_key(address)
    srv = disaster_srv(period) if shared_random is None else shared_random
    ring = sorted(
        (node_index(identity, srv, period), node_id) for node_id, identity in nodes.items()
    )
    positions = [index for index, _ in ring]
    chosen: list[str] = []
    taken: set[str] = set()
    for replica in range(1, replication_factor + 1):
        # First node at or after the replica's index, wrapping past the top of the ring; ties
        # go to the node, as Tor's lower-bound search does.
        start = bisect.bisect_left(positions, service_index(service_key, replica, period))
        added = 0
        for step in range(len(ring)):
            if added == spread:
                break
            node_id = ring[(start + step) % len(ring)][1]
            if node_id not in taken:
                taken.add(node_id)
                chosen.append(node_id)
                added += 1
    return chosen


@dataclass(frozen=True)
class ResponsibleSetChange:
    """How the directories responsible for a service differ between two node lists."""

    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def added(self) -> frozenset[str]:
        """Newly responsible nodes: the service must upload its descriptor to these."""
        return frozenset(self.after) - frozenset(self.before)

    @property
    def removed(self) -> frozenset[str]:
        """Nodes no longer responsible."""
        return frozenset(self.before) - frozenset(self.after)

    @property
    def changed(self) -> bool:
        """Whether the set (not merely the order) changed, i.e. the service should republish."""
        return frozenset(self.before) != frozenset(self.after)


def responsible_set_change(
    old_nodes: Mapping[str, bytes],
    new_nodes: Mapping[str, bytes],
    address: str | bytes,
    replication_factor: int,
    period: TimePeriod,
    *,
    spread: int = 1,
    shared_random: bytes | None = None,
    new_period: TimePeriod | None = None,
    new_shared_random: bytes | None = None,
) -> ResponsibleSetChange:
    """Compare :func:`responsible_nodes` for ``address`` over two node lists.

    The new side uses ``new_period`` / ``new_shared_random`` when given (a period rollover or a
    fresh shared random value moves the ring just as membership changes do, section 2.3.2),
    otherwise the same ``period`` and ``shared_random`` as the old side.
    """
    before = responsible_nodes(
        old_nodes, address, replication_factor, period, spread=spread, shared_random=shared_random
    )
    after = responsible_nodes(
        new_nodes,
        address,
        replication_factor,
        period if new_period is None else new_period,
        spread=spread,
        shared_random=shared_random if new_shared_random is None else new_shared_random,
    )
    return ResponsibleSetChange(before=tuple(before), after=tuple(after))
