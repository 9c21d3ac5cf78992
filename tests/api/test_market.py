"""The market over HTTP: quotes, auctions over escrow, who may ask for which device, the auction
rules as 409s naming the rule, settlement and cancellation rights, metrics, and 422s naming the
field for malformed input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fogcoord.api.app import create_app
from fogcoord.auth.models import PrincipalKind, Scope
from fogcoord.client import FogApiError, FogClient
from fogcoord.contracts.marketplace import AuctionStatus, AuctionView
from fogcoord.coordinator import Coordinator
from tests.harvesting.support import cap
from tests.helpers import make_config, running_api

GFLOP = 1000.0
CEILING = Decimal("0.002")


@dataclass
class User:
    principal_id: str
    client: FogClient


@dataclass
class Api:
    coord: Coordinator
    admin: FogClient
    alice: User
    """A requester with a wallet."""
    bob: User
    """Another requester; owns the devices."""
    devices: dict[str, User]
    """Bob's eligible devices, each with its own key."""
    alices_phone: User
    """An eligible device owned by alice."""

    async def open(self, slots: int = 2, **over: Any) -> AuctionView:
        return await self.alice.client.create_auction(slots, GFLOP, CEILING, **over)

    def wallet(self, wallet_id: str) -> tuple[Decimal, Decimal]:
        info = self.coord.tokenomics.wallet_info(wallet_id)
        return info.balance, info.pending_out


def client_for(coord: Coordinator, key: str) -> FogClient:
    transport = httpx.ASGITransport(app=create_app(coord, manage_lifecycle=False))
    return FogClient("http://test", key, transport=transport)


async def add_device(coord: Coordinator, device_id: str, owner: str, *, beat: bool = True) -> User:
    """Register ``device_id`` as its owner would (its own principal and key); with ``beat`` it
    heartbeats plugged in, so it is eligible for work."""
    store = coord.auth.store
    principal = await asyncio.to_thread(store.create_principal, PrincipalKind.DEVICE, device_id)
    issued = await asyncio.to_thread(store.issue_key, principal.principal_id)
    await coord.harvesting.register_device(
        cap(device_id, owner), principal_id=principal.principal_id
    )
    if beat:
        await coord.harvesting.heartbeat(
            device_id, battery_percent=80.0, charging=True, thermal_celsius=30.0
        )
    return User(principal.principal_id, client_for(coord, issued.key))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_config(tmp_path)) as (coord, admin, _):
        users = []
        for name in ("alice", "bob"):
            issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name=name)
            users.append(User(issued.principal.principal_id, client_for(coord, issued.key)))
        alice, bob = users
        await alice.client.create_wallet()
        devices = {d: await add_device(coord, d, bob.principal_id) for d in ("d1", "d2", "d3")}
        phone = await add_device(coord, "alice-phone", alice.principal_id)
        everyone = [alice, bob, phone, *devices.values()]
        try:
            yield Api(coord, admin, alice, bob, devices, phone)
        finally:
            for user in everyone:
                await user.client.close()


def on_grid(view: AuctionView, steps: int) -> Decimal:
    """The reserve plus ``steps`` increments."""
    return view.reserve_price_per_gflop + steps * view.bid_increment


async def refused(call: Any) -> FogApiError:
    with pytest.raises(FogApiError) as caught:
        await call
    return caught.value


# --- quotes and opening ------------------------------------------------------------------------


async def test_a_quote_is_itemised_and_an_auction_can_price_from_it(api: Api) -> None:
    q = await api.alice.client.quote(GFLOP, storage_gb=2.0, network_bound=True)
    assert (q.spec.gflop, q.spec.storage_gb, q.spec.network_bound) == (GFLOP, 2.0, True)
    items = (q.compute_cost, q.network_cost, q.storage_cost)
    assert items == (Decimal(1), Decimal("0.2"), Decimal("0.0002"))  # the default rates
    exact = sum(items) * Decimal(repr(q.market_factor))
    assert exact <= q.total < exact + Decimal("0.000001")  # rounded up to the micro-token
    assert q.price_per_gflop * Decimal(GFLOP) >= q.total
    # a device may read prices too (it has market:read)
    assert (await api.devices["d1"].client.quote(GFLOP)).price_per_gflop > 0
    view = await api.open(quote_id=q.quote_id, storage_gb=2.0, network_bound=True)
    assert view.quoted_price_per_gflop == q.price_per_gflop


