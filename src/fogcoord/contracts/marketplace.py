"""Marketplace contract: pricing, reverse auctions, settlement, revenue, market metrics.

Every price is per GFLOP of verified work (fuel-derived, see ``contracts.units``): quotes, asks,
ceilings, clearing prices and payouts all use that one unit. Prices cross this boundary as
``Decimal`` tokens and are whole micro-tokens per GFLOP inside.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import NewType, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.contracts.events import ServiceEvent

AuctionId = NewType("AuctionId", str)


class ResourceSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    gflop: float = Field(ge=1e-6, le=1e12, description="amount of verified work, GFLOP")
    storage_gb: float = Field(default=0.0, ge=0, le=1e6)
    network_bound: bool = False


class PricingQuote(BaseModel):
    """An itemised price, honoured by ``create_auction`` until ``expires_at``."""

    model_config = ConfigDict(frozen=True)

    quote_id: str
    spec: ResourceSpec
    compute_cost: Decimal = Field(description="base rate x GFLOP")
    network_cost: Decimal = Field(description="extra for network-bound work")
    storage_cost: Decimal = Field(description="storage rate x GB")
    market_factor: float = Field(description="bounded demand/supply factor applied to the sum")
    total: Decimal
    price_per_gflop: Decimal = Field(description="total / GFLOP, whole micro-tokens")
    expires_at: float


class ResourceRequest(BaseModel):
    """A reverse auction for ``slots`` devices sharing ``gflop`` of work."""

    model_config = ConfigDict(frozen=True)

    requester: str = Field(description="principal buying; cannot also bid")
    slots: int = Field(ge=1, le=100_000)
    gflop: float = Field(ge=1e-6, le=1e12, description="work to buy, GFLOP")
    max_price_per_gflop: Decimal = Field(
        gt=0, le=1_000_000, description="ceiling, tokens per GFLOP"
    )
    duration_minutes: float | None = Field(default=None, gt=0)
    allow_partial: bool = False
    job_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$"
    )
    wallet: str | None = Field(default=None, description="paying wallet; the requester's own")
    quote_id: str | None = Field(default=None, description="an unexpired quote to price from")
    storage_gb: float = Field(default=0.0, ge=0, le=1e6)
    network_bound: bool = False


class ResourceBid(BaseModel):
    """An ask: what a device would take per GFLOP of verified work."""

    model_config = ConfigDict(frozen=True)

    provider: str = Field(min_length=1, description="device id that would do the work")
    price_per_gflop: Decimal = Field(gt=0, le=1_000_000)


class AuctionStatus(StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    PARTIAL = "partial"
    FAILED = "failed"


class AuctionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    auction_id: str
    status: str
    winners: tuple[str, ...] = ()
    clearing_price_per_gflop: Decimal | None = None
    captured: Decimal = Decimal(0)
    released: Decimal = Decimal(0)
    reason: str = ""
    escrow_id: str = ""


class Ask(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    owner: str
    price_per_gflop: Decimal
    submitted_at: float


class AuctionView(BaseModel):
    """An auction as its requester (and the public) sees it."""

    model_config = ConfigDict(frozen=True)

    auction_id: str
    requester: str
    escrow_id: str
    job_id: str | None
    slots: int
    gflop: float
    status: AuctionStatus
    max_price_per_gflop: Decimal
    reserve_price_per_gflop: Decimal
    bid_increment: Decimal
    quoted_price_per_gflop: Decimal
    held: Decimal
    opened_at: float
    closes_at: float
    allow_partial: bool
    asks: int
    best_ask: Decimal | None = None
    result: AuctionResult | None = None


class CompletedTask(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str = Field(min_length=1, max_length=128)
    provider: str = Field(min_length=1, description="device whose result was accepted")
    validators: tuple[str, ...] = Field(
        default=(), description="devices whose re-execution confirmed it"
    )
    gflop: float = Field(default=0.0, ge=0)
    fuel: int | None = Field(
        default=None, ge=0, description="verified fuel; exact, preferred over gflop when given"
    )


class CompletedJob(BaseModel):
    """Verified tasks of one job to pay now; ``final`` ends the job and returns what is left."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    auction_id: str
    tasks: tuple[CompletedTask, ...] = ()
    final: bool = False
    hold_payouts: bool = Field(
        default=False, description="leave payouts pending until the job ends (or is voided)"
    )
    post_pending: bool = Field(
        default=False, description="post the payouts held so far (a long job's holding period)"
    )
    void_devices: tuple[str, ...] = Field(
        default=(), description="devices shown to have cheated: their pending payouts are voided"
    )


class RevenueDistribution(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    providers: dict[str, Decimal] = Field(default_factory=dict)
    validators: dict[str, Decimal] = Field(default_factory=dict)
    platform: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)
    voided: Decimal = Decimal(0)
    tasks_paid: int = 0
    tasks_already_paid: int = 0
    pending: bool = False


class PriceStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int = 0
    last: Decimal | None = None
    mean: Decimal | None = None
    p50: Decimal | None = None
    p95: Decimal | None = None


class MarketMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    volume: Decimal = Field(default=Decimal(0), description="tokens paid out of escrows")
    open_auctions: int = 0
    auctions_settled: int = 0
    auctions_failed: int = 0
    last_clearing_price: Decimal | None = None
    mean_clearing_price: Decimal | None = None
    clearing_prices: dict[str, PriceStats] = Field(
        default_factory=dict, description="by window: 1h, 24h, all"
    )
    fill_rate: float = Field(default=0.0, description="slots filled / slots asked for")
    supply_demand_ratio: float = 0.0
    market_factor: float = 1.0
    revenue_by_role: dict[str, Decimal] = Field(default_factory=dict)


# --- events: one per auction transition and per payout ---------------------------------------


class AuctionOpened(ServiceEvent):
    auction_id: str
    requester: str
    slots: int
    gflop: float
    max_price_per_gflop: Decimal
    reserve_price_per_gflop: Decimal
    bid_increment: Decimal
    closes_at: float


class BidAccepted(ServiceEvent):
    auction_id: str
    provider: str
    price_per_gflop: Decimal
    asks: int


class AuctionSettled(ServiceEvent):
    durable = True

    auction_id: str
    status: str
    winners: tuple[str, ...]
    clearing_price_per_gflop: Decimal | None
    captured: Decimal
    released: Decimal


class AuctionFailed(ServiceEvent):
    durable = True

    auction_id: str
    reason: str
    released: Decimal


class RevenueDistributed(ServiceEvent):
    durable = True

    job_id: str
    batch_id: str
    tasks: int
    provider: Decimal
    validator: Decimal
    platform: Decimal
    refunded: Decimal
    pending: bool


class PriceChanged(ServiceEvent):
    market_factor: float
    demand: int
    supply: int


class MarketplaceProtocol(Protocol):
    async def price_resources(self, resource_spec: ResourceSpec) -> PricingQuote: ...

    async def create_auction(self, resource_request: ResourceRequest) -> AuctionId: ...

    async def submit_bid(self, auction_id: str, bid: ResourceBid) -> bool: ...

    async def settle_auction(self, auction_id: str) -> AuctionResult: ...

    async def distribute_revenue(self, completed_job: CompletedJob) -> RevenueDistribution: ...

    async def get_market_metrics(self) -> MarketMetrics: ...

    async def get_auction(self, auction_id: str) -> AuctionView: ...

    async def cancel_auction(self, auction_id: str, requester: str) -> AuctionResult: ...
