"""The relay directory: a signed consensus and bandwidth-weighted path selection.

Clients must agree on which relays exist and what their keys are, or an adversary could hand
each client a network of its own relays. Tor's directory authorities vote a *consensus*
(dir-spec section 3) that every client checks against the authorities' keys. Here the
coordinator is the single authority: :class:`Authority` keeps the relay list and signs a
:class:`Consensus` with its Ed25519 key; a client trusts a relay's onion key only once
:meth:`SignedConsensus.verify` has checked that signature.

The signed bytes are canonical JSON (sorted keys, no whitespace, ASCII only), so a consensus
that travels as JSON and is rebuilt with :meth:`SignedConsensus.from_dict` reproduces exactly
the bytes that were signed.

Path selection (path-spec section 2.2) picks ``length`` distinct relays, each with probability
proportional to its bandwidth, such that no two share an owner (Tor's "family") or an IPv4
/16 (IPv6 /32) -- one operator, or one network, should not see both ends of a circuit -- and the
last is an exit whose policy allows the requested port. The exit is drawn first, since it is
the scarcest. The search backtracks, so it finds a path whenever one exists and otherwise
raises :class:`PathError` saying which constraint could not be met.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fogcoord.onion.ntor import node_id
from fogcoord.onion.policy import ExitPolicy, PolicyError

FLAG_EXIT = "exit"
CONSENSUS_VERSION = 1

_HEX40 = re.compile(r"[0-9A-F]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def registration_message(info: Mapping[str, Any]) -> bytes:
    """What a relay signs to register its descriptor with the authority: canonical JSON."""
    body = json.dumps(dict(info), sort_keys=True, separators=(",", ":"))
    return b"fogcoord-relay-registration|" + body.encode()


class ConsensusError(ValueError):
    """A consensus or relay entry that is malformed, or whose signature does not verify."""


class PathError(Exception):
    """No path satisfies the constraints."""


@dataclass(frozen=True)
class RelayInfo:
    """What the directory publishes about one relay."""

    id: str
    """Fingerprint: SHA-1 of the Ed25519 identity key, upper-case hex (40 characters)."""
    address: str
    port: int
    ed25519: str
    """Ed25519 identity public key, lower-case hex."""
    onion_key: str
    """X25519 ntor onion key, lower-case hex."""
    flags: tuple[str, ...] = ()
    bandwidth: int = 1
    owner: str = ""
    exit_policy: tuple[str, ...] = ()
    """Allow-list rules ``NETWORK:LO-HI`` (see :mod:`fogcoord.onion.policy`)."""

    def __post_init__(self) -> None:
        if not _HEX64.fullmatch(self.ed25519) or not _HEX64.fullmatch(self.onion_key):
            raise ConsensusError(f"relay {self.id}: keys must be 64 lower-case hex digits")
        if self.id != node_id(bytes.fromhex(self.ed25519)).hex().upper():
            raise ConsensusError(f"relay {self.id}: id is not the SHA-1 of its Ed25519 key")
        if not 0 < self.port <= 65535:
            raise ConsensusError(f"relay {self.id}: port {self.port} out of range")
        if self.bandwidth < 0:
            raise ConsensusError(f"relay {self.id}: negative bandwidth")
        try:
            ipaddress.ip_address(self.address)
        except ValueError as exc:
            raise ConsensusError(f"relay {self.id}: address must be an IP literal") from exc
        try:
            ExitPolicy.parse(self.exit_policy)
        except PolicyError as exc:
            raise ConsensusError(f"relay {self.id}: {exc}") from exc

    @property
    def node_id(self) -> bytes:
        return bytes.fromhex(self.id)

    @property
    def ed25519_bytes(self) -> bytes:
        return bytes.fromhex(self.ed25519)

    @property
    def onion_key_bytes(self) -> bytes:
        return bytes.fromhex(self.onion_key)

    @property
    def is_exit(self) -> bool:
        return FLAG_EXIT in self.flags

    @property
    def policy(self) -> ExitPolicy:
        return ExitPolicy.parse(self.exit_policy) if self.is_exit else ExitPolicy.reject_all()

    def allows_exit_to(self, port: int) -> bool:
        return self.is_exit and self.policy.allows_port(port)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "port": self.port,
            "ed25519": self.ed25519,
            "onion_key": self.onion_key,
            "flags": list(self.flags),
            "bandwidth": self.bandwidth,
            "owner": self.owner,
            "exit_policy": list(self.exit_policy),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RelayInfo:
        try:
            info = cls(
                id=_typed(data["id"], str),
                address=_typed(data["address"], str),
                port=_typed(data["port"], int),
                ed25519=_typed(data["ed25519"], str),
                onion_key=_typed(data["onion_key"], str),
                flags=tuple(_typed(f, str) for f in _typed(data["flags"], list)),
                bandwidth=_typed(data["bandwidth"], int),
                owner=_typed(data["owner"], str),
                exit_policy=tuple(_typed(r, str) for r in _typed(data["exit_policy"], list)),
            )
        except KeyError as exc:
            raise ConsensusError(f"relay entry lacks {exc}") from exc
        unknown = set(data) - set(info.to_dict())
        if unknown:
            raise ConsensusError(f"relay entry has unknown keys {sorted(unknown)}")
        return info


def _typed(value: Any, kind: type) -> Any:
    # bool is an int subclass; a consensus never carries booleans where numbers belong
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConsensusError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def public_key_bytes(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Consensus:
    """The relay list at one moment, as the authority publishes it."""

    relays: tuple[RelayInfo, ...]
    valid_after: int
    valid_until: int
    version: int = CONSENSUS_VERSION

    def __post_init__(self) -> None:
        # one order for one relay set, so equal consensuses compare (and serialise) equal
        object.__setattr__(self, "relays", tuple(sorted(self.relays, key=lambda r: r.id)))
        ids = [r.id for r in self.relays]
        if len(ids) != len(set(ids)):
            raise ConsensusError("a relay is listed twice")
        if self.valid_until < self.valid_after:
            raise ConsensusError("consensus expires before it starts")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "valid_after": self.valid_after,
            "valid_until": self.valid_until,
            "relays": [r.to_dict() for r in self.relays],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Consensus:
        try:
            version = _typed(data["version"], int)
            if version != CONSENSUS_VERSION:
                raise ConsensusError(f"unsupported consensus version {version}")
            return cls(
                relays=tuple(RelayInfo.from_dict(r) for r in _typed(data["relays"], list)),
                valid_after=_typed(data["valid_after"], int),
                valid_until=_typed(data["valid_until"], int),
                version=version,
            )
        except KeyError as exc:
            raise ConsensusError(f"consensus lacks {exc}") from exc
        except TypeError as exc:
            raise ConsensusError(f"malformed consensus: {exc}") from exc

    def canonical_bytes(self) -> bytes:
        """The bytes that are signed: canonical JSON of :meth:`to_dict`."""
        return _canonical(self.to_dict())

    def sign(self, key: Ed25519PrivateKey) -> SignedConsensus:
        return SignedConsensus(self, key.sign(self.canonical_bytes()))

    def verify(self, signature: bytes, public_key: Ed25519PublicKey | bytes) -> None:
        """Raise :class:`ConsensusError` unless ``signature`` is the authority's over this."""
        SignedConsensus(self, signature).verify(public_key)

    def get(self, relay_id: str) -> RelayInfo:
        for relay in self.relays:
            if relay.id == relay_id:
                return relay
        raise KeyError(relay_id)

    def is_live(self, now: float) -> bool:
        return self.valid_after <= now <= self.valid_until


