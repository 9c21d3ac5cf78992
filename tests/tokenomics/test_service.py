"""FogTokenomicsService over a real SQLite ledger: wallets, payments, fees, rewards, history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.config import (
    TokenomicsConfig,
    TransactionProcessingConfig,
    WalletManagementConfig,
)
from fogcoord.contracts.errors import Conflict, NotFound, ValidationFailed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.tokenomics import (
    BlockCommitted,
    LowBalance,
    RewardsDistributed,
    Transaction,
    TransactionStatus,
    WalletCreated,
)
from fogcoord.storage.engine import create_engine
from fogcoord.tokenomics.service import FogTokenomicsService, gas_fee_micro
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import verify_ledger

E = TypeVar("E", bound=ServiceEvent)
FEE = 420
"""20 gwei x 21,000 gas = 420,000 gwei = 0.00042 token = 420 micro-tokens."""
TEN = 10_000_000
RESERVE = 10_000


def tok_config(
    *,
    gas: float = 20,
    default: float = 10,
    minimum: float = 0.01,
    topup: float = 1.0,
    confirmations: int = 3,
) -> TokenomicsConfig:
    return TokenomicsConfig(
        transaction_processing=TransactionProcessingConfig(
            gas_price_gwei=gas, confirmation_blocks=confirmations
        ),
        wallet_management=WalletManagementConfig(
            default_balance=default, minimum_balance=minimum, auto_topup_threshold=topup
        ),
    )


class Events:
    def __init__(self) -> None:
        self.seen: list[ServiceEvent] = []

    async def __call__(self, event: ServiceEvent) -> None:
        self.seen.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.seen if isinstance(e, kind)]


@dataclass
class Harness:
    engine: Engine
    events: Events = field(default_factory=Events)
    services: list[FogTokenomicsService] = field(default_factory=list)

    async def start(
        self, config: TokenomicsConfig | None = None, clock: Clock | None = None
    ) -> FogTokenomicsService:
        svc = FogTokenomicsService(
            config or tok_config(), lambda: self.engine, clock=clock, publish=self.events
        )
        self.services.append(svc)
        await svc.start()
        return svc


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    engine = create_engine(f"sqlite:///{tmp_path / 'l.db'}")
    h = Harness(engine)
    try:
        yield h
    finally:
        for svc in h.services:
            await svc.stop()
        engine.dispose()


@pytest.fixture
async def svc(harness: Harness) -> FogTokenomicsService:
    return await harness.start()


async def settle() -> None:
    """Let the publish tasks the service spawned run."""
    for _ in range(5):
        await asyncio.sleep(0)


def bal(svc: FogTokenomicsService, wallet: str) -> int:
    account = svc.ledger.account(wallet)
    assert account is not None, wallet
    return account.balance


def totals(svc: FogTokenomicsService) -> dict[str, tuple[int, int, int, int]]:
    return {
        a.id: (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        for a in svc.ledger.state.accounts.values()
    }


def pay(tid: str, src: str, dst: str, amount: str, memo: str = "") -> Transaction:
    return Transaction(
        transaction_id=tid, from_wallet=src, to_wallet=dst, amount=Decimal(amount), memo=memo
    )


async def wallets(svc: FogTokenomicsService, *ids: str) -> None:
    for wallet_id in ids:
        await svc.initialize_wallet(wallet_id)


# --- wallets -----------------------------------------------------------------------------------


async def test_initialize_wallet_grants_default_balance_once(
    svc: FogTokenomicsService, harness: Harness
) -> None:
    first = await svc.initialize_wallet("alice")
    second = await svc.initialize_wallet("alice")
    assert first == second
    assert (first.wallet_id, first.owner, first.balance) == ("alice", "alice", Decimal(10))
    assert bal(svc, "alice") == TEN
    assert bal(svc, "mint") == -TEN
    history = await svc.get_transaction_history("alice")
    assert [t.transaction_id for t in history] == ["grant:alice"]
    await settle()
    created = harness.events.of(WalletCreated)
    assert [(e.wallet_id, e.owner, e.granted) for e in created] == [("alice", "alice", Decimal(10))]


async def test_owner_defaults_and_named_owner(svc: FogTokenomicsService) -> None:
    info = await svc.initialize_wallet("alice-savings", owner="alice")
    assert info.owner == "alice"
    assert svc.wallet_owner("alice-savings") == "alice"
    assert svc.wallets_of("alice") == ["alice-savings"]
    assert svc.wallet_owner("nobody") is None


async def test_restart_keeps_the_grant_and_the_ids(harness: Harness) -> None:
    svc = await harness.start()
    await wallets(svc, "alice", "bob")
    first = await svc.process_payment(pay("p1", "alice", "bob", "1"))
    assert first.status is TransactionStatus.COMMITTED
    before = totals(svc)
    head = svc.ledger.head
    await svc.stop()

    again = await harness.start()
    assert totals(again) == before
    assert again.ledger.head == head
    info = await again.initialize_wallet("alice")
    assert info.balance == Decimal("8.99958")
    replay = await again.process_payment(pay("p1", "alice", "bob", "1"))
    assert (replay.status, replay.block) == (TransactionStatus.EXISTS, first.block)
    assert totals(again) == before


async def test_wallet_id_of_another_owner_is_a_conflict(svc: FogTokenomicsService) -> None:
    await svc.initialize_wallet("shared", owner="alice")
    with pytest.raises(Conflict):
        await svc.initialize_wallet("shared", owner="bob")
    assert svc.wallet_owner("shared") == "alice"
    assert bal(svc, "shared") == TEN


@pytest.mark.parametrize(
    "wallet_id",
    ["", "has space", "x" * 65, "mint", "platform", "escrow:job", "semi;colon", "ünï", "a/b"],
)
async def test_bad_wallet_ids_are_refused(svc: FogTokenomicsService, wallet_id: str) -> None:
    before = totals(svc)
    with pytest.raises(ValidationFailed) as refused:
        await svc.initialize_wallet(wallet_id)
    assert refused.value.fields["field"] == "wallet_id"
    assert totals(svc) == before


async def test_longest_wallet_id_is_accepted(svc: FogTokenomicsService) -> None:
    wallet_id = "a." + "x" * 60 + "@-"
    assert len(wallet_id) == 64
    assert (await svc.initialize_wallet(wallet_id)).balance == Decimal(10)


# --- payments ----------------------------------------------------------------------------------


def test_gas_fee_is_gas_price_times_21000_gas() -> None:
    assert gas_fee_micro(20) == FEE
    assert gas_fee_micro(0) == 0
    assert gas_fee_micro(1) == 21
    assert gas_fee_micro(1.5) == 31  # 31.5 micro-tokens, rounded down
    assert gas_fee_micro(0.01) == 0


async def test_payment_moves_the_amount_and_the_fee_exactly(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice", "bob")
    result = await svc.process_payment(pay("p1", "alice", "bob", "1.5", memo="coffee"))
    assert result.transaction_id == "p1"
    assert result.status is TransactionStatus.COMMITTED
    assert result.code == "ok"
    assert result.block == svc.ledger.head[0]
    assert result.confirmations == 0
    assert bal(svc, "alice") == TEN - 1_500_000 - FEE
    assert bal(svc, "bob") == TEN + 1_500_000
    assert bal(svc, "platform") == FEE
    main = await svc.ledger.lookup("p1")
    fee = await svc.ledger.lookup("fee:p1")
    assert main is not None
    assert fee is not None
    assert (main.debit_account, main.credit_account, main.amount, main.memo) == (
        "alice",
        "bob",
        1_500_000,
        "coffee",
    )
    assert (fee.debit_account, fee.credit_account, fee.amount) == ("alice", "platform", FEE)
    assert main.block == fee.block == result.block


async def test_smallest_payment_is_one_micro_token(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice", "bob")
    result = await svc.process_payment(pay("p1", "alice", "bob", "0.000001"))
    assert result.status is TransactionStatus.COMMITTED
    assert bal(svc, "alice") == TEN - 1 - FEE
    assert bal(svc, "bob") == TEN + 1


async def test_replay_with_same_id_is_exists_and_moves_nothing(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice", "bob")
    first = await svc.process_payment(pay("p1", "alice", "bob", "2"))
    after_first = totals(svc)
    for _ in range(3):
        again = await svc.process_payment(pay("p1", "alice", "bob", "2"))
        assert again.transaction_id == "p1"
        assert again.status is TransactionStatus.EXISTS
        assert again.code == "exists"
        assert again.block == first.block
    assert totals(svc) == after_first


async def test_replay_with_another_amount_fails(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice", "bob")
    await svc.process_payment(pay("p1", "alice", "bob", "2"))
    after_first = totals(svc)
    changed = await svc.process_payment(pay("p1", "alice", "bob", "3"))
    assert changed.transaction_id == "p1"
    assert changed.status is TransactionStatus.FAILED
    assert changed.code == "exists_with_different_amount"
    assert changed.block is None
    other_target = await svc.process_payment(pay("p1", "alice", "platform", "2"))
    assert other_target.status is TransactionStatus.FAILED
    assert totals(svc) == after_first


@pytest.mark.parametrize(
    "amount",
    [
        "20",  # the payment itself exceeds the balance
        "9.99",  # the payment fits exactly above the reserve, its fee does not
        "9.989581",  # one micro-token too many with the fee
    ],
)
async def test_insufficient_funds_fail_and_nothing_moves(
    svc: FogTokenomicsService, amount: str
) -> None:
    await wallets(svc, "alice", "bob")
    before = totals(svc)
    result = await svc.process_payment(pay("p1", "alice", "bob", amount))
    assert result.transaction_id == "p1"
    assert result.status is TransactionStatus.FAILED
    assert result.code == "exceeds_credits"
    assert totals(svc) == before
    assert await svc.ledger.lookup("p1") is None
    assert await svc.ledger.lookup("fee:p1") is None


async def test_minimum_balance_is_kept_as_each_wallets_reserve(
    svc: FogTokenomicsService,
) -> None:
    await wallets(svc, "alice", "bob")
    assert svc.ledger.available("alice") == TEN - RESERVE
    # leaves exactly minimum_balance (0.01) after the fee: allowed
    exact = await svc.process_payment(pay("p1", "alice", "bob", "9.98958"))
    assert exact.status is TransactionStatus.COMMITTED
    assert bal(svc, "alice") == RESERVE
    assert svc.ledger.available("alice") == 0
    more = await svc.process_payment(pay("p2", "alice", "bob", "0.000001"))
    assert (more.status, more.code) == (TransactionStatus.FAILED, "exceeds_credits")
    assert bal(svc, "alice") == RESERVE


@pytest.mark.parametrize(
    ("amount", "valid_model"),
    [
        ("0.0000001", True),
        ("1.0000001", True),
        ("1E+30", True),
        ("1.0000000000000000000000000000001", True),  # beyond 28 significant digits
        ("9223372036854.775808", True),  # one micro-token above the ledger's 64-bit limit
        ("0", False),
        ("-1", False),
        ("-0.000001", False),
    ],
)
async def test_malformed_amounts_are_refused_and_nothing_changes(
    svc: FogTokenomicsService, amount: str, valid_model: bool
) -> None:
    await wallets(svc, "alice", "bob")
    before = totals(svc)
    head = svc.ledger.head
    if valid_model:
        tx = pay("p1", "alice", "bob", amount)
    else:
        with pytest.raises(ValidationError):
            pay("p1", "alice", "bob", amount)
        # a Transaction that skipped validation must not reach the ledger either
        tx = Transaction.model_construct(
            transaction_id="p1", from_wallet="alice", to_wallet="bob", amount=Decimal(amount)
        )
    with pytest.raises(ValidationFailed) as refused:
        await svc.process_payment(tx)
    assert refused.value.fields["field"] == "amount"
    assert totals(svc) == before
    assert svc.ledger.head == head
    # the id was not burnt: a corrected payment with it goes through
    ok = await svc.process_payment(pay("p1", "alice", "bob", "1"))
    assert ok.status is TransactionStatus.COMMITTED


async def test_unknown_wallets_are_not_found(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice")
    await svc.hold_escrow("job-1", "alice", 1_000)
    before = totals(svc)
    for src, dst in [
        ("ghost", "alice"),
        ("alice", "ghost"),
        ("alice", "mint"),
        ("alice", "escrow:job-1"),
        ("mint", "alice"),
        ("platform", "alice"),
        ("escrow:job-1", "alice"),
    ]:
        with pytest.raises(NotFound):
            await svc.process_payment(pay(f"p-{src}-{dst}".replace(":", "-"), src, dst, "1"))
    assert totals(svc) == before


async def test_paying_the_platform_itself_carries_no_fee(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice")
    result = await svc.process_payment(pay("p1", "alice", "platform", "1"))
    assert result.status is TransactionStatus.COMMITTED
    assert bal(svc, "alice") == TEN - 1_000_000
    assert bal(svc, "platform") == 1_000_000
    assert await svc.ledger.lookup("fee:p1") is None


async def test_zero_gas_price_means_no_fee_leg(harness: Harness) -> None:
    svc = await harness.start(tok_config(gas=0))
    await wallets(svc, "alice", "bob")
    result = await svc.process_payment(pay("p1", "alice", "bob", "9.99"))
    assert result.status is TransactionStatus.COMMITTED
    assert bal(svc, "alice") == RESERVE
    assert bal(svc, "bob") == TEN + 9_990_000
    assert bal(svc, "platform") == 0
    assert await svc.ledger.lookup("fee:p1") is None
    assert [t.transaction_id for t in await svc.get_transaction_history("alice")] == [
        "p1",
        "grant:alice",
    ]


async def test_confirmed_after_confirmation_blocks_later_blocks(
    svc: FogTokenomicsService,
) -> None:
    await wallets(svc, "alice", "bob")
    result = await svc.process_payment(pay("p1", "alice", "bob", "1"))
    assert result.block is not None
    block = result.block
    assert svc.confirmation("p1", block).status is TransactionStatus.COMMITTED
    n = 0
    while svc.ledger.head[0] < block + 2:
        await svc.process_payment(pay(f"later-{n}", "bob", "alice", "0.1"))
        n += 1
    pending = svc.confirmation("p1", block)
    assert (pending.status, pending.confirmations) == (TransactionStatus.COMMITTED, 2)
    await svc.process_payment(pay(f"later-{n}", "bob", "alice", "0.1"))
    assert svc.ledger.head[0] == block + 3
    done = svc.confirmation("p1", block)
    assert done.status is TransactionStatus.CONFIRMED
    assert (done.transaction_id, done.block, done.confirmations) == ("p1", block, 3)
    # a replay reports exists with the confirmations reached so far
    replay = await svc.process_payment(pay("p1", "alice", "bob", "1"))
    assert (replay.status, replay.confirmations) == (TransactionStatus.EXISTS, 3)


async def test_zero_confirmation_blocks_confirm_at_once(harness: Harness) -> None:
    svc = await harness.start(tok_config(confirmations=0))
    await wallets(svc, "alice", "bob")
    result = await svc.process_payment(pay("p1", "alice", "bob", "1"))
    assert result.status is TransactionStatus.CONFIRMED


async def test_verify_balance_at_the_boundary(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice")
    # 10 tokens less the 0.01 reserve can be spent
    assert await svc.verify_balance("alice", 9.99)
    assert await svc.verify_balance("alice", 0.000001)
    assert not await svc.verify_balance("alice", 9.990001)
    assert not await svc.verify_balance("alice", 10)
    assert not await svc.verify_balance("ghost", 0.000001)
    await svc.hold_escrow("job-1", "alice", 4_000_000)
    assert await svc.verify_balance("alice", 5.99)
    assert not await svc.verify_balance("alice", 5.990001)
    with pytest.raises(ValidationFailed):
        await svc.verify_balance("alice", 0.0000001)


# --- history -----------------------------------------------------------------------------------


async def test_history_newest_first_with_paging(harness: Harness) -> None:
    svc = await harness.start(tok_config(gas=0))
    await wallets(svc, "alice", "bob")
    for i in range(5):
        await svc.process_payment(pay(f"p{i}", "alice", "bob", f"0.{i + 1}"))
    await svc.process_payment(pay("in-1", "bob", "alice", "0.5"))
    everything = await svc.get_transaction_history("alice")
    assert [t.transaction_id for t in everything] == [
        "in-1",
        "p4",
        "p3",
        "p2",
        "p1",
        "p0",
        "grant:alice",
    ]
    assert everything[0].from_wallet == "bob"
    assert everything[0].amount == Decimal("0.5")
    assert everything[1].amount == Decimal("0.5")
    assert [t.kind for t in everything] == ["transfer"] * 7
    assert all(t.block is not None for t in everything)
    blocks = [t.block or 0 for t in everything]
    assert blocks == sorted(blocks, reverse=True)

    pages: list[list[str]] = []
    before: str | None = None
    while True:
        page = await svc.get_transaction_history("alice", limit=3, before=before)
        if not page:
            break
        pages.append([t.transaction_id for t in page])
        before = page[-1].transaction_id
    assert pages == [["in-1", "p4", "p3"], ["p2", "p1", "p0"], ["grant:alice"]]
    bob = await svc.get_transaction_history("bob", limit=2)
    assert [t.transaction_id for t in bob] == ["in-1", "p4"]


async def test_history_includes_fee_legs(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice", "bob")
    await svc.process_payment(pay("p1", "alice", "bob", "1"))
    history = await svc.get_transaction_history("alice")
    assert [(t.transaction_id, t.to_wallet) for t in history] == [
        ("fee:p1", "platform"),
        ("p1", "bob"),
        ("grant:alice", "alice"),
    ]


async def test_history_limit_bounds_and_cursor(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice")
    assert len(await svc.get_transaction_history("alice", limit=1)) == 1
    assert len(await svc.get_transaction_history("alice", limit=1000)) == 1
    for limit in (0, -1, 1001):
        with pytest.raises(ValidationFailed) as bad:
            await svc.get_transaction_history("alice", limit=limit)
        assert bad.value.fields["field"] == "limit"
    with pytest.raises(ValidationFailed) as cursor:
        await svc.get_transaction_history("alice", before="no-such-transfer")
    assert cursor.value.fields["field"] == "before"
    with pytest.raises(NotFound):
        await svc.get_transaction_history("ghost")


# --- auto top-up and low balance ---------------------------------------------------------------


async def test_auto_topup_from_a_funding_wallet_of_the_same_owner(
    svc: FogTokenomicsService, harness: Harness
) -> None:
    await svc.initialize_wallet("carol-main", owner="carol")
    info = await svc.initialize_wallet("carol-spend", owner="carol", funding_wallet="carol-main")
    assert info.funding_wallet == "carol-main"
    await wallets(svc, "bob")
    result = await svc.process_payment(pay("p1", "carol-spend", "bob", "9.5"))
    assert result.status is TransactionStatus.COMMITTED
    # 10 - 9.5 - fee = 0.49958 fell below the 1.0 threshold: topped up to 10 again
    assert bal(svc, "carol-spend") == TEN
    assert bal(svc, "carol-main") == TEN - (9_500_000 + FEE)
    topup = await svc.ledger.lookup("topup:carol-spend:p1")
    assert topup is not None
    assert (topup.debit_account, topup.credit_account, topup.amount) == (
        "carol-main",
        "carol-spend",
        9_500_000 + FEE,
    )
    # above the threshold: no top-up
    await svc.process_payment(pay("p2", "carol-spend", "bob", "1"))
    assert bal(svc, "carol-spend") == TEN - 1_000_000 - FEE
    await settle()
    assert harness.events.of(LowBalance) == []


async def test_topup_works_for_the_longest_ids(svc: FogTokenomicsService) -> None:
    long_wallet = "w" * 64
    long_tx = "t" * 64
    await svc.initialize_wallet("f" * 64, owner="dora")
    await svc.initialize_wallet(long_wallet, owner="dora", funding_wallet="f" * 64)
    await wallets(svc, "bob")
    result = await svc.process_payment(pay(long_tx, long_wallet, "bob", "9.5"))
    assert result.status is TransactionStatus.COMMITTED
    assert bal(svc, long_wallet) == TEN
    assert bal(svc, "f" * 64) == TEN - 9_500_000 - FEE


async def test_funding_wallet_rules(svc: FogTokenomicsService) -> None:
    await svc.initialize_wallet("carol-main", owner="carol")
    with pytest.raises(ValidationFailed) as other_owner:
        await svc.initialize_wallet("dave-spend", owner="dave", funding_wallet="carol-main")
    assert other_owner.value.fields["field"] == "funding_wallet"
    with pytest.raises(NotFound):
        await svc.initialize_wallet("carol-x", owner="carol", funding_wallet="ghost")
    with pytest.raises(NotFound):
        await svc.initialize_wallet("carol-y", owner="system", funding_wallet="mint")
    with pytest.raises(ValidationFailed) as itself:
        await svc.initialize_wallet("carol-main", owner="carol", funding_wallet="carol-main")
    assert itself.value.fields["field"] == "funding_wallet"
    for refused in ("dave-spend", "carol-x", "carol-y"):
        assert svc.wallet_owner(refused) is None
    # settings are part of the wallet: the same id with another funding wallet is a conflict
    await svc.initialize_wallet("carol-2", owner="carol")
    with pytest.raises(Conflict):
        await svc.initialize_wallet("carol-2", owner="carol", funding_wallet="carol-main")


async def test_low_balance_event_without_funding(
    svc: FogTokenomicsService, harness: Harness
) -> None:
    await wallets(svc, "alice", "bob")
    await svc.process_payment(pay("p1", "alice", "bob", "9.5"))
    await settle()
    (low,) = harness.events.of(LowBalance)
    assert (low.wallet_id, low.owner, low.reason) == ("alice", "alice", "no funding wallet")
    assert low.balance == Decimal("0.49958")
    assert low.threshold == Decimal(1)
    assert bal(svc, "alice") == TEN - 9_500_000 - FEE


async def test_low_balance_event_when_funding_cannot_cover(
    svc: FogTokenomicsService, harness: Harness
) -> None:
    await svc.initialize_wallet("erin-main", owner="erin")
    await svc.initialize_wallet("erin-spend", owner="erin", funding_wallet="erin-main")
    await wallets(svc, "bob")
    # drain the funding wallet first (its own payment, no funding of its own)
    await svc.process_payment(pay("drain", "erin-main", "bob", "9"))
    await svc.process_payment(pay("p1", "erin-spend", "bob", "9.5"))
    await settle()
    reasons = {e.wallet_id: e.reason for e in harness.events.of(LowBalance)}
    assert reasons == {
        "erin-main": "no funding wallet",
        "erin-spend": "funding wallet cannot cover it",
    }
    assert bal(svc, "erin-spend") == TEN - 9_500_000 - FEE
    assert bal(svc, "erin-main") == TEN - 9_000_000 - FEE


# --- events ------------------------------------------------------------------------------------


async def test_wallet_and_block_events_are_published(
    svc: FogTokenomicsService, harness: Harness
) -> None:
    await wallets(svc, "alice", "bob")
    result = await svc.process_payment(pay("p1", "alice", "bob", "1.5"))
    await settle()
    assert [e.wallet_id for e in harness.events.of(WalletCreated)] == ["alice", "bob"]
    blocks = {e.number: e for e in harness.events.of(BlockCommitted)}
    assert result.block is not None
    payment_block = blocks[result.block]
    assert payment_block.transfers == 2
    assert payment_block.volume == Decimal("1.50042")
    assert payment_block.hash == svc.ledger.head[1]
    assert all(e.source == "tokenomics" for e in harness.events.seen)
    # every committed block is announced exactly once, in order
    numbers = [e.number for e in harness.events.of(BlockCommitted)]
    assert numbers == sorted(set(numbers))
    assert numbers[-1] == svc.ledger.head[0]


# --- rewards -----------------------------------------------------------------------------------


async def test_distribute_rewards_mints_to_every_wallet(
    svc: FogTokenomicsService, harness: Harness
) -> None:
    await wallets(svc, "alice", "bob")
    assert await svc.distribute_rewards({"alice": 1.5, "bob": 0.000001}, batch_id="b1")
    assert bal(svc, "alice") == TEN + 1_500_000
    assert bal(svc, "bob") == TEN + 1
    assert bal(svc, "mint") == -2 * TEN - 1_500_001
    first = await svc.ledger.lookup("reward:b1:alice")
    second = await svc.ledger.lookup("reward:b1:bob")
    assert first is not None
    assert second is not None
    assert first.block == second.block
    await settle()
    (event,) = harness.events.of(RewardsDistributed)
    assert (event.batch_id, event.total, event.wallets) == ("b1", Decimal("1.500001"), 2)


async def test_same_batch_pays_once(svc: FogTokenomicsService, harness: Harness) -> None:
    await wallets(svc, "alice", "bob")
    rewards = {"alice": 0.25, "bob": 0.75}
    assert await svc.distribute_rewards(rewards, batch_id="b1")
    paid = totals(svc)
    assert await svc.distribute_rewards(rewards, batch_id="b1")
    assert totals(svc) == paid
    await settle()
    assert len(harness.events.of(RewardsDistributed)) == 1


async def test_unknown_wallet_fails_rewards_before_anything_moves(
    svc: FogTokenomicsService,
) -> None:
    await wallets(svc, "alice", "zed")
    await svc.hold_escrow("job-1", "alice", 1_000)
    before = totals(svc)
    head = svc.ledger.head
    for target in ("ghost", "escrow:job-1", "mint"):
        with pytest.raises(NotFound):
            await svc.distribute_rewards({"alice": 1.0, target: 1.0, "zed": 1.0}, batch_id="b1")
    assert totals(svc) == before
    assert svc.ledger.head == head


@pytest.mark.parametrize("amount", [-1.0, 0.0000001, 1e13, 1e30])
async def test_bad_reward_amounts_move_nothing(svc: FogTokenomicsService, amount: float) -> None:
    await wallets(svc, "alice", "bob")
    before = totals(svc)
    with pytest.raises(ValidationFailed) as bad:
        await svc.distribute_rewards({"alice": 1.0, "bob": amount}, batch_id="b1")
    assert bad.value.fields["field"] == "rewards.bob"
    assert totals(svc) == before


async def test_rewards_are_all_or_nothing_in_the_ledger(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice", "bob")
    assert await svc.distribute_rewards({"bob": 1.0}, batch_id="b1")
    before = totals(svc)
    # bob's leg of b1 exists with another amount: the whole chain fails, alice gets nothing
    assert not await svc.distribute_rewards({"alice": 1.0, "bob": 2.0}, batch_id="b1")
    assert totals(svc) == before
    assert await svc.ledger.lookup("reward:b1:alice") is None


async def test_zero_rewards_are_skipped(svc: FogTokenomicsService) -> None:
    await wallets(svc, "alice")
    before = totals(svc)
    assert await svc.distribute_rewards({})
    assert await svc.distribute_rewards({"alice": 0.0}, batch_id="b0")
    assert totals(svc) == before


async def test_rewards_for_the_longest_ids(svc: FogTokenomicsService) -> None:
    long_wallet = "r" * 64
    await svc.initialize_wallet(long_wallet)
    assert await svc.distribute_rewards({long_wallet: 1.0})  # a random 32-character batch id
    assert await svc.distribute_rewards({long_wallet: 1.0}, batch_id="b" * 200)
    assert await svc.distribute_rewards({long_wallet: 1.0}, batch_id="b" * 200)
    assert bal(svc, long_wallet) == TEN + 2_000_000


# --- concurrency -------------------------------------------------------------------------------


async def test_concurrent_payments_never_overspend(
    svc: FogTokenomicsService, harness: Harness
) -> None:
    await wallets(svc, "alice", "bob", "carol")
    results = await asyncio.gather(
        *(
            svc.process_payment(pay(f"c{i}", "alice", "bob" if i % 2 else "carol", "0.5"))
            for i in range(50)
        )
    )
    ok = [r for r in results if r.status is TransactionStatus.COMMITTED]
    failed = [r for r in results if r.status is TransactionStatus.FAILED]
    # each costs 0.50042; 19 of them fit into the 9.99 above the reserve, 20 would not
    assert len(ok) == 19
    assert len(failed) == 31
    assert {r.code for r in failed} == {"exceeds_credits"}
    assert bal(svc, "alice") == TEN - 19 * (500_000 + FEE)
    assert bal(svc, "alice") >= RESERVE
    assert bal(svc, "bob") + bal(svc, "carol") == 2 * TEN + 19 * 500_000
    assert bal(svc, "platform") == 19 * FEE
    assert sum(a.balance for a in svc.ledger.state.accounts.values()) == 0
    report = await asyncio.to_thread(verify_ledger, SqlLedgerStore(harness.engine))
    assert report.ok, report.problems
