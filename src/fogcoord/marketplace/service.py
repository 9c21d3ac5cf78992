"""FogMarketplaceService: quotes, reverse auctions over escrow, settlement, revenue, metrics.

The marketplace reaches tokenomics (escrow) and harvesting (eligibility, owners, trust) only
through the orchestrator's discovery, typed by their contracts. The escrow is held once, when the
auction opens, for the requester's ceiling x the work; settlement captures clearing price x work
and releases the rest at once; revenue is paid from that escrow batch by batch as tasks are
verified, and whatever was not earned goes back when the job ends.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import numpy as np
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.config import MarketplaceConfig
from fogcoord.contracts.errors import (
    Conflict,
    FogError,
    Forbidden,
    InsufficientFunds,
    NotFound,
    ValidationFailed,
)
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.harvesting import HarvestingProtocol
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.marketplace import (
    Ask,
    AuctionFailed,
    AuctionId,
    AuctionOpened,
    AuctionResult,
    AuctionSettled,
    AuctionStatus,
    AuctionView,
    BidAccepted,
    CompletedJob,
    CompletedTask,
    MarketMetrics,
    PriceChanged,
    PricingQuote,
    ResourceBid,
    ResourceRequest,
    ResourceSpec,
    RevenueDistributed,
    RevenueDistribution,
)
from fogcoord.contracts.tokenomics import PLATFORM_WALLET, PayoutLeg, TokenomicsProtocol
from fogcoord.contracts.units import MICRO_PER_TOKEN
from fogcoord.lifecycle import Publish, Resolve, ServiceBase, require_service
from fogcoord.marketplace.auction import AuctionState, BidRefused, clear_columns
from fogcoord.marketplace.metrics import MarketBook
from fogcoord.marketplace.pricing import Pricer, Quoted, ceil_micro, tokens
from fogcoord.marketplace.revenue import split_batch
from fogcoord.marketplace.store import Leg, SqlMarketStore

log = logging.getLogger(__name__)

NAME = "marketplace"

_MICRO = Decimal(MICRO_PER_TOKEN)
HOLD_GRACE_S = 3_600.0
"""How long past its close an uncaptured hold lives: if the coordinator is down for that long,
the requester's money comes back on its own instead of staying locked."""


def price_micro(value: Decimal, field: str) -> int:
    """Tokens per GFLOP to whole micro-tokens per GFLOP, refusing sub-micro precision."""
    try:
        micro = value * _MICRO
    except InvalidOperation as exc:
        raise ValidationFailed(field, "not a number") from exc
    if not micro.is_finite() or micro != micro.to_integral_value():
        raise ValidationFailed(field, "prices are whole micro-tokens (at most 6 decimals)")
    return int(micro)


def payout_id(escrow_id: str, batch_id: str, role: str, device: str) -> str:
    digest = hashlib.blake2b(f"{escrow_id}|{batch_id}|{role}|{device}".encode(), digest_size=20)
    return "pay:" + digest.hexdigest()


def batch_id_of(escrow_id: str, task_ids: list[str]) -> str:
    h = hashlib.blake2b(escrow_id.encode(), digest_size=16)
    for t in sorted(task_ids):
        h.update(b"\0" + t.encode())
    return "b-" + h.hexdigest()