@dataclass(frozen=True)
class SignedConsensus:
    """A consensus and the authority's Ed25519 signature over its canonical bytes."""

    consensus: Consensus
    signature: bytes

    def verify(self, public_key: Ed25519PublicKey | bytes) -> Consensus:
        """The consensus, if the signature is the authority's; else :class:`ConsensusError`."""
        if isinstance(public_key, bytes):
            try:
                public_key = Ed25519PublicKey.from_public_bytes(public_key)
            except ValueError as exc:
                raise ConsensusError("bad authority public key") from exc
        try:
            public_key.verify(self.signature, self.consensus.canonical_bytes())
        except InvalidSignature as exc:
            raise ConsensusError("the consensus signature does not verify") from exc
        return self.consensus

    def to_dict(self) -> dict[str, Any]:
        return {"consensus": self.consensus.to_dict(), "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedConsensus:
        try:
            signature = bytes.fromhex(_typed(data["signature"], str))
            return cls(Consensus.from_dict(_typed(data["consensus"], dict)), signature)
        except KeyError as exc:
            raise ConsensusError(f"signed consensus lacks {exc}") from exc
        except ValueError as exc:
            if isinstance(exc, ConsensusError):
                raise
            raise ConsensusError(f"malformed signed consensus: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedConsensus:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConsensusError(f"consensus is not JSON: {exc}") from exc
        return cls.from_dict(_typed(data, dict))


@dataclass
class Authority:
    """The directory authority: keeps the relay list and signs consensuses."""

    signing_key: Ed25519PrivateKey
    lifetime_s: int = 3600
    clock: Callable[[], float] = time.time
    _relays: dict[str, RelayInfo] = field(default_factory=dict)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @property
    def public_key_hex(self) -> str:
        return public_key_bytes(self.signing_key).hex()

    def add(self, info: RelayInfo) -> None:
        """List a relay, replacing any earlier entry with the same id."""
        self._relays[info.id] = info

    def remove(self, relay_id: str) -> bool:
        """Delist a relay; whether it was listed."""
        return self._relays.pop(relay_id, None) is not None

    def relays(self) -> list[RelayInfo]:
        return sorted(self._relays.values(), key=lambda r: r.id)

    def consensus(self) -> SignedConsensus:
        now = int(self.clock())
        body = Consensus(tuple(self.relays()), now, now + self.lifetime_s)
        return body.sign(self.signing_key)


# --- path selection -------------------------------------------------------------------------

_MAX_EXPANSIONS = 200_000


def network_key(address: str) -> str:
    """The network two hops of one circuit must not share: IPv4 /16, IPv6 /32."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _compatible(candidate: RelayInfo, chosen: Sequence[RelayInfo]) -> bool:
    net = network_key(candidate.address)
    for other in chosen:
        if other.id == candidate.id or network_key(other.address) == net:
            return False
        if candidate.owner and candidate.owner == other.owner:
            return False
    return True


def _weighted_order(candidates: Iterable[RelayInfo], rng: random.Random) -> list[RelayInfo]:
    """A random order in which each next relay is drawn with probability ~ its bandwidth.

    Efraimidis-Spirakis: sorting by ``u ** (1 / w)`` descending is weighted sampling without
    replacement, so the first element is a bandwidth-weighted draw and the rest are fallbacks.
    """
    keyed = [(rng.random() ** (1.0 / r.bandwidth), r) for r in candidates if r.bandwidth > 0]
    keyed.sort(key=lambda kr: kr[0], reverse=True)
    return [r for _, r in keyed]


def select_path(
    consensus: Consensus,
    length: int = 3,
    *,
    rng: random.Random,
    exit_port: int | None = None,
) -> list[RelayInfo]:
    """``length`` relays, entry first, exit last; :class:`PathError` when impossible."""
    if length < 1:
        raise ValueError("a path needs at least one hop")
    usable = [r for r in consensus.relays if r.bandwidth > 0]
    if len(usable) < length:
        raise PathError(
            f"the consensus has {len(usable)} relay(s) with bandwidth; a path needs {length}"
        )
    exits = [
        r for r in usable if r.is_exit and (exit_port is None or r.policy.allows_port(exit_port))
    ]
    if not exits:
        wanted = "" if exit_port is None else f" allowing port {exit_port}"
        raise PathError(f"the consensus has no exit relay{wanted}")
    budget = [_MAX_EXPANSIONS]

    def search(chosen: list[RelayInfo]) -> list[RelayInfo] | None:
        if len(chosen) == length:
            return chosen
        pool = exits if not chosen else usable
        for relay in _weighted_order((c for c in pool if _compatible(c, chosen)), rng):
            budget[0] -= 1
            if budget[0] < 0:
                return None
            found = search([*chosen, relay])
            if found is not None:
                return found
        return None

    found = search([])
    if found is None:
        raise PathError(
            f"no {length} relays with distinct owners and distinct /16 networks "
            f"end in a suitable exit ({len(exits)} exit(s), {len(usable)} relay(s))"
        )
    exit_relay, *others = found
    return [*others, exit_relay]


__all__ = [
    "FLAG_EXIT",
    "Authority",
    "Consensus",
    "ConsensusError",
    "PathError",
    "RelayInfo",
    "SignedConsensus",
    "network_key",
    "public_key_bytes",
    "select_path",
]
