"""Pricing: itemised quotes per GFLOP of verified work, scaled by a bounded market factor.

A quote is ``(compute + network + storage) x factor`` where

- compute = ``base_compute_rate_per_gflop`` x GFLOP;
- network = compute x (``network_multiplier`` - 1) for network-bound work, else 0 (so
  network-bound work costs ``network_multiplier`` times the compute price, as in the seed);
- storage = ``storage_rate_per_gb`` x GB;
- factor = clamp(((demand + 1) / (supply + 1)) ** ``demand_elasticity``,
  ``min_market_factor``, ``max_market_factor``), with demand = device slots asked for by open
  auctions and supply = devices eligible for work right now. The +1 keeps an empty market at
  factor 1; the elasticity below 1 damps swings, and the bounds keep one burst of auctions (or a
  fleet going offline) from moving prices without limit.

The factor is recomputed on auction and device events, never while quoting, so a quote costs a
few Decimal operations. Amounts are whole micro-tokens: each item and the total round up (a quote
never under-states what the work may cost), the price per GFLOP is the total over the GFLOP,
rounded up to the micro-token. Quotes are kept in memory until they expire: a coordinator restart
forgets unexpired quotes, and an auction that names one is then priced afresh.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from fogcoord.config import PricingConfig
from fogcoord.contracts.marketplace import PricingQuote, ResourceSpec
from fogcoord.contracts.units import MICRO_PER_TOKEN

MAX_QUOTES = 50_000
"""Unexpired quotes kept at most; beyond it the oldest is forgotten early."""
_ONE = Decimal(1)
_MICRO = Decimal(MICRO_PER_TOKEN)


def ceil_micro(value: Decimal) -> int:
    """Micro-tokens (given as a Decimal number of micro-tokens), rounded up."""
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def tokens(micro: int) -> Decimal:
    return Decimal(micro) / _MICRO


def market_factor(demand: int, supply: int, config: PricingConfig) -> float:
    raw: float = ((demand + 1) / (supply + 1)) ** config.demand_elasticity
    return min(max(raw, config.min_market_factor), config.max_market_factor)


@dataclass(frozen=True, slots=True)
class Quoted:
    quote: PricingQuote
    price_micro: int
    """Price per GFLOP in whole micro-tokens."""


class Pricer:
    def __init__(self, config: PricingConfig) -> None:
        self.config = config
        self.base_micro = Decimal(str(config.base_compute_rate_per_gflop)) * _MICRO
        self.network_extra = Decimal(str(config.network_multiplier)) - _ONE
        self.storage_micro = Decimal(str(config.storage_rate_per_gb)) * _MICRO
        self.factor = 1.0
        self._factor_dec = _ONE
        self.demand = 0
        self.supply = 0
        self._quotes: dict[str, tuple[Quoted, float]] = {}

    def update(self, demand: int, supply: int) -> bool:
        """Recompute the factor; True when it moved."""
        self.demand, self.supply = demand, supply
        factor = market_factor(demand, supply, self.config)
        if factor == self.factor:
            return False
        self.factor = factor
        self._factor_dec = Decimal(repr(factor))
        return True

    def quote(self, spec: ResourceSpec, now: float) -> Quoted:
        gflop = Decimal(repr(spec.gflop))
        factor = self._factor_dec
        compute = ceil_micro(self.base_micro * gflop)
        network = (
            ceil_micro(self.base_micro * gflop * self.network_extra) if spec.network_bound else 0
        )
        storage = ceil_micro(self.storage_micro * Decimal(repr(spec.storage_gb)))
        total = ceil_micro((compute + network + storage) * factor)
        price = max(1, ceil_micro(total / gflop))
        expires = now + self.config.quote_ttl_seconds
        quote = PricingQuote.model_construct(
            quote_id="q-" + secrets.token_hex(10),
            spec=spec,
            compute_cost=tokens(compute),
            network_cost=tokens(network),
            storage_cost=tokens(storage),
            market_factor=self.factor,
            total=tokens(total),
            price_per_gflop=tokens(price),
            expires_at=expires,
        )
        quoted = Quoted(quote, price)
        self.prune(now)
        self._quotes[quote.quote_id] = (quoted, expires)
        return quoted

    def honoured(self, quote_id: str, now: float) -> Quoted | None:
        """The quote if it is known and has not expired."""
        entry = self._quotes.get(quote_id)
        if entry is None or entry[1] < now:
            return None
        return entry[0]

    def prune(self, now: float) -> None:
        # every quote lives the same TTL, so insertion order is expiry order: expired quotes
        # are always at the front, and pruning costs only what it removes
        quotes = self._quotes
        while quotes:
            oldest = next(iter(quotes))
            if quotes[oldest][1] >= now and len(quotes) < MAX_QUOTES:
                break
            del quotes[oldest]
