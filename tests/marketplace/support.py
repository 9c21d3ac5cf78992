"""Scaffolding of the marketplace tests: the three real services over one SQLite file.

A :class:`Market` holds a started tokenomics, harvesting and marketplace service sharing one
engine, one fake clock and one event collector. The marketplace reaches the other two through
``resolve``, as it does through the orchestrator's discovery. Background loops only act when the
test advances the fake clock; harvesting's scan and flush loops are set never to fire.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from fogcoord.clock import FakeClock
from fogcoord.config import (
    HarvestingConfig,
    MarketplaceConfig,
    TokenomicsConfig,
)
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.marketplace import (
    AuctionId,
    CompletedJob,
    CompletedTask,
    ResourceBid,
    ResourceRequest,
)
from fogcoord.contracts.tokenomics import PLATFORM_WALLET, EscrowChanged
from fogcoord.harvesting.service import FogHarvestingService
from fogcoord.marketplace.auction import BidRefused
from fogcoord.marketplace.service import FogMarketplaceService
from fogcoord.storage.engine import create_engine
from fogcoord.tokenomics.escrow import escrow_account
from fogcoord.tokenomics.model import AccountKind
from fogcoord.tokenomics.service import FogTokenomicsService
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import verify_ledger
from tests.harvesting.support import cap, principal_of

MICRO = 1_000_000
E = TypeVar("E", bound=ServiceEvent)
REQUESTER = "req"
DEFAULT_BALANCE = 1_000.0
"""Tokens every new wallet is granted: enough for any auction these tests open."""
GRANT = int(DEFAULT_BALANCE * MICRO)
RESERVE = 10_000
"""The wallet reserve (``minimum_balance`` 0.01) that ``available`` keeps back."""

QUIET_HARVESTING: dict[str, Any] = {
    "device_discovery": {"scan_interval_seconds": 1e9, "state_flush_seconds": 1e9}
}


def tokenomics_config(default_balance: float = DEFAULT_BALANCE) -> TokenomicsConfig:
    return TokenomicsConfig.model_validate(
        {"wallet_management": {"default_balance": default_balance}}
    )


def harvesting_config() -> HarvestingConfig:
    return HarvestingConfig.model_validate(QUIET_HARVESTING)


def market_config(
    *,
    factor: tuple[float, float] | None = (1.0, 1.0),
    **blocks: dict[str, Any],
) -> MarketplaceConfig:
    """A marketplace configuration; ``factor`` pins (min, max) of the market factor.

    By default the factor is pinned to 1 so prices do not move as auctions open: the quoted price
    is then the base rate, 1000 micro-tokens per GFLOP, with a 10 micro-token step and a reserve
    of 700. Pass ``factor=None`` to keep the configured bounds.
    """
    data: dict[str, Any] = {k: dict(v) for k, v in blocks.items()}
    if factor is not None:
        pricing = data.setdefault("pricing", {})
        pricing.setdefault("min_market_factor", factor[0])
        pricing.setdefault("max_market_factor", factor[1])
    return MarketplaceConfig.model_validate(data)


@dataclass
class Collector:
    """The ``publish`` callable of all three services: keeps every event."""

    events: list[ServiceEvent] = field(default_factory=list)

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def escrow_steps(self, escrow_id: str, step: str) -> list[EscrowChanged]:
        return [e for e in self.of(EscrowChanged) if e.job_id == escrow_id and e.step == step]


@dataclass
class Market:
    tok: FogTokenomicsService
    harv: FogHarvestingService
    mkt: FogMarketplaceService
    clock: FakeClock
    events: Collector
    engine: Engine
    services: dict[str, Any]
    devices: list[str] = field(default_factory=list)

    # --- devices and wallets ---------------------------------------------------------------

    async def device(
        self,
        device_id: str,
        owner: str,
        *,
        battery: float = 90.0,
        charging: bool = True,
        wallet: bool = True,
    ) -> str:
        """Register and heartbeat a device (eligible by default); create its owner's wallet."""
        await self.harv.register_device(
            cap(device_id, owner, battery_percent=battery, charging=charging),
            principal_id=principal_of(device_id),
        )
        await self.harv.heartbeat(
            device_id, battery_percent=battery, charging=charging, thermal_celsius=30.0
        )
        if wallet and self.tok.wallet_owner(owner) is None:
            await self.tok.initialize_wallet(owner)
        self.devices.append(device_id)
        return device_id

    async def devices_n(self, n: int, prefix: str = "d") -> list[str]:
        """``n`` eligible devices ``d00``, ``d01``, ... owned by ``o-d00``, ``o-d01``, ..."""
        out = [await self.device(f"{prefix}{i:02d}", f"o-{prefix}{i:02d}") for i in range(n)]
        await self.mkt.refresh_market()
        return out

    async def wallet(self, owner: str = REQUESTER) -> str:
        if self.tok.wallet_owner(owner) is None:
            await self.tok.initialize_wallet(owner)
        return owner

    def owner_of(self, device_id: str) -> str:
        st = self.harv.registry.meta[self.harv.registry.rows[device_id]]
        assert st is not None
        return st.owner

    # --- money -----------------------------------------------------------------------------

    def balance(self, account: str) -> int:
        acc = self.tok.ledger.account(account)
        return 0 if acc is None else acc.balance

    def pending_in(self, account: str) -> int:
        acc = self.tok.ledger.account(account)
        return 0 if acc is None else acc.credits_pending

    def pending_out(self, account: str) -> int:
        acc = self.tok.ledger.account(account)
        return 0 if acc is None else acc.debits_pending

    def escrow_balance(self, escrow_id: str) -> int:
        return self.balance(escrow_account(escrow_id))

    def escrow_accounts(self) -> list[str]:
        return sorted(
            a.id for a in self.tok.ledger.state.accounts.values() if a.kind is AccountKind.ESCROW
        )

    def wallet_total(self, wallets: list[str]) -> int:
        return sum(self.balance(w) for w in wallets) + self.balance(PLATFORM_WALLET)

    def verify(self) -> None:
        report = verify_ledger(SqlLedgerStore(self.engine))
        assert report.ok, report.problems

    # --- auctions --------------------------------------------------------------------------

    async def auction(
        self,
        *,
        slots: int = 2,
        gflop: float = 100.0,
        ceiling: str = "0.002",
        requester: str = REQUESTER,
        **over: Any,
    ) -> AuctionId:
        await self.wallet(requester)
        req = ResourceRequest(
            requester=requester,
            slots=slots,
            gflop=gflop,
            max_price_per_gflop=Decimal(ceiling),
            **over,
        )
        return await self.mkt.create_auction(req)

    async def bid(self, auction_id: str, device_id: str, micro: int) -> bool:
        return await self.mkt.submit_bid(
            auction_id, ResourceBid(provider=device_id, price_per_gflop=Decimal(micro) / MICRO)
        )

    async def refused(self, auction_id: str, device_id: str, micro: int) -> str:
        """The rule a bid is refused by; fails the test when it is accepted."""
        try:
            await self.bid(auction_id, device_id, micro)
        except BidRefused as exc:
            return exc.rule
        raise AssertionError(f"ask {micro} of {device_id} was accepted")

    async def pay(
        self,
        auction_id: str,
        job_id: str,
        tasks: list[CompletedTask],
        **over: Any,
    ) -> Any:
        return await self.mkt.distribute_revenue(
            CompletedJob(job_id=job_id, auction_id=auction_id, tasks=tuple(tasks), **over)
        )


