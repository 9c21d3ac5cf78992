"""Exit policies: which destinations an exit relay's owner lets circuits reach.

An exit relay opens TCP connections on behalf of anonymous clients, and the traffic appears to
come from the relay's owner. Tor lets each operator publish an exit policy (dir-spec section
2.1.3, "accept"/"reject" lines) and the exit answers a RELAY_BEGIN outside it with a RELAY_END
of reason EXITPOLICY (tor-spec section 6.3).

The policy here is an allow-list: a destination is reachable only if some rule's network
contains its address and some rule's port range contains its port. The default allows loopback
only, so a relay started on a developer's machine cannot be used to reach anything else. A
rule is written ``NETWORK:LO-HI`` (``127.0.0.0/8:1-65535``, ``10.1.2.3/32:443-443``), which is
also how policies travel in a :class:`~fogcoord.onion.directory.RelayInfo`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """A rule that cannot be parsed."""


@dataclass(frozen=True)
class ExitRule:
    network: Network
    low: int = 1
    high: int = 65535

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high <= 65535:
            raise PolicyError(f"bad port range {self.low}-{self.high}")

    def matches(self, address: str, port: int) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return ip.version == self.network.version and ip in self.network and self.covers(port)

    def covers(self, port: int) -> bool:
        return self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.network}:{self.low}-{self.high}"

    @classmethod
    def parse(cls, text: str) -> ExitRule:
        net_text, sep, ports = text.strip().rpartition(":")
        if not sep:
            raise PolicyError(f"exit rule {text!r} is not NETWORK:LO-HI")
        if net_text.startswith("[") and net_text.endswith("]"):
            net_text = net_text[1:-1]
        try:
            network = ipaddress.ip_network(net_text, strict=True)
        except ValueError as exc:
            raise PolicyError(f"exit rule {text!r}: {exc}") from exc
        low_text, dash, high_text = ports.partition("-")
        if not dash:
            high_text = low_text
        if not (low_text.isdigit() and high_text.isdigit()):
            raise PolicyError(f"exit rule {text!r}: bad port range")
        return cls(network, int(low_text), int(high_text))


@dataclass(frozen=True)
class ExitPolicy:
    """An allow-list of :class:`ExitRule`; the empty policy allows nothing."""

    rules: tuple[ExitRule, ...] = ()

    @classmethod
    def loopback(cls, low: int = 1, high: int = 65535) -> ExitPolicy:
        """The default: 127.0.0.0/8 and ::1, on ports ``low``-``high``."""
        return cls(
            (
                ExitRule(ipaddress.ip_network("127.0.0.0/8"), low, high),
                ExitRule(ipaddress.ip_network("::1/128"), low, high),
            )
        )

    @classmethod
    def reject_all(cls) -> ExitPolicy:
        return cls(())

    @classmethod
    def parse(cls, rules: list[str] | tuple[str, ...]) -> ExitPolicy:
        return cls(tuple(ExitRule.parse(r) for r in rules))

    @classmethod
    def allow(cls, *targets: tuple[str, int, int]) -> ExitPolicy:
        """From ``(network, low port, high port)`` triples, e.g. ``("127.0.0.1/32", 80, 80)``."""
        try:
            return cls(
                tuple(
                    ExitRule(ipaddress.ip_network(net, strict=False), lo, hi)
                    for net, lo, hi in targets
                )
            )
        except ValueError as exc:
            raise PolicyError(str(exc)) from exc

    def allows(self, address: str, port: int) -> bool:
        """Whether the IP literal ``address`` on ``port`` is reachable."""
        return any(rule.matches(address, port) for rule in self.rules)

    def allows_port(self, port: int) -> bool:
        """Whether some destination on ``port`` is reachable (what path selection can check)."""
        return any(rule.covers(port) for rule in self.rules)

    def to_strings(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.rules)


__all__ = ["ExitPolicy", "ExitRule", "PolicyError"]