async def test_opening_an_auction_holds_ceiling_times_work_for_the_caller(api: Api) -> None:
    alice = api.alice.principal_id
    r = await api.alice.client._http.post(
        "/v1/auctions", json={"slots": 2, "gflop": GFLOP, "max_price_per_gflop": "0.002"}
    )
    assert r.status_code == 201, r.text
    view = AuctionView.model_validate(r.json())
    assert (view.requester, view.status, view.asks) == (alice, AuctionStatus.OPEN, 0)
    assert view.held == Decimal(2)
    assert view.reserve_price_per_gflop <= view.max_price_per_gflop
    assert api.wallet(alice) == (Decimal(10), Decimal(2))
    holds = await api.alice.client.holds(alice)
    assert [(h.job_id, h.held, h.state) for h in holds] == [(view.escrow_id, Decimal(2), "pending")]
    assert await api.alice.client.auction(view.auction_id) == view
    assert [a.auction_id for a in await api.bob.client.auctions(status="open")] == [view.auction_id]


async def test_the_requester_is_the_caller_never_a_body_field(api: Api) -> None:
    r = await api.alice.client._http.post(
        "/v1/auctions",
        json={
            "slots": 1,
            "gflop": GFLOP,
            "max_price_per_gflop": "0.002",
            "requester": api.bob.principal_id,
        },
    )
    assert r.status_code == 422
    assert r.json()["field"] == "requester"
    assert api.coord.marketplace.list_auctions() == []


async def test_too_little_balance_is_409_and_nothing_is_held(api: Api) -> None:
    alice = api.alice.principal_id
    before = api.coord.tokenomics.ledger.head
    error = await refused(api.alice.client.create_auction(1, 1e7, CEILING))
    assert (error.status, error.code) == (409, "insufficient_funds")
    assert error.body["wallet"] == alice
    assert Decimal(error.body["amount"]) == Decimal(20_000)
    available = api.coord.tokenomics.wallet_available(alice)
    assert available is not None
    assert Decimal(error.body["available"]) * 1_000_000 == available
    assert api.wallet(alice) == (Decimal(10), Decimal(0))
    assert await api.alice.client.holds(alice) == []
    assert await api.alice.client.auctions() == []
    assert api.coord.tokenomics.ledger.head == before


async def test_a_requester_without_a_wallet_or_paying_from_anothers_is_refused(api: Api) -> None:
    missing = await refused(api.bob.client.create_auction(1, GFLOP, CEILING))
    assert (missing.status, missing.body["kind"]) == (404, "wallet")
    await api.bob.client.create_wallet()
    foreign = await refused(
        api.bob.client.create_auction(1, GFLOP, CEILING, wallet=api.alice.principal_id)
    )
    assert foreign.status == 403
    assert api.wallet(api.alice.principal_id) == (Decimal(10), Decimal(0))


async def test_a_ceiling_below_the_reserve_is_422_naming_it(api: Api) -> None:
    error = await refused(api.alice.client.create_auction(1, GFLOP, Decimal("0.000001")))
    assert (error.status, error.body["field"]) == (422, "max_price_per_gflop")
    assert "reserve" in error.detail


async def test_a_device_cannot_open_auctions(api: Api) -> None:
    error = await refused(api.devices["d1"].client.create_auction(1, GFLOP, CEILING))
    assert (error.status, error.code) == (403, "forbidden")
    assert error.body["scope"] == "market:write"


# --- asks --------------------------------------------------------------------------------------