class FogMarketplaceService(ServiceBase):
    service_type = NAME

    def __init__(
        self,
        config: MarketplaceConfig,
        engine: Callable[[], Engine],
        *,
        resolve: Resolve,
        clock: Clock | None = None,
        publish: Publish | None = None,
    ) -> None:
        super().__init__(
            NAME, dependencies=("storage", "tokenomics", "harvesting"), clock=clock, publish=publish
        )
        self.config = config
        self._engine = engine
        self._resolve = resolve
        self._store: SqlMarketStore | None = None
        self.pricer = Pricer(config.pricing)
        self.book = MarketBook()
        self._auctions: dict[str, AuctionState] = {}
        self._by_escrow: dict[str, str] = {}
        self._settling: dict[str, asyncio.Future[AuctionResult | None]] = {}
        self._owners: dict[str, dict[str, str]] = {}
        self._paid: dict[str, dict[str, int]] = {}
        self._payouts: dict[str, dict[str, dict[str, Any]]] = {}
        """escrow -> transfer id -> payout row"""
        self._vweights: dict[str, dict[str, int]] = {}
        """escrow -> validator device -> what it has validated so far (not voided)"""
        self._unfinished: dict[str, dict[str, list[Leg]]] = {}
        """escrow -> batch id -> legs of batches recorded but not yet known paid"""
        self._last_write: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._supply_dirty = False
        self._refreshing = False
        self._planned: dict[str, dict[str, Any]] = {}
        self._closed_rows: list[tuple[float, int, int, int | None]] = []

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def store(self) -> SqlMarketStore:
        if self._store is None:
            raise RuntimeError("marketplace is not started")
        return self._store

    async def on_start(self) -> None:
        self._store = await asyncio.to_thread(SqlMarketStore, self._engine())
        rows = await asyncio.to_thread(self.store.load_auctions)
        self._closed_rows = []
        for row in rows:
            self._restore(row)
        for closed in sorted(self._closed_rows, key=lambda c: c[0]):
            self.book.auction_closed(*closed)
        for role, amount in (await asyncio.to_thread(self.store.revenue_by_role)).items():
            self.book.paid(role, amount)
        for a in list(self._auctions.values()):
            if a.status is AuctionStatus.OPEN and a.auction_id in self._planned:
                await self._finish_settlement(a, self._planned.pop(a.auction_id))
        for batch in await asyncio.to_thread(self.store.unfinished_batches):
            await self._drive_batch(batch["escrow_id"], batch["batch_id"], _legs(batch["legs"]))
        await self.flush()
        self.every(1.0, self.expire_due)
        await self.refresh_market()

    async def on_stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.flush()

    async def check_health(self) -> HealthStatus:
        open_ = sum(1 for a in self._auctions.values() if a.status is AuctionStatus.OPEN)
        return HealthStatus.passing(f"{open_} open auctions, factor {self.pricer.factor:.3f}")

    async def _tokenomics(self) -> TokenomicsProtocol:
        return cast(TokenomicsProtocol, await require_service(self._resolve, "tokenomics"))

    async def _harvesting(self) -> HarvestingProtocol:
        return cast(HarvestingProtocol, await require_service(self._resolve, "harvesting"))

    # --- market state and pricing --------------------------------------------------------------

    def _demand(self) -> int:
        return sum(a.slots for a in self._auctions.values() if a.status is AuctionStatus.OPEN)

    async def refresh_market(self) -> None:
        """Recount supply and recompute the price factor (device and auction events call this)."""
        supply = await (await self._harvesting()).count_eligible()
        self._reprice(supply)

    def _reprice(self, supply: int | None = None) -> None:
        demand = self._demand()
        if self.pricer.update(demand, self.pricer.supply if supply is None else supply):
            self.emit(
                PriceChanged(
                    source=NAME,
                    market_factor=self.pricer.factor,
                    demand=demand,
                    supply=self.pricer.supply,
                )
            )

    async def on_device_event(self, event: ServiceEvent) -> None:
        """Bus handler for device discovery and state changes: supply moved; recount once."""
        self._supply_dirty = True
        if self._refreshing:
            return
        self._refreshing = True
        try:
            while self._supply_dirty:
                self._supply_dirty = False
                await self.refresh_market()
        finally:
            self._refreshing = False

    async def price_resources(self, resource_spec: ResourceSpec) -> PricingQuote:
        return self.pricer.quote(resource_spec, self.clock.time()).quote

    # --- auctions ------------------------------------------------------------------------------

    async def create_auction(self, resource_request: ResourceRequest) -> AuctionId:
        req = resource_request
        tok = await self._tokenomics()
        wallet = req.wallet or req.requester
        owner = tok.wallet_owner(wallet)
        if owner is None:
            raise NotFound("wallet", wallet)
        if owner != req.requester:
            raise Forbidden(f"wallet {wallet!r} belongs to another principal", wallet=wallet)
        if req.job_id is not None and req.job_id in self._by_escrow:
            raise Conflict(f"job {req.job_id!r} already has an auction", job_id=req.job_id)
        now = self.clock.time()
        quoted = self._quote_for(req, now)
        ceiling = price_micro(req.max_price_per_gflop, "max_price_per_gflop")
        auctions = self.config.auctions
        step = max(1, round(auctions.min_bid_increment * quoted.price_micro))
        floor = ceil_micro(Decimal(repr(auctions.reserve_price_ratio)) * quoted.price_micro)
        floor = max(step, -(-floor // step) * step)
        if ceiling < floor:
            raise ValidationFailed(
                "max_price_per_gflop",
                f"below the reserve price {tokens(floor)} per GFLOP "
                f"({auctions.reserve_price_ratio} x the quoted {tokens(quoted.price_micro)})",
            )
        gflop = Decimal(repr(req.gflop))
        hold = ceil_micro(gflop * ceiling)
        available = tok.wallet_available(wallet) or 0
        if hold > available:
            raise InsufficientFunds(wallet, tokens(hold), tokens(available))
        minutes = auctions.auction_duration_minutes
        if req.duration_minutes is not None:
            minutes = min(minutes, req.duration_minutes)
        auction_id = "auc-" + secrets.token_hex(12)
        escrow_id = req.job_id or auction_id
        self._by_escrow[escrow_id] = auction_id  # reserved before the first await
        try:
            await tok.hold_escrow(escrow_id, wallet, hold, minutes * 60 + HOLD_GRACE_S)
        except FogError as exc:
            del self._by_escrow[escrow_id]
            if exc.fields.get("result") in ("exceeds_credits", "exceeds_debits"):
                available = tok.wallet_available(wallet) or 0
                raise InsufficientFunds(wallet, tokens(hold), tokens(available)) from exc
            raise
        a = AuctionState(
            auction_id=auction_id,
            requester=req.requester,
            wallet=wallet,
            escrow_id=escrow_id,
            job_id=req.job_id,
            slots=req.slots,
            gflop=gflop,
            ceiling=ceiling,
            floor=floor,
            step=step,
            quote_price=quoted.price_micro,
            hold=hold,
            opened_at=now,
            closes_at=now + minutes * 60,
            allow_partial=req.allow_partial,
        )
        await asyncio.to_thread(self.store.insert_auction, _row(a))
        self._auctions[auction_id] = a
        self._reprice()
        self.emit(
            AuctionOpened(
                source=NAME,
                auction_id=auction_id,
                requester=a.requester,
                slots=a.slots,
                gflop=req.gflop,
                max_price_per_gflop=tokens(ceiling),
                reserve_price_per_gflop=tokens(floor),
                bid_increment=tokens(step),
                closes_at=a.closes_at,
            )
        )
        return AuctionId(auction_id)

    def _quote_for(self, req: ResourceRequest, now: float) -> Quoted:
        spec = ResourceSpec(
            gflop=req.gflop, storage_gb=req.storage_gb, network_bound=req.network_bound
        )
        if req.quote_id is not None:
            quoted = self.pricer.honoured(req.quote_id, now)
            if quoted is None:
                raise ValidationFailed("quote_id", "unknown or expired quote; ask for a new one")
            if quoted.quote.spec != spec:
                raise ValidationFailed("quote_id", "the quote priced other work than this request")
            return quoted
        return self.pricer.quote(spec, now)

    def _auction(self, auction_id: str) -> AuctionState:
        a = self._auctions.get(auction_id)
        if a is None:
            raise NotFound("auction", auction_id)
        return a

    async def submit_bid(self, auction_id: str, bid: ResourceBid) -> bool:
        """Place or lower an ask; True when accepted, else ``BidRefused`` names the rule."""
        a = self._auction(auction_id)
        price = price_micro(bid.price_per_gflop, "price_per_gflop")
        now = self.clock.time()
        if a.status is AuctionStatus.OPEN and now >= a.closes_at:
            await self._settle(a, "expired")
        if a.auction_id in self._settling or a.auction_id in self._planned:
            raise BidRefused(auction_id, "auction_settling", "the auction is being settled")
        standing = (await (await self._harvesting()).device_standing([bid.provider])).get(
            bid.provider
        )
        if standing is None:
            raise BidRefused(auction_id, "unknown_device", f"no device {bid.provider!r}")
        # everything from here to placing the ask runs without yielding: no interleaved bid or
        # settlement can see the auction half-updated
        a.check(bid.provider, standing.owner, price, self.clock.time())
        if auction_id in self._settling or auction_id in self._planned:
            raise BidRefused(auction_id, "auction_settling", "the auction is being settled")
        if not standing.eligible:
            raise BidRefused(auction_id, "ineligible", "the device may not take work now")
        a.place(bid.provider, standing.owner, price, now)
        self.emit(
            BidAccepted(
                source=NAME,
                auction_id=auction_id,
                provider=bid.provider,
                price_per_gflop=tokens(price),
                asks=len(a.asks),
            )
        )
        if len(a.asks) > a.slots:
            await self._settle(a, "early")
        return True

    async def settle_auction(self, auction_id: str) -> AuctionResult:
        """Settle now (idempotent): with at least N eligible asks, or whatever the close allows."""
        a = self._auction(auction_id)
        if a.result is not None:
            return a.result
        mode = "expired" if self.clock.time() >= a.closes_at else "requester"
        result = await self._settle(a, mode)
        if result is None:
            raise Conflict(
                f"auction {auction_id} has fewer than {a.slots} eligible asks; wait for its "
                "close or allow a partial fill",
                auction_id=auction_id,
                asks=len(a.asks),
            )
        return result

    async def cancel_auction(self, auction_id: str, requester: str) -> AuctionResult:
        """The requester withdraws an open auction; the hold goes back at once."""
        a = self._auction(auction_id)
        if a.requester != requester:
            raise Forbidden("only the requester may cancel its auction", auction_id=auction_id)
        if a.result is not None:
            if a.status is AuctionStatus.FAILED:
                return a.result
            raise Conflict(f"auction {auction_id} is already {a.status.value}")
        result = await self._settle(a, "cancelled")
        assert result is not None
        return result

    async def expire_due(self) -> int:
        """Settle every open auction whose time is over; the number settled."""
        now = self.clock.time()
        due = [
            a
            for a in self._auctions.values()
            if a.status is AuctionStatus.OPEN and a.closes_at <= now
        ]
        for a in due:
            await self._settle(a, "expired")
        return len(due)

    async def _settle(self, a: AuctionState, mode: str) -> AuctionResult | None:
        if a.result is not None:
            return a.result
        running = self._settling.get(a.auction_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[AuctionResult | None] = asyncio.get_running_loop().create_future()
        self._settling[a.auction_id] = future
        try:
            result = await self._settle_once(a, mode)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so an unawaited future does not warn
            raise
        finally:
            del self._settling[a.auction_id]

    async def _settle_once(self, a: AuctionState, mode: str) -> AuctionResult | None:
        planned = self._planned.get(a.auction_id)
        if planned is not None:
            # an earlier attempt decided and may have moved money: finish that decision
            return await self._finish_settlement(a, planned)
        if mode == "cancelled":
            plan: dict[str, Any] = {"status": "failed", "reason": "cancelled by the requester"}
        else:
            decided = await self._decide(a, mode)
            if decided is None:
                return None
            plan = decided
        # the plan is durable before money moves, so a crash here is finished on the next start
        # and a retry after a failure finishes the same plan, never a new one
        await asyncio.to_thread(self.store.update_auction, a.auction_id, settling=json.dumps(plan))
        self._planned[a.auction_id] = plan
        return await self._finish_settlement(a, plan)

    async def _decide(self, a: AuctionState, mode: str) -> dict[str, Any] | None:
        """The settlement plan from the asks still eligible (one batch call), or None to wait."""
        providers = list(a.column_provider)
        price_all = np.array(a.column_price, dtype=np.int64)
        seq_all = np.array(a.column_seq, dtype=np.int64)
        harvesting = await self._harvesting()
        cols = (
            await harvesting.standing_columns(providers, exclude_owner=a.requester, owners=False)
            if providers
            else None
        )
        ok = cols.eligible if cols is not None else np.zeros(0, dtype=bool)
        count = int(ok.sum())
        if mode in ("early", "requester"):
            enough = count > a.slots if mode == "early" else count >= a.slots
            if not enough and not (mode == "requester" and a.allow_partial and count):
                # drop what can no longer win; keep collecting
                a.withdraw([providers[i] for i in np.flatnonzero(~ok).tolist()])
                return None
        keep = np.flatnonzero(ok)
        price = price_all[keep]
        seq = seq_all[keep]
        trust = (cols.trust if cols is not None else np.zeros(0))[keep]
        idx = keep.tolist()
        c = clear_columns([providers[i] for i in idx], price, trust, seq, a.slots, a.allow_partial)
        return {
            "status": c.status.value,
            "winners": list(c.winners),
            "price": c.price,
            "capture": ceil_micro(a.gflop * c.price) if c.price is not None else 0,
            "reason": c.reason,
        }

    async def _remember_owners(self, a: AuctionState, winners: list[str]) -> None:
        cols = await (await self._harvesting()).standing_columns(winners)
        owners = {w: o for w, o in zip(winners, cols.owner, strict=True) if o}
        self._owners[a.escrow_id] = {**owners, **self._owners.get(a.escrow_id, {})}
        listed = [owners.get(w, "") for w in winners]
        self._write_later(
            functools.partial(self.store.update_auction, a.auction_id, owners=json.dumps(listed))
        )

    async def _finish_settlement(self, a: AuctionState, plan: dict[str, Any]) -> AuctionResult:
        tok = await self._tokenomics()
        capture = int(plan.get("capture", 0))
        status = AuctionStatus(plan["status"])
        reason = str(plan.get("reason", ""))
        if capture > 0:
            try:
                await tok.capture_escrow(a.escrow_id, capture)
            except FogError as exc:
                if exc.fields.get("result") != "pending_transfer_expired":
                    raise
                # the hold expired while the coordinator was away: the money is already back
                status, capture = AuctionStatus.FAILED, 0
                reason = f"the escrow hold could not be captured: {exc.fields.get('result')}"
        else:
            try:
                await tok.release_escrow(a.escrow_id)
            except FogError as exc:
                if exc.fields.get("result") not in (
                    "pending_transfer_expired",
                    "pending_transfer_already_voided",
                ):
                    raise
        price = plan.get("price") if status is not AuctionStatus.FAILED else None
        winners = tuple(plan.get("winners", ())) if status is not AuctionStatus.FAILED else ()
        result = AuctionResult(
            auction_id=a.auction_id,
            status=status.value,
            winners=winners,
            clearing_price_per_gflop=tokens(price) if price is not None else None,
            captured=tokens(capture),
            released=tokens(a.hold - capture),
            reason=reason,
            escrow_id=a.escrow_id,
        )
        settled_at = self.clock.time()
        # winners and owners stay in the stored plan; the result row is written without them,
        # so a 10,000-winner auction is not written twice
        # written behind: until it lands, a restart finds the plan without a result and finishes
        # it again, which the ledger answers "exists"
        self._write_later(
            functools.partial(
                self.store.update_auction,
                a.auction_id,
                status=status.value,
                result=result.model_copy(update={"winners": ()}).model_dump_json(),
                closed=status is AuctionStatus.FAILED,
                settled_at=settled_at,
            )
        )
        self._planned.pop(a.auction_id, None)
        a.status, a.result = status, result
        a.price = price
        self._owners[a.escrow_id] = _owners_of(plan)
        if winners:
            # who owns each winner is looked up off the settlement's path, then kept: it pays
            # a device that has since left the registry
            self.spawn(self._remember_owners(a, list(winners)))
        self.book.auction_closed(settled_at, a.slots, len(winners), price)
        self._reprice()
        if status is AuctionStatus.FAILED:
            self.emit(
                AuctionFailed(
                    source=NAME, auction_id=a.auction_id, reason=reason, released=result.released
                )
            )
        else:
            self.emit(
                AuctionSettled(
                    source=NAME,
                    auction_id=a.auction_id,
                    status=status.value,
                    winners=winners,
                    clearing_price_per_gflop=result.clearing_price_per_gflop,
                    captured=result.captured,
                    released=result.released,
                )
            )
        return result

    # --- ordered store writes --------------------------------------------------------------

    def _write_later(self, fn: Callable[..., Any], *args: Any) -> asyncio.Task[None]:
        """Queue a store write after every earlier one; writes land in the order issued."""
        previous = self._last_write

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await asyncio.to_thread(fn, *args)

        task = asyncio.get_running_loop().create_task(run())
        self._last_write = task
        return task

    async def flush(self) -> None:
        """Wait until every store write issued so far has landed."""
        if self._last_write is not None:
            await asyncio.gather(self._last_write, return_exceptions=True)

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        await self._write_later(functools.partial(fn, *args, **kwargs))

    # --- revenue -------------------------------------------------------------------------------

    async def distribute_revenue(self, completed_job: CompletedJob) -> RevenueDistribution:
        job = completed_job
        a = self._auction(job.auction_id)
        if a.job_id is not None and a.job_id != job.job_id:
            raise ValidationFailed("job_id", f"auction {a.auction_id} belongs to job {a.job_id}")
        if a.status not in (AuctionStatus.SETTLED, AuctionStatus.PARTIAL) or a.price is None:
            raise Conflict(f"auction {a.auction_id} is {a.status.value}; nothing to pay from")
        lock = self._locks.setdefault(a.escrow_id, asyncio.Lock())
        async with lock:
            return await self._distribute(a, job)

    async def _distribute(self, a: AuctionState, job: CompletedJob) -> RevenueDistribution:
        escrow = a.escrow_id
        tok = await self._tokenomics()
        paid = await self._paid_tasks(escrow)
        await self._payout_rows(escrow)
        for batch, legs in list(self._unfinished.get(escrow, {}).items()):
            # an earlier call stopped between its intent and the ledger: finish it first
            await self._drive_batch(escrow, batch, legs)
        fresh: dict[str, CompletedTask] = {}
        already = 0
        for task in job.tasks:
            if task.task_id in paid or task.task_id in fresh:
                already += 1
            else:
                fresh[task.task_id] = task
        if a.closed and fresh:
            raise Conflict(f"job {job.job_id} has ended; no more tasks can be paid")
        out = RevenueDistribution(
            job_id=job.job_id, tasks_already_paid=already, pending=job.hold_payouts
        )
        if fresh:
            out = await self._pay_batch(a, job, list(fresh.values()), tok, out)
        voided = Decimal(0)
        if job.void_devices:
            voided = await self._void(a, set(job.void_devices), tok)
        refunded = out.refunded
        if job.final:
            refunded += await self._close(a, set(job.void_devices), tok)
        elif job.post_pending:
            await self._post_pending(a, tok)
        return out.model_copy(update={"voided": voided, "refunded": refunded})

    async def _pay_batch(
        self,
        a: AuctionState,
        job: CompletedJob,
        tasks: list[CompletedTask],
        tok: TokenomicsProtocol,
        out: RevenueDistribution,
    ) -> RevenueDistribution:
        escrow = a.escrow_id
        assert a.price is not None
        weights = self._vweights.setdefault(escrow, {})
        split = split_batch(tasks, a.price, self.config.revenue_sharing, weights)
        total = split.total
        available = tok.escrow_available(escrow)
        if total > available:
            raise Conflict(
                f"the batch costs {tokens(total)} but the job's escrow holds {tokens(available)}: "
                "more verified work than the auction bought",
                job_id=job.job_id,
            )
        devices = sorted(set(split.providers) | set(split.validators))
        wallets = await self._wallets(a, devices, tok)
        batch = batch_id_of(escrow, list(split.gross))
        pending = job.hold_payouts
        legs: list[Leg] = []
        for role, amounts in (("provider", split.providers), ("validator", split.validators)):
            for device, amount in sorted(amounts.items()):
                if amount > 0:
                    tid = payout_id(escrow, batch, role, device)
                    legs.append((tid, role, device, wallets[device], amount, pending))
        if split.platform:
            tid = payout_id(escrow, batch, "platform", "")
            legs.append((tid, "platform", "", PLATFORM_WALLET, split.platform, False))
        if split.refund:
            tid = payout_id(escrow, batch, "refund", "")
            legs.append((tid, "refund", "", a.wallet, split.refund, False))
        # the intent is durable before money moves: a retry, in this process or after a
        # restart, finishes exactly these legs and claims exactly these tasks
        await self._write(
            self.store.record_batch, batch, escrow, job.job_id, self.clock.time(), legs, split.gross
        )
        self._paid[escrow].update(split.gross)
        rows = self._payouts[escrow]
        for leg in legs:
            rows[leg[0]] = {
                "transfer_id": leg[0],
                "batch_id": batch,
                "role": leg[1],
                "device": leg[2],
                "wallet": leg[3],
                "amount": leg[4],
                "state": "intent",
                "pending": leg[5],
            }
            if leg[1] == "validator":
                weights[leg[2]] = weights.get(leg[2], 0) + leg[4]
        self._unfinished.setdefault(escrow, {})[batch] = legs
        await self._drive_batch(escrow, batch, legs)
        self.emit(
            RevenueDistributed(
                source=NAME,
                job_id=job.job_id,
                batch_id=batch,
                tasks=len(tasks),
                provider=tokens(sum(split.providers.values())),
                validator=tokens(sum(split.validators.values())),
                platform=tokens(split.platform),
                refunded=tokens(split.refund),
                pending=pending,
            )
        )
        return out.model_copy(
            update={
                "providers": {d: tokens(v) for d, v in split.providers.items() if v},
                "validators": {d: tokens(v) for d, v in split.validators.items() if v},
                "platform": tokens(split.platform),
                "refunded": tokens(split.refund),
                "tasks_paid": len(tasks),
            }
        )

    async def _drive_batch(self, escrow: str, batch: str, legs: list[Leg]) -> None:
        """Move the batch's money (idempotent by transfer id) and mark it paid."""
        tok = await self._tokenomics()
        await tok.pay_from_escrow(
            escrow,
            [
                PayoutLeg(
                    transfer_id=tid,
                    to_wallet=wallet,
                    amount_micro=amount,
                    pending=pending,
                    memo=f"{role} share, {batch}",
                )
                for tid, role, _, wallet, amount, pending in legs
            ],
        )
        # "paid" is bookkeeping: the intent and the ledger already make a retry safe, so it is
        # written behind instead of costing the caller another synced commit
        self._write_later(self.store.batch_paid, batch, legs)
        self._unfinished.get(escrow, {}).pop(batch, None)
        rows = self._payouts.get(escrow, {})
        for leg in legs:
            row = rows.get(leg[0])
            if row is not None and row["state"] == "intent":
                row["state"] = "pending" if leg[5] else "paid"
        for _, role, _, _, amount, pending in legs:
            if not pending:
                self.book.paid(role, amount)

    async def _void(self, a: AuctionState, devices: set[str], tok: TokenomicsProtocol) -> Decimal:
        rows = [
            r
            for r in self._payouts.get(a.escrow_id, {}).values()
            if r["state"] == "pending" and r["device"] in devices
        ]
        if not rows:
            return Decimal(0)
        ids = [r["transfer_id"] for r in rows]
        await tok.settle_escrow_payouts(a.escrow_id, [], ids)
        await self._write(self.store.set_payout_state, ids, "voided")
        weights = self._vweights.setdefault(a.escrow_id, {})
        for r in rows:
            r["state"] = "voided"
            if r["role"] == "validator":
                weights[r["device"]] = weights.get(r["device"], 0) - r["amount"]
        return tokens(sum(r["amount"] for r in rows))

    async def _close(self, a: AuctionState, void: set[str], tok: TokenomicsProtocol) -> Decimal:
        """End the job: post what is pending (cheaters' legs voided), refund what is left."""
        if a.closed:
            return Decimal(0)
        await self._void(a, void, tok)
        await self._post_pending(a, tok)
        left = tok.escrow_available(a.escrow_id)
        await tok.close_escrow(a.escrow_id)
        if left > 0:
            await self._write(
                self.store.add_payout,
                {
                    "transfer_id": f"refund:{a.escrow_id}:close",
                    "escrow_id": a.escrow_id,
                    "batch_id": "close",
                    "role": "refund",
                    "device": "",
                    "wallet": a.wallet,
                    "amount": left,
                    "state": "paid",
                },
            )
        self.book.paid("refund", left)
        await self._write(self.store.update_auction, a.auction_id, closed=True)
        a.closed = True
        return tokens(left)

    async def _post_pending(self, a: AuctionState, tok: TokenomicsProtocol) -> None:
        rows = [r for r in self._payouts.get(a.escrow_id, {}).values() if r["state"] == "pending"]
        ids = [r["transfer_id"] for r in rows]
        if ids:
            await tok.settle_escrow_payouts(a.escrow_id, ids, [])
            await self._write(self.store.set_payout_state, ids, "posted")
            for r in rows:
                r["state"] = "posted"
                self.book.paid(r["role"], r["amount"])

    async def _wallets(
        self, a: AuctionState, devices: list[str], tok: TokenomicsProtocol
    ) -> dict[str, str]:
        """Each device's payout wallet: its owner's default wallet, created on first payment."""
        standing = await (await self._harvesting()).device_standing(devices)
        known = self._owners.get(a.escrow_id, {})
        out: dict[str, str] = {}
        for device in devices:
            st = standing.get(device)
            owner = st.owner if st is not None and st.owner else known.get(device)
            if not owner:
                raise ValidationFailed("tasks", f"device {device!r} is unknown: no one to pay")
            if tok.wallet_owner(owner) is None:
                await tok.initialize_wallet(owner)
            out[device] = owner
        return out

    async def _paid_tasks(self, escrow: str) -> dict[str, int]:
        if escrow not in self._paid:
            self._paid[escrow] = await asyncio.to_thread(self.store.paid_tasks, escrow)
        return self._paid[escrow]

    async def _payout_rows(self, escrow: str) -> dict[str, dict[str, Any]]:
        if escrow not in self._payouts:
            rows = await asyncio.to_thread(self.store.payouts, escrow)
            weights = self._vweights.setdefault(escrow, {})
            unfinished: dict[str, list[Leg]] = {}
            for r in rows:
                r["pending"] = r["state"] == "pending"
                if r["role"] == "validator" and r["state"] != "voided":
                    weights[r["device"]] = weights.get(r["device"], 0) + r["amount"]
            for r in rows:
                if r["state"] == "intent":
                    unfinished.setdefault(r["batch_id"], []).append(_leg_of(r))
            if unfinished:
                self._unfinished[escrow] = unfinished
            self._payouts[escrow] = {r["transfer_id"]: r for r in rows}
        return self._payouts[escrow]

    # --- reading -------------------------------------------------------------------------------

    async def get_auction(self, auction_id: str) -> AuctionView:
        a = self._auction(auction_id)
        if a.status is AuctionStatus.OPEN and self.clock.time() >= a.closes_at:
            await self._settle(a, "expired")
        return _view(a)

    def list_auctions(self, status: str | None = None, limit: int = 100) -> list[AuctionView]:
        out = [
            _view(a)
            for a in sorted(self._auctions.values(), key=lambda x: x.opened_at, reverse=True)
            if status is None or a.status.value == status
        ]
        return out[:limit]

    def asks(self, auction_id: str) -> list[Ask]:
        a = self._auction(auction_id)
        return [
            Ask(
                provider=x.provider,
                owner=x.owner,
                price_per_gflop=tokens(x.price),
                submitted_at=x.at,
            )
            for x in sorted(a.asks.values(), key=lambda x: (x.price, x.seq))
        ]

    async def get_market_metrics(self) -> MarketMetrics:
        now = self.clock.time()
        windows = self.book.windows(now)
        supply, demand = self.pricer.supply, self._demand()
        return MarketMetrics(
            volume=tokens(self.book.volume),
            open_auctions=sum(1 for a in self._auctions.values() if a.status is AuctionStatus.OPEN),
            auctions_settled=self.book.settled,
            auctions_failed=self.book.failed,
            last_clearing_price=windows["all"].last,
            mean_clearing_price=windows["all"].mean,
            clearing_prices=windows,
            fill_rate=self.book.fill_rate,
            supply_demand_ratio=supply / demand if demand else float(supply),
            market_factor=self.pricer.factor,
            revenue_by_role={role: tokens(v) for role, v in sorted(self.book.revenue.items())},
        )

    # --- restore -------------------------------------------------------------------------------

    def _restore(self, row: dict[str, Any]) -> None:
        a = AuctionState(
            auction_id=row["auction_id"],
            requester=row["requester"],
            wallet=row["wallet"],
            escrow_id=row["escrow_id"],
            job_id=row["job_id"],
            slots=row["slots"],
            gflop=Decimal(row["gflop"]),
            ceiling=row["ceiling"],
            floor=row["floor"],
            step=row["step"],
            quote_price=row["quote_price"],
            hold=row["hold"],
            opened_at=row["opened_at"],
            closes_at=row["closes_at"],
            allow_partial=row["allow_partial"],
            status=AuctionStatus(row["status"]),
        )
        a.closed = bool(row["closed"])
        plan = json.loads(row["settling"]) if row["settling"] else None
        if row["result"]:
            a.result = AuctionResult.model_validate_json(row["result"])
            if plan is not None and a.result.status != AuctionStatus.FAILED.value:
                a.result = a.result.model_copy(update={"winners": tuple(plan.get("winners", ()))})
            price = a.result.clearing_price_per_gflop
            a.price = int(price * _MICRO) if price is not None else None
            closed_at = row.get("settled_at") or a.closes_at
            self._closed_rows.append((closed_at, a.slots, len(a.result.winners), a.price))
            if plan is not None:
                owners = json.loads(row["owners"]) if row["owners"] else None
                self._owners[a.escrow_id] = (
                    dict(zip(plan.get("winners", []), owners, strict=False))
                    if isinstance(owners, list)
                    else _owners_of(plan)
                )
        elif plan is not None:
            self._planned[a.auction_id] = plan
        self._auctions[a.auction_id] = a
        self._by_escrow[a.escrow_id] = a.auction_id


def _owners_of(plan: dict[str, Any]) -> dict[str, str]:
    """Winner -> owner from a plan (owners are stored as a list aligned with the winners)."""
    owners = plan.get("owners", [])
    if isinstance(owners, dict):
        return {str(k): str(v) for k, v in owners.items()}
    if not owners:  # owners are written with the result; harvesting knows them meanwhile
        return {}
    return dict(zip(plan.get("winners", []), owners, strict=True))


def _legs(raw: str) -> list[Leg]:
    return [(t, r, d, w, int(a), bool(p)) for t, r, d, w, a, p in json.loads(raw)]


def _leg_of(row: dict[str, Any]) -> Leg:
    return (
        row["transfer_id"],
        row["role"],
        row["device"],
        row["wallet"],
        int(row["amount"]),
        bool(row.get("pending", False)),
    )


def _row(a: AuctionState) -> dict[str, Any]:
    return {
        "auction_id": a.auction_id,
        "requester": a.requester,
        "wallet": a.wallet,
        "escrow_id": a.escrow_id,
        "job_id": a.job_id,
        "slots": a.slots,
        "gflop": str(a.gflop),
        "ceiling": a.ceiling,
        "floor": a.floor,
        "step": a.step,
        "quote_price": a.quote_price,
        "hold": a.hold,
        "opened_at": a.opened_at,
        "closes_at": a.closes_at,
        "allow_partial": a.allow_partial,
        "status": a.status.value,
        "closed": False,
    }


def _view(a: AuctionState) -> AuctionView:
    best = min((x.price for x in a.asks.values()), default=None)
    return AuctionView(
        auction_id=a.auction_id,
        requester=a.requester,
        escrow_id=a.escrow_id,
        job_id=a.job_id,
        slots=a.slots,
        gflop=float(a.gflop),
        status=a.status,
        max_price_per_gflop=tokens(a.ceiling),
        reserve_price_per_gflop=tokens(a.floor),
        bid_increment=tokens(a.step),
        quoted_price_per_gflop=tokens(a.quote_price),
        held=tokens(a.hold),
        opened_at=a.opened_at,
        closes_at=a.closes_at,
        allow_partial=a.allow_partial,
        asks=len(a.asks),
        best_ask=tokens(best) if best is not None else None,
        result=a.result,
    )
