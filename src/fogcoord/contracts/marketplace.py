"""Marketplace contract: pricing, reverse auctions, settlement, revenue, market metrics."""

from __future__ import annotations

from decimal import Decimal
from typing import NewType, Protocol

from pydantic import BaseModel, ConfigDict, Field

AuctionId = NewType("AuctionId", str)


class ResourceSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    gflop: float = Field(ge=0, description="amount of verified work, GFLOP")
    storage_gb: float = Field(default=0.0, ge=0)
    network_bound: bool = False


class PricingQuote(BaseModel):
    model_config = ConfigDict(frozen=True)

    quote_id: str
    spec: ResourceSpec
    compute_cost: Decimal
    network_cost: Decimal
    storage_cost: Decimal
    market_factor: float
    total: Decimal
    price_per_gflop: Decimal
    expires_at: float


class ResourceRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    requester: str
    slots: int = Field(ge=1)
    gflop: float = Field(gt=0, description="work to buy, GFLOP")
    max_price_per_gflop: Decimal = Field(gt=0)
    duration_minutes: float | None = Field(default=None, gt=0)
    allow_partial: bool = False
    job_id: str | None = None


class ResourceBid(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str = Field(description="device id that would do the work")
    price_per_gflop: Decimal = Field(gt=0)


class AuctionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    auction_id: str
    status: str
    winners: tuple[str, ...] = ()
    clearing_price_per_gflop: Decimal | None = None
    captured: Decimal = Decimal(0)
    released: Decimal = Decimal(0)


class CompletedTask(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str
    provider: str
    validators: tuple[str, ...] = ()
    gflop: float = Field(ge=0)


class CompletedJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    auction_id: str
    tasks: tuple[CompletedTask, ...]
    final: bool = False


class RevenueDistribution(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    providers: dict[str, Decimal] = Field(default_factory=dict)
    validators: dict[str, Decimal] = Field(default_factory=dict)
    platform: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)


class MarketMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    volume: Decimal = Decimal(0)
    open_auctions: int = 0
    last_clearing_price: Decimal | None = None
    mean_clearing_price: Decimal | None = None
    fill_rate: float = 0.0
    supply_demand_ratio: float = 0.0
    revenue_by_role: dict[str, Decimal] = Field(default_factory=dict)


class MarketplaceProtocol(Protocol):
    async def price_resources(self, resource_spec: ResourceSpec) -> PricingQuote: ...

    async def create_auction(self, resource_request: ResourceRequest) -> AuctionId: ...

    async def submit_bid(self, auction_id: str, bid: ResourceBid) -> bool: ...

    async def settle_auction(self, auction_id: str) -> AuctionResult: ...

    async def distribute_revenue(self, completed_job: CompletedJob) -> RevenueDistribution: ...

    async def get_market_metrics(self) -> MarketMetrics: ...
