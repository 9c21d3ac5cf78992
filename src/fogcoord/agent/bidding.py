"""Bidding automatically in the auctions the coordinator announces.

The coordinator pushes an ``auction`` message down the channel when an auction opens; the agent
answers over HTTP with its device key (``POST /v1/auctions/{id}/bids``), never on the channel,
so the in-order heartbeat answers are untouched. What to ask is :func:`choose_ask`, a pure
function of the owner's :class:`AskPolicy`, the offer and the device's live state.

The auction pays every winner one clearing price, at least its own ask and usually the next
higher ask, so an ask only decides whether the device wins: the owner's true cost (the policy's
minimum) is the right ask. Without a minimum the agent asks the reserve, the lowest price the
auction accepts. Asks sit on the auction's grid (multiples of ``bid_increment``), rounded up so an
ask never goes below what the owner asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fogcoord.agent.handlers import Message
from fogcoord.agent.runner import Agent, http_transport
from fogcoord.api.schemas import Heartbeat
from fogcoord.client import FogApiError, FogClient

log = logging.getLogger("fogcoord.agent.bidding")

BID_TIMEOUT_S = 10.0


class AskPolicy(BaseModel):
    """The owner's terms for selling this device's compute."""

    model_config = ConfigDict(frozen=True)

    min_price_per_gflop: Decimal = Field(
        Decimal(0), ge=0, allow_inf_nan=False, description="never ask less; 0: the reserve"
    )
    markup: Decimal = Field(
        Decimal(0), ge=0, le=100, allow_inf_nan=False, description="fraction above the reserve"
    )
    only_when_charging: bool = False
    min_battery_percent: float = Field(0.0, ge=0, le=100)
    enabled: bool = True


class AuctionOffer(BaseModel):
    """An announced auction, as pushed to the device."""

    model_config = ConfigDict(frozen=True)

    auction_id: str = Field(min_length=1)
    slots: int = Field(ge=1)
    gflop: float = Field(gt=0)
    max_price_per_gflop: Decimal = Field(gt=0, allow_inf_nan=False)
    reserve_price_per_gflop: Decimal = Field(gt=0, allow_inf_nan=False)
    bid_increment: Decimal = Field(gt=0, allow_inf_nan=False)
    closes_at: float
    requester: str = ""


def on_grid(price: Decimal, step: Decimal) -> Decimal:
    """The smallest multiple of ``step`` at or above ``price``, without trailing zeros."""
    ask = (price / step).to_integral_value(rounding=ROUND_CEILING) * step
    plain = ask.normalize()
    # normalize() writes whole numbers like 10 as 1E+1
    return plain if plain != plain.to_integral_value() else ask.to_integral_value()


def choose_ask(
    policy: AskPolicy, offer: AuctionOffer, state: Heartbeat, now: float
) -> Decimal | None:
    """The price to ask per GFLOP, or None to stay out of this auction.

    Stays out when the policy is off, the device is not charging but must be, its battery is
    below the policy's minimum, the auction has closed, or the ask would exceed its ceiling.
    """
    if not policy.enabled or now >= offer.closes_at:
        return None
    if policy.only_when_charging and not state.charging:
        return None
    if state.battery_percent < policy.min_battery_percent:
        return None
    reserve = offer.reserve_price_per_gflop
    wanted = max(policy.min_price_per_gflop, reserve * (1 + policy.markup))
    ask = on_grid(wanted, offer.bid_increment)
    if ask > offer.max_price_per_gflop:
        return None
    return ask


ClientFactory = Callable[[str, str], FogClient]
"""Makes the HTTP client that bids: (coordinator URL, device key) -> client."""


def _default_client(url: str, device_key: str) -> FogClient:
    return FogClient(url, device_key, timeout=BID_TIMEOUT_S, transport=http_transport(1))


class AutoBidder:
    """Bids for ``agent``'s device in every announced auction its :class:`AskPolicy` accepts.

    A refused ask (409: the auction filled, closed, or the device is not eligible right now) is
    counted and logged at debug level; it is never retried, since the next auction is the next
    chance. Call :meth:`close` when the agent has stopped.
    """

    def __init__(
        self,
        agent: Agent,
        policy: AskPolicy | None = None,
        *,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.agent = agent
        self.policy = policy if policy is not None else AskPolicy()
        self._client_factory = client_factory or _default_client
        self._client: FogClient | None = None
        self._client_key: str | None = None
        self.offers = 0
        self.declined = 0
        self.bids = 0
        self.refused = 0
        self.errors = 0
        self.last_refusal: str | None = None
        agent.on("auction", self.on_auction)

    async def on_auction(self, message: Message) -> None:
        """Handler of pushed ``auction`` messages; replies nothing on the channel."""
        self.offers += 1
        try:
            offer = AuctionOffer.model_validate(message)
        except ValidationError as exc:
            self.errors += 1
            log.warning("ignoring a malformed auction announcement: %s", exc.errors()[0])
            return
        identity = self.agent.identity
        if identity is None or identity.device_key is None:
            self.declined += 1
            return
        state = self.agent.device.reading()
        ask = choose_ask(self.policy, offer, state, self.agent.clock.time())
        if ask is None:
            self.declined += 1
            log.debug("not bidding in auction %s", offer.auction_id)
            return
        await self._bid(offer.auction_id, identity.device_id, identity.device_key, ask)

    async def _bid(self, auction_id: str, device_id: str, device_key: str, ask: Decimal) -> None:
        client = await self._client_for(device_key)
        try:
            try:
                placed = await client.submit_bid(auction_id, device_id, ask)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # a pooled connection the server had just closed: one fresh attempt (a repeated
                # ask is harmless: if the first landed, the second is refused as not lower)
                placed = await client.submit_bid(auction_id, device_id, ask)
        except FogApiError as exc:
            if exc.status == 409:
                self.refused += 1
                self.last_refusal = str(exc.body.get("rule", exc.code))
                log.debug("ask of %s in auction %s refused: %s", ask, auction_id, exc.detail)
                return
            self.errors += 1
            log.warning("bidding in auction %s failed: %s", auction_id, exc)
            return
        except (httpx.TransportError, OSError) as exc:
            self.errors += 1
            log.warning("bidding in auction %s failed: %s: %s", auction_id, type(exc).__name__, exc)
            return
        self.bids += 1
        log.info(
            "asked %s per GFLOP in auction %s (%d asks, %s)",
            ask,
            auction_id,
            placed.asks,
            placed.status.value,
        )

    async def _client_for(self, device_key: str) -> FogClient:
        # a registration again (identity lost) brings a new key: the old client speaks for no one
        if self._client is not None and self._client_key != device_key:
            await self.close()
        if self._client is None:
            self._client = self._client_factory(self.agent.coordinator_url, device_key)
            self._client_key = device_key
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        self._client_key = None
        if client is not None:
            await client.close()
