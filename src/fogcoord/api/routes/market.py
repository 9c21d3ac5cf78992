"""The compute market: quotes, reverse auctions, asks, settlement and market metrics.

A requester opens an auction as itself (never a body field) and only it (or an operator) settles,
cancels or reads the asks of its auction. An ask is placed for one device by that device's own
key, by the device's owner or by an operator; the auction's rules then decide (a refused ask is
409 ``bid_refused`` naming the ``rule``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ValidationError

from fogcoord.api.schemas import AuctionCreate, BidCreate, BidPlaced, QuoteRequest
from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import Forbidden, ValidationFailed
from fogcoord.contracts.marketplace import (
    Ask,
    AuctionResult,
    AuctionStatus,
    AuctionView,
    MarketMetrics,
    PricingQuote,
    ResourceBid,
    ResourceRequest,
    ResourceSpec,
)
from fogcoord.coordinator import Coordinator

router = APIRouter(prefix="/v1", tags=["market"])
M = TypeVar("M", bound=BaseModel)


def _contract(model: type[M], **fields: Any) -> M:
    """``model`` built from checked API input; should the contract be stricter than the API
    schema, the caller still gets a 422 naming the field, not a 500."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<body>"
        raise ValidationFailed(field, first["msg"]) from None


async def _requested_by_caller(coord: Coordinator, auction_id: str, who: Identity) -> AuctionView:
    """The auction, if the caller opened it or is an operator."""
    view = await coord.marketplace.get_auction(auction_id)
    if view.requester != who.principal.principal_id and not who.allows(Scope.ADMIN):
        raise Forbidden("only the auction's requester may do this", auction_id=auction_id)
    return view


def _may_bid_for(coord: Coordinator, provider: str, who: Identity) -> None:
    """The device itself, its owner or an operator; the same answer whether or not it exists."""
    if who.allows(Scope.ADMIN):
        return
    me = who.principal.principal_id
    if coord.harvesting.device_of(me) == provider:
        return
    reg = coord.harvesting.registry
    r = reg.row(provider)
    meta = reg.meta[r] if r is not None else None
    if meta is None or meta.owner != me:
        raise Forbidden("an ask may be placed only by the device itself or its owner")


@router.post("/quotes", response_model=PricingQuote, summary="Price some work (honoured briefly)")
async def quote(
    body: QuoteRequest,
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.MARKET_READ)),
) -> PricingQuote:
    spec = _contract(ResourceSpec, **body.model_dump())
    return await coord.marketplace.price_resources(spec)


@router.post(
    "/auctions",
    response_model=AuctionView,
    status_code=201,
    summary="Open a reverse auction, holding ceiling x work in escrow from the paying wallet",
)
async def create_auction(
    body: AuctionCreate,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.MARKET_WRITE)),
) -> AuctionView:
    request = _contract(ResourceRequest, requester=who.principal.principal_id, **body.model_dump())
    auction_id = await coord.marketplace.create_auction(request)
    return await coord.marketplace.get_auction(auction_id)


@router.get("/auctions", response_model=list[AuctionView], summary="Auctions, newest first")
async def list_auctions(
    status: AuctionStatus | None = None,
    limit: int = Query(100, ge=1, le=1000),
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.MARKET_READ)),
) -> list[AuctionView]:
    return coord.marketplace.list_auctions(status.value if status else None, limit)


@router.get("/auctions/{auction_id}", response_model=AuctionView, summary="One auction")
async def get_auction(
    auction_id: str,
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.MARKET_READ)),
) -> AuctionView:
    return await coord.marketplace.get_auction(auction_id)


@router.get(
    "/auctions/{auction_id}/asks",
    response_model=list[Ask],
    summary="The standing asks, best first (the requester or an operator)",
)
async def asks(
    auction_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.MARKET_READ)),
) -> list[Ask]:
    await _requested_by_caller(coord, auction_id, who)
    return coord.marketplace.asks(auction_id)


@router.post(
    "/auctions/{auction_id}/bids",
    response_model=BidPlaced,
    status_code=201,
    summary="Ask a price for one device (or lower its ask by at least one increment)",
    responses={409: {"description": "refused: `rule` names the auction rule the ask broke"}},
)
async def bid(
    auction_id: str,
    body: BidCreate,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.MARKET_BID)),
) -> BidPlaced:
    _may_bid_for(coord, body.provider, who)
    market = coord.marketplace
    ask = _contract(ResourceBid, provider=body.provider, price_per_gflop=body.price_per_gflop)
    accepted = await market.submit_bid(auction_id, ask)
    view = await market.get_auction(auction_id)
    return BidPlaced(accepted=accepted, **view.model_dump())


@router.post(
    "/auctions/{auction_id}/settle",
    response_model=AuctionResult,
    summary="Settle now: with at least N eligible asks, or a partial fill if allowed",
)
async def settle(
    auction_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.MARKET_WRITE)),
) -> AuctionResult:
    await _requested_by_caller(coord, auction_id, who)
    return await coord.marketplace.settle_auction(auction_id)


@router.post(
    "/auctions/{auction_id}/cancel",
    response_model=AuctionResult,
    summary="Withdraw an open auction; the whole hold goes back at once",
)
async def cancel(
    auction_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.MARKET_WRITE)),
) -> AuctionResult:
    view = await _requested_by_caller(coord, auction_id, who)
    return await coord.marketplace.cancel_auction(auction_id, view.requester)


@router.get("/market/metrics", response_model=MarketMetrics, summary="Volume, prices, fill rate")
async def metrics(
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.MARKET_READ)),
) -> MarketMetrics:
    return await coord.marketplace.get_market_metrics()