def task(
    task_id: str,
    provider: str,
    gflop: float = 10.0,
    validators: tuple[str, ...] = (),
    fuel: int | None = None,
) -> CompletedTask:
    return CompletedTask(
        task_id=task_id, provider=provider, gflop=gflop, validators=validators, fuel=fuel
    )


def micro(value: Decimal | None) -> int:
    """Tokens (as the contracts give them) to whole micro-tokens, exactly."""
    assert value is not None
    m = value * MICRO
    assert m == m.to_integral_value(), value
    return int(m)


@asynccontextmanager
async def market(
    db: Path,
    *,
    clock: FakeClock | None = None,
    events: Collector | None = None,
    config: MarketplaceConfig | None = None,
    tokenomics: TokenomicsConfig | None = None,
    yield_in_resolve: bool = False,
    seed: int = 0,
) -> AsyncIterator[Market]:
    """Tokenomics, harvesting and marketplace started over ``db``; stopped in reverse order.

    ``yield_in_resolve`` makes every lookup of a service give the event loop a turn (at random),
    so calls running concurrently interleave at the marketplace's awaits.
    """
    engine = create_engine(f"sqlite:///{db}", synchronous="OFF")
    fake = clock if clock is not None else FakeClock()
    collector = events if events is not None else Collector()
    tok = FogTokenomicsService(
        tokenomics if tokenomics is not None else tokenomics_config(),
        lambda: engine,
        clock=fake,
        publish=collector,
    )
    harv = FogHarvestingService(harvesting_config(), lambda: engine, clock=fake, publish=collector)
    services: dict[str, Any] = {"tokenomics": tok, "harvesting": harv}
    rng = random.Random(seed)

    async def resolve(name: str) -> Any:
        if yield_in_resolve:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        return services.get(name)

    mkt = FogMarketplaceService(
        config if config is not None else market_config(),
        lambda: engine,
        resolve=resolve,
        clock=fake,
        publish=collector,
    )
    started: list[Any] = []
    try:
        for svc in (tok, harv, mkt):
            await svc.start()
            started.append(svc)
        services["marketplace"] = mkt
        await drain()  # background loops park on the fake clock before the test moves it
        yield Market(tok, harv, mkt, fake, collector, engine, services)
        await drain()
    finally:
        for svc in reversed(started):
            await svc.stop()
        engine.dispose()


async def drain(rounds: int = 5) -> None:
    """Let the tasks the services spawned (event publication) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = ""
) -> None:
    """Poll ``check`` (real time: worker threads and the ledger writer must run) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.005)
