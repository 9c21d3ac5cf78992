"""Pricing: itemised quotes that add up, a bounded market factor, quotes honoured until expiry."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.config import PricingConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.marketplace import PriceChanged, ResourceRequest, ResourceSpec
from fogcoord.marketplace.pricing import Pricer, market_factor
from tests.marketplace.support import MICRO, REQUESTER, Market, drain, market, market_config, micro


def ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


configs = st.builds(
    PricingConfig,
    base_compute_rate_per_gflop=st.sampled_from([0.001, 0.0005, 0.0123, 1.0, 0.000001]),
    network_multiplier=st.sampled_from([1.0, 1.2, 1.5, 3.0]),
    storage_rate_per_gb=st.sampled_from([0.0, 0.0001, 0.05]),
    demand_elasticity=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    min_market_factor=st.sampled_from([0.1, 0.5, 1.0]),
    max_market_factor=st.sampled_from([1.0, 2.0, 10.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    configs,
    st.floats(1e-3, 1e9, allow_nan=False),
    st.floats(0, 1e4, allow_nan=False),
    st.booleans(),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_quote_items_add_up(
    config: PricingConfig,
    gflop: float,
    storage_gb: float,
    network_bound: bool,
    demand: int,
    supply: int,
) -> None:
    pricer = Pricer(config)
    pricer.update(demand, supply)
    q = pricer.quote(
        ResourceSpec(gflop=gflop, storage_gb=storage_gb, network_bound=network_bound), 0
    )
    quote = q.quote
    g = Decimal(repr(gflop))
    base = Decimal(str(config.base_compute_rate_per_gflop)) * MICRO
    compute, network, storage = (
        micro(quote.compute_cost),
        micro(quote.network_cost),
        micro(quote.storage_cost),
    )
    assert compute == ceil(base * g)
    assert storage == ceil(
        Decimal(str(config.storage_rate_per_gb)) * MICRO * Decimal(repr(storage_gb))
    )
    if network_bound:
        # network-bound work costs network_multiplier x the compute price (each item rounded up)
        exact = base * g * Decimal(str(config.network_multiplier))
        assert exact <= compute + network < exact + 2
        assert network == ceil(base * g * (Decimal(str(config.network_multiplier)) - 1))
    else:
        assert network == 0
    factor = quote.market_factor
    assert factor == market_factor(demand, supply, config)
    assert config.min_market_factor <= factor <= config.max_market_factor
    total = micro(quote.total)
    assert total == ceil((compute + network + storage) * Decimal(repr(factor)))
    assert micro(quote.price_per_gflop) == q.price_micro == max(1, ceil(total / g))
    assert q.price_micro * g >= total  # the price per GFLOP never under-states the total
    assert quote.expires_at == config.quote_ttl_seconds


@settings(max_examples=300, deadline=None)
@given(configs, st.integers(0, 10**9), st.integers(0, 10**9))
def test_the_factor_is_bounded_and_moves_with_demand(
    config: PricingConfig, demand: int, supply: int
) -> None:
    f = market_factor(demand, supply, config)
    assert config.min_market_factor <= f <= config.max_market_factor
    assert market_factor(demand + 1, supply, config) >= f
    assert market_factor(demand, supply + 1, config) <= f
    if demand == supply:
        assert f == 1.0
    raw = ((demand + 1) / (supply + 1)) ** config.demand_elasticity
    if config.min_market_factor <= raw <= config.max_market_factor:
        assert math.isclose(f, raw)


def test_extreme_markets_hit_the_bounds() -> None:
    cfg = PricingConfig()
    assert market_factor(10**9, 0, cfg) == cfg.max_market_factor == 2.0
    assert market_factor(0, 10**9, cfg) == cfg.min_market_factor == 0.5
    assert market_factor(0, 0, cfg) == 1.0
    assert market_factor(3, 0, cfg) == 2.0  # sqrt(4 / 1)
    assert market_factor(0, 3, cfg) == 0.5  # sqrt(1 / 4)
    assert market_factor(1, 0, cfg) == pytest.approx(2**0.5)


async def test_the_service_prices_with_the_market_factor(tmp_path: Path) -> None:
    async with market(tmp_path / "m.db", config=market_config(factor=None)) as m:
        spec = ResourceSpec(gflop=100.0)
        quote = await m.mkt.price_resources(spec)
        assert (quote.market_factor, micro(quote.price_per_gflop)) == (1.0, 1000)
        network = await m.mkt.price_resources(ResourceSpec(gflop=100.0, network_bound=True))
        assert micro(network.network_cost) == 20_000  # 1.2 x the compute cost of 100000
        assert micro(network.price_per_gflop) == 1200
        stored = await m.mkt.price_resources(ResourceSpec(gflop=100.0, storage_gb=10.0))
        assert micro(stored.storage_cost) == 1000
        assert micro(stored.total) == 101_000
        assert micro(stored.price_per_gflop) == 1010

        # demand: three slots asked for and nobody to supply them: the factor hits its max
        await m.auction(slots=3)
        high = await m.mkt.price_resources(spec)
        assert (high.market_factor, micro(high.price_per_gflop)) == (2.0, 2000)
        # supply: many eligible devices (and no open auction): the factor hits its min
        await m.mkt.cancel_auction(m.mkt.list_auctions()[0].auction_id, REQUESTER)
        await m.devices_n(30)
        low = await m.mkt.price_resources(spec)
        assert (low.market_factor, micro(low.price_per_gflop)) == (0.5, 500)
        metrics = await m.mkt.get_market_metrics()
        assert metrics.market_factor == 0.5
        await drain()
        changes = [(e.market_factor, e.demand, e.supply) for e in m.events.of(PriceChanged)]
        assert changes == [(2.0, 3, 0), (1.0, 0, 0), (0.5, 0, 30)]


async def test_a_quote_is_honoured_until_it_expires_even_after_the_factor_moves(
    tmp_path: Path,
) -> None:
    cfg = market_config(factor=None, pricing={"quote_ttl_seconds": 30.0})
    async with market(tmp_path / "m.db", config=cfg) as m:
        quote = await m.mkt.price_resources(ResourceSpec(gflop=100.0))
        stale = await m.mkt.price_resources(ResourceSpec(gflop=100.0))
        assert micro(quote.price_per_gflop) == 1000
        assert quote.expires_at == m.clock.time() + 30.0
        await m.auction(slots=5)  # the factor moves to its max
        assert (
            micro((await m.mkt.price_resources(ResourceSpec(gflop=100.0))).price_per_gflop) == 2000
        )

        m.clock.advance(30.0)  # expires_at itself is still in time
        aid = await m.auction(slots=1, quote_id=quote.quote_id)
        view = await m.mkt.get_auction(aid)
        assert micro(view.quoted_price_per_gflop) == 1000
        assert (micro(view.reserve_price_per_gflop), micro(view.bid_increment)) == (700, 10)

        m.clock.advance(0.5)
        balance, escrows = m.balance(REQUESTER), m.escrow_accounts()
        with pytest.raises(ValidationFailed) as info:
            await m.auction(slots=1, quote_id=stale.quote_id)
        assert info.value.fields["field"] == "quote_id"
        with pytest.raises(ValidationFailed) as info:
            await m.auction(slots=1, quote_id="q-never-issued")
        assert info.value.fields["field"] == "quote_id"
        assert (m.balance(REQUESTER), m.escrow_accounts()) == (balance, escrows)
        assert len(m.mkt.list_auctions()) == 2


async def test_a_ceiling_below_the_reserve_is_refused(m: Market) -> None:
    await m.wallet()
    with pytest.raises(ValidationFailed) as info:
        await m.auction(ceiling="0.00069")  # reserve is 0.7 x 0.001
    assert info.value.fields["field"] == "max_price_per_gflop"
    with pytest.raises(ValidationFailed) as info:
        await m.mkt.create_auction(
            ResourceRequest(
                requester=REQUESTER,
                slots=1,
                gflop=1.0,
                max_price_per_gflop=Decimal("0.0010001"),
            )
        )
    assert info.value.fields["field"] == "max_price_per_gflop"
    assert m.escrow_accounts() == []