async def test_a_device_asks_for_itself_and_the_answer_is_the_auction(api: Api) -> None:
    view = await api.open()
    r = await api.devices["d1"].client._http.post(
        f"/v1/auctions/{view.auction_id}/bids",
        json={"provider": "d1", "price_per_gflop": str(on_grid(view, 2))},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["accepted"] is True
    assert (body["auction_id"], body["asks"], body["status"]) == (view.auction_id, 1, "open")
    assert Decimal(body["best_ask"]) == on_grid(view, 2)
    # a lower ask replaces it
    placed = await api.devices["d1"].client.submit_bid(view.auction_id, "d1", on_grid(view, 1))
    assert (placed.asks, placed.best_ask) == (1, on_grid(view, 1))


async def test_a_device_cannot_ask_for_another_device(api: Api) -> None:
    view = await api.open()
    for provider in ("d2", "alice-phone", "ghost"):
        error = await refused(
            api.devices["d1"].client.submit_bid(view.auction_id, provider, on_grid(view, 0))
        )
        assert (error.status, error.code) == (403, "forbidden"), provider
    assert (await api.admin.auction(view.auction_id)).asks == 0


async def test_an_operator_asks_for_any_device(api: Api) -> None:
    view = await api.open()
    placed = await api.admin.submit_bid(view.auction_id, "d2", on_grid(view, 0))
    assert placed.asks == 1
    [ask] = await api.alice.client.asks(view.auction_id)
    assert (ask.provider, ask.owner) == ("d2", api.bob.principal_id)


async def test_an_owner_with_the_bid_scope_asks_for_its_own_devices_only(api: Api) -> None:
    issued = await api.admin.create_key(
        kind=PrincipalKind.OPERATOR, name="olga", scopes=[Scope.MARKET_BID]
    )
    olga = issued.principal.principal_id
    own = await add_device(api.coord, "olgas-box", olga)
    async with client_for(api.coord, issued.key) as client:
        view = await api.open()
        placed = await client.submit_bid(view.auction_id, "olgas-box", on_grid(view, 0))
        assert placed.asks == 1
        error = await refused(client.submit_bid(view.auction_id, "d1", on_grid(view, 0)))
        assert (error.status, error.code) == (403, "forbidden")
    await own.client.close()
    [ask] = await api.alice.client.asks(view.auction_id)
    assert (ask.provider, ask.owner) == ("olgas-box", olga)


async def test_an_owner_asks_for_its_own_device_but_not_for_anothers(api: Api) -> None:
    view = await api.open()
    placed = await api.bob.client.submit_bid(view.auction_id, "d1", on_grid(view, 0))
    assert placed.asks == 1
    error = await refused(api.alice.client.submit_bid(view.auction_id, "d2", on_grid(view, 0)))
    assert error.status == 403


async def test_the_requester_cannot_ask_in_its_own_auction(api: Api) -> None:
    view = await api.open()
    error = await refused(
        api.alices_phone.client.submit_bid(view.auction_id, "alice-phone", on_grid(view, 0))
    )
    assert (error.status, error.code, error.body["rule"]) == (409, "bid_refused", "own_auction")
    assert error.body["auction_id"] == view.auction_id
    assert "own auction" in error.detail


def _above_ceiling(view: AuctionView) -> Decimal:
    return view.max_price_per_gflop + view.bid_increment


def _below_reserve(view: AuctionView) -> Decimal:
    return view.reserve_price_per_gflop - view.bid_increment


def _off_grid(view: AuctionView) -> Decimal:
    return view.reserve_price_per_gflop + Decimal("0.000001")


@pytest.mark.parametrize(
    ("price", "rule"),
    [(_above_ceiling, "above_ceiling"), (_below_reserve, "below_reserve"), (_off_grid, "off_grid")],
)
async def test_asks_breaking_a_price_rule_are_409_naming_it(
    api: Api, price: Any, rule: str
) -> None:
    view = await api.open()
    assert view.bid_increment > Decimal("0.000001"), "the grid must be coarser than a micro-token"
    d1 = api.devices["d1"].client
    error = await refused(d1.submit_bid(view.auction_id, "d1", price(view)))
    assert (error.status, error.code, error.body["rule"]) == (409, "bid_refused", rule)
    assert (await api.admin.auction(view.auction_id)).asks == 0


async def test_a_new_ask_must_be_lower_by_an_increment(api: Api) -> None:
    view = await api.open()
    d1 = api.devices["d1"].client
    await d1.submit_bid(view.auction_id, "d1", on_grid(view, 3))
    for same_or_higher in (on_grid(view, 3), on_grid(view, 4)):
        error = await refused(d1.submit_bid(view.auction_id, "d1", same_or_higher))
        assert error.body["rule"] == "not_lower"
    assert (await api.admin.auction(view.auction_id)).best_ask == on_grid(view, 3)


async def test_unknown_and_ineligible_devices_are_refused_by_rule(api: Api) -> None:
    view = await api.open()
    unknown = await refused(api.admin.submit_bid(view.auction_id, "ghost", on_grid(view, 0)))
    assert (unknown.status, unknown.body["rule"]) == (409, "unknown_device")
    idle = await add_device(api.coord, "idle", api.bob.principal_id, beat=False)
    try:
        ineligible = await refused(
            idle.client.submit_bid(view.auction_id, "idle", on_grid(view, 0))
        )
    finally:
        await idle.client.close()
    assert (ineligible.status, ineligible.body["rule"]) == (409, "ineligible")


async def test_the_n_plus_first_ask_settles_at_one_uniform_price(api: Api) -> None:
    alice = api.alice.principal_id
    view = await api.open(slots=2)
    for steps, device in ((1, "d1"), (0, "d2")):
        placed = await api.devices[device].client.submit_bid(
            view.auction_id, device, on_grid(view, steps)
        )
        assert placed.status is AuctionStatus.OPEN
    last = await api.devices["d3"].client.submit_bid(view.auction_id, "d3", on_grid(view, 5))
    assert last.status is AuctionStatus.SETTLED
    result = last.result
    assert result is not None
    assert result.winners == ("d2", "d1")
    assert result.clearing_price_per_gflop == on_grid(view, 5)  # the (N+1)-th ask
    assert result.captured == on_grid(view, 5) * Decimal(GFLOP)
    assert result.captured + result.released == view.held
    assert api.wallet(alice) == (Decimal(10) - result.captured, Decimal(0))
    late = await refused(
        api.devices["d1"].client.submit_bid(view.auction_id, "d1", on_grid(view, 0))
    )
    assert late.body["rule"] == "auction_closed"
    metrics = await api.bob.client.market_metrics()
    assert (metrics.auctions_settled, metrics.open_auctions) == (1, 0)
    assert metrics.last_clearing_price == on_grid(view, 5)
    assert metrics.fill_rate == 1.0


# --- settling, cancelling, reading asks --------------------------------------------------------


async def test_only_the_requester_or_an_operator_settles_cancels_or_reads_asks(api: Api) -> None:
    view = await api.open(slots=2)
    await api.devices["d1"].client.submit_bid(view.auction_id, "d1", on_grid(view, 0))
    await api.bob.client.create_wallet()
    for call in (
        api.bob.client.settle_auction(view.auction_id),
        api.bob.client.cancel_auction(view.auction_id),
        api.bob.client.asks(view.auction_id),
    ):
        error = await refused(call)
        assert (error.status, error.code) == (403, "forbidden")
    device = await refused(api.devices["d1"].client.settle_auction(view.auction_id))
    assert (device.status, device.body["scope"]) == (403, "market:write")
    device_asks = await refused(api.devices["d1"].client.asks(view.auction_id))
    assert device_asks.status == 403
    assert [a.provider for a in await api.admin.asks(view.auction_id)] == ["d1"]
    assert (await api.alice.client.auction(view.auction_id)).status is AuctionStatus.OPEN


async def test_settling_needs_as_many_asks_as_slots_then_clears_at_the_highest_winner(
    api: Api,
) -> None:
    alice = api.alice.principal_id
    view = await api.open(slots=2)
    await api.devices["d1"].client.submit_bid(view.auction_id, "d1", on_grid(view, 0))
    early = await refused(api.alice.client.settle_auction(view.auction_id))
    assert (early.status, early.code, early.body["asks"]) == (409, "conflict", 1)
    await api.devices["d2"].client.submit_bid(view.auction_id, "d2", on_grid(view, 2))
    result = await api.alice.client.settle_auction(view.auction_id)
    assert (result.status, result.winners) == ("settled", ("d1", "d2"))
    assert result.clearing_price_per_gflop == on_grid(view, 2)
    assert await api.alice.client.settle_auction(view.auction_id) == result  # idempotent
    assert api.wallet(alice) == (Decimal(10) - result.captured, Decimal(0))
    cancel = await refused(api.alice.client.cancel_auction(view.auction_id))
    assert (cancel.status, cancel.code) == (409, "conflict")


async def test_an_operator_may_settle_a_partial_auction(api: Api) -> None:
    view = await api.open(slots=3, allow_partial=True)
    await api.devices["d1"].client.submit_bid(view.auction_id, "d1", on_grid(view, 1))
    result = await api.admin.settle_auction(view.auction_id)
    assert (result.status, result.winners) == ("partial", ("d1",))
    assert result.clearing_price_per_gflop == on_grid(view, 1)


async def test_cancelling_returns_the_whole_hold(api: Api) -> None:
    alice = api.alice.principal_id
    view = await api.open()
    assert api.wallet(alice) == (Decimal(10), view.held)
    result = await api.alice.client.cancel_auction(view.auction_id)
    assert (result.status, result.winners, result.released) == ("failed", (), view.held)
    assert api.wallet(alice) == (Decimal(10), Decimal(0))
    assert await api.alice.client.cancel_auction(view.auction_id) == result
    by_operator = await api.open()
    assert (await api.admin.cancel_auction(by_operator.auction_id)).status == "failed"
    listed = await api.alice.client.auctions(AuctionStatus.FAILED)
    assert {a.auction_id for a in listed} == {view.auction_id, by_operator.auction_id}
    metrics = await api.alice.client.market_metrics()
    assert (metrics.auctions_failed, metrics.auctions_settled) == (2, 0)


async def test_listing_filters_by_status_and_limits(api: Api) -> None:
    first = await api.open()
    second = await api.open()
    await api.alice.client.cancel_auction(first.auction_id)
    newest_first = await api.alice.client.auctions()
    assert [a.auction_id for a in newest_first] == [second.auction_id, first.auction_id]
    assert [a.auction_id for a in await api.alice.client.auctions(limit=1)] == [second.auction_id]
    assert [a.auction_id for a in await api.alice.client.auctions("open")] == [second.auction_id]


async def test_unknown_auctions_are_404(api: Api) -> None:
    for call in (
        api.alice.client.auction("auc-nope"),
        api.alice.client.settle_auction("auc-nope"),
        api.alice.client.cancel_auction("auc-nope"),
        api.alice.client.asks("auc-nope"),
        api.admin.submit_bid("auc-nope", "d1", Decimal("0.001")),
    ):
        error = await refused(call)
        assert (error.status, error.code) == (404, "not_found")


# --- malformed input ---------------------------------------------------------------------------

AUCTION = {"slots": 2, "gflop": GFLOP, "max_price_per_gflop": "0.002"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/quotes", {}, "gflop"),
        ("/v1/quotes", {"gflop": 0}, "gflop"),
        ("/v1/quotes", {"gflop": "lots"}, "gflop"),
        ("/v1/quotes", {"gflop": 1e13}, "gflop"),
        ("/v1/quotes", {"gflop": 5e-324}, "gflop"),
        ("/v1/quotes", {"gflop": 1, "storage_gb": -1}, "storage_gb"),
        ("/v1/quotes", {"gflop": 1, "storage_gigs": 1}, "storage_gigs"),
        ("/v1/auctions", {**AUCTION, "slots": 0}, "slots"),
        ("/v1/auctions", {**AUCTION, "slots": 1.5}, "slots"),
        ("/v1/auctions", {**AUCTION, "gflop": -1}, "gflop"),
        ("/v1/auctions", {**AUCTION, "gflop": 1e-300}, "gflop"),
        (
            "/v1/auctions",
            {**AUCTION, "max_price_per_gflop": "1000000.000001"},
            "max_price_per_gflop",
        ),
        ("/v1/auctions", {"slots": 1, "gflop": 1}, "max_price_per_gflop"),
        ("/v1/auctions", {**AUCTION, "max_price_per_gflop": "0.0000001"}, "max_price_per_gflop"),
        ("/v1/auctions", {**AUCTION, "max_price_per_gflop": "cheap"}, "max_price_per_gflop"),
        ("/v1/auctions", {**AUCTION, "max_price_per_gflop": "Infinity"}, "max_price_per_gflop"),
        ("/v1/auctions", {**AUCTION, "max_price_per_gflop": -1}, "max_price_per_gflop"),
        ("/v1/auctions", {**AUCTION, "duration_minutes": 0}, "duration_minutes"),
        ("/v1/auctions", {**AUCTION, "job_id": "no spaces"}, "job_id"),
        ("/v1/auctions", {**AUCTION, "quote_id": "q-gone"}, "quote_id"),
        ("/v1/auctions", {**AUCTION, "allow_partial": "perhaps"}, "allow_partial"),
    ],
)
async def test_malformed_bodies_are_422_naming_the_field(
    api: Api, path: str, body: dict[str, Any], field: str
) -> None:
    r = await api.alice.client._http.post(path, json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert (data["error"], data["field"]) == ("validation_failed", field)
    assert api.coord.marketplace.list_auctions() == []
    assert api.wallet(api.alice.principal_id) == (Decimal(10), Decimal(0))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price_per_gflop": "0.001"}, "provider"),
        ({"provider": "", "price_per_gflop": "0.001"}, "provider"),
        ({"provider": "a/b", "price_per_gflop": "0.001"}, "provider"),
        ({"provider": "d1"}, "price_per_gflop"),
        ({"provider": "d1", "price_per_gflop": 0}, "price_per_gflop"),
        ({"provider": "d1", "price_per_gflop": "1e-7"}, "price_per_gflop"),
        ({"provider": "d1", "price_per_gflop": "NaN"}, "price_per_gflop"),
        ({"provider": "d1", "price_per_gflop": "9999999999999.999999"}, "price_per_gflop"),
        ({"provider": "d1", "price_per_gflop": "0.001", "owner": "me"}, "owner"),
    ],
)
async def test_malformed_asks_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    view = await api.open()
    r = await api.devices["d1"].client._http.post(f"/v1/auctions/{view.auction_id}/bids", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert (await api.admin.auction(view.auction_id)).asks == 0


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"slots": 2, "gflop": NaN, "max_price_per_gflop": "0.002"}', "gflop"),
        (b'{"slots": 2, "gflop": Infinity, "max_price_per_gflop": "0.002"}', "gflop"),
        (b'{"slots": 2, "gflop": 1, "max_price_per_gflop": 1e999}', "max_price_per_gflop"),
        (b'{"slots": 2, "gflop": 1, "duration_minutes": NaN, "max_price_per_gflop": 1}', None),
        (b"not json", None),
        (b"[1, 2]", None),
    ],
)
async def test_unparseable_or_non_finite_bodies_are_422_never_500(
    api: Api, content: bytes, field: str | None
) -> None:
    r = await api.alice.client._http.post(
        "/v1/auctions", content=content, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    if field is not None:
        assert r.json()["field"] == field
    assert api.coord.marketplace.list_auctions() == []


@pytest.mark.parametrize(
    ("query", "field"), [({"status": "bogus"}, "status"), ({"limit": 0}, "limit")]
)
async def test_bad_listing_queries_are_422_naming_the_parameter(
    api: Api, query: dict[str, Any], field: str
) -> None:
    r = await api.alice.client._http.get("/v1/auctions", params=query)
    assert r.status_code == 422
    assert r.json()["field"] == field
