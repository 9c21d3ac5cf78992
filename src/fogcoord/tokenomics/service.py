"""FogTokenomicsService: wallets, payments, escrow, mining rewards, over the durable ledger."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.config import TokenomicsConfig
from fogcoord.contracts.errors import Conflict, NotFound, ValidationFailed
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.tokenomics import (
    BlockCommitted,
    EscrowChanged,
    EscrowHold,
    LowBalance,
    PayoutLeg,
    RewardsDistributed,
    Transaction,
    TransactionResult,
    TransactionStatus,
    WalletCreated,
    WalletInfo,
    WorkProof,
)
from fogcoord.contracts.units import MAX_MICRO, to_micro, to_tokens
from fogcoord.lifecycle import Publish, ServiceBase
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.escrow import Escrow, escrow_account
from fogcoord.tokenomics.ledger import MINT, PLATFORM, SYSTEM_ACCOUNTS, Ledger
from fogcoord.tokenomics.mining import RewardCalculator
from fogcoord.tokenomics.model import (
    ID_RE,
    MAX_MEMO,
    Account,
    AccountFlags,
    AccountKind,
    Batch,
    PendingState,
    Transfer,
    TransferFlags,
    TransferRequest,
    TransferResult,
)
from fogcoord.tokenomics.store import SqlLedgerStore

WALLET_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
GAS_PER_TRANSFER = 21_000
"""Gas units charged per user payment, as for a plain transfer on Ethereum."""
NAME = "tokenomics"


def micro_of(amount: Decimal | float | int | str, field: str = "amount") -> int:
    """Tokens to micro-tokens, refusing what cannot be represented exactly."""
    try:
        value = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
    except (InvalidOperation, ValueError):
        raise ValidationFailed(field, f"not a number: {amount!r}") from None
    if not value.is_finite():
        raise ValidationFailed(field, "must be finite")
    if value.adjusted() > 12:
        # 10^13 tokens or more fit no ledger field (and would overflow Decimal's 28 digits)
        raise ValidationFailed(field, "too large")
    micro = to_micro(value)
    # compared exactly: ``value * 1_000_000`` would round beyond 28 significant digits
    if Decimal(micro).scaleb(-6) != value:
        raise ValidationFailed(field, "at most 6 decimal places (1 micro-token)")
    if micro > MAX_MICRO or micro < -MAX_MICRO:
        raise ValidationFailed(field, "too large")
    return micro


def derived_id(*parts: str) -> str:
    """A transfer id made of ``parts``; hashed (keeping the prefix) when the joined id would
    not be a valid ledger id, e.g. longer than 96 characters for long wallet or batch ids."""
    tid = ":".join(parts)
    if ID_RE.match(tid):
        return tid
    return f"{parts[0]}:{hashlib.sha256(tid.encode()).hexdigest()}"


def gas_fee_micro(gas_price_gwei: float) -> int:
    """The fee of one user payment: gas_price_gwei x 21,000 gas, 1 gwei = 1e-9 token."""
    return int(Decimal(repr(gas_price_gwei)) * GAS_PER_TRANSFER / 1000)


_KIND = {
    TransferFlags.PENDING: "pending",
    TransferFlags.POST_PENDING: "post",
    TransferFlags.VOID_PENDING: "void",
}


def _kind(flags: int) -> str:
    for flag, name in _KIND.items():
        if flags & flag:
            return name
    return "transfer"


def as_transaction(t: Transfer) -> Transaction:
    return Transaction(
        transaction_id=t.id,
        from_wallet=t.debit_account,
        to_wallet=t.credit_account,
        amount=to_tokens(t.amount),
        memo=t.memo,
        timestamp=t.timestamp,
        block=t.block,
        kind=_kind(t.flags),
    )


class FogTokenomicsService(ServiceBase):
    service_type = NAME

    def __init__(
        self,
        config: TokenomicsConfig,
        engine: Callable[[], Engine],
        *,
        clock: Clock | None = None,
        publish: Publish | None = None,
    ) -> None:
        super().__init__(NAME, dependencies=("storage",), clock=clock, publish=publish)
        self.config = config
        self._engine = engine
        self._ledger: Ledger | None = None
        self.rewards = RewardCalculator(config.compute_mining)
        wm = config.wallet_management
        self.default_micro = micro_of(wm.default_balance, "default_balance")
        self.minimum_micro = micro_of(wm.minimum_balance, "minimum_balance")
        self.topup_micro = micro_of(wm.auto_topup_threshold, "auto_topup_threshold")
        self.fee_micro = gas_fee_micro(config.transaction_processing.gas_price_gwei)
        self.transfers_committed = 0
        self.volume_committed = 0
        """Micro-tokens moved by committed transfers since start (voids excluded)."""

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("tokenomics is not started")
        return self._ledger

    @property
    def escrow(self) -> Escrow:
        return Escrow(self.ledger)

    async def on_start(self) -> None:
        store = await asyncio.to_thread(SqlLedgerStore, self._engine())
        ledger = Ledger(
            store,
            self.clock,
            max_retry_attempts=self.config.transaction_processing.max_retry_attempts,
        )
        await ledger.open()
        ledger.writer.listeners.append(self._on_block)
        self._ledger = ledger

    async def on_stop(self) -> None:
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

    async def check_health(self) -> HealthStatus:
        ledger = self.ledger
        queued = ledger.writer.queued
        if queued > 10_000:
            return HealthStatus.warning(f"{queued} ledger operations queued")
        number, _ = ledger.head
        return HealthStatus.passing(f"block {number}, {len(ledger.state.accounts)} accounts")

    # --- seed contract -------------------------------------------------------------------------

    async def initialize_wallet(
        self, wallet_id: str, *, owner: str = "", funding_wallet: str | None = None
    ) -> WalletInfo:
        """Create the wallet (once) and grant ``default_balance`` from ``mint`` (once)."""
        if not WALLET_ID.match(wallet_id) or wallet_id in SYSTEM_ACCOUNTS:
            raise ValidationFailed("wallet_id", "1-64 letters, digits, _ . @ -; not a system name")
        owner = owner or wallet_id
        if funding_wallet is not None:
            funding = self.ledger.account(funding_wallet)
            if funding is None or funding.kind is not AccountKind.WALLET:
                raise NotFound("wallet", funding_wallet)
            if funding.owner != owner:
                raise ValidationFailed("funding_wallet", "must belong to the same owner")
            if funding_wallet == wallet_id:
                raise ValidationFailed("funding_wallet", "a wallet cannot fund itself")
        account = Account(
            wallet_id,
            AccountKind.WALLET,
            owner,
            AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
            reserve=self.minimum_micro,
            funding=funding_wallet,
        )
        code = await self.ledger.create_account(account)
        if code == Code.ACCOUNT_EXISTS_WITH_DIFFERENT_FIELDS:
            raise Conflict(f"wallet {wallet_id!r} exists with a different owner or settings")
        if code not in (Code.OK, Code.ACCOUNT_EXISTS):
            raise ValidationFailed("wallet_id", code)
        granted = Decimal(0)
        if self.default_micro > 0:
            (grant,) = await self.ledger.transfer(
                TransferRequest(
                    f"grant:{wallet_id}", MINT, wallet_id, self.default_micro, memo="opening grant"
                )
            )
            if grant.code == Code.OK:
                granted = to_tokens(self.default_micro)
        if code == Code.OK:
            self.emit(WalletCreated(source=NAME, wallet_id=wallet_id, owner=owner, granted=granted))
        return self.wallet_info(wallet_id)

    async def process_payment(self, transaction: Transaction) -> TransactionResult:
        """A user payment between wallets, with its gas fee to the platform, as one chain.

        Payments are announced in aggregate by the per-block ``BlockCommitted`` event rather
        than one event each: at thousands of payments a second, per-payment events would cost
        more than the payments.
        """
        tx = transaction
        amount = micro_of(tx.amount)
        if amount <= 0:
            raise ValidationFailed("amount", "must be positive")
        accounts = self.ledger.state.accounts
        source = accounts.get(tx.from_wallet)
        if source is None or source.kind is not AccountKind.WALLET:
            raise NotFound("wallet", tx.from_wallet)
        target = accounts.get(tx.to_wallet)
        if target is None or target.kind is AccountKind.ESCROW or tx.to_wallet == MINT:
            raise NotFound("wallet", tx.to_wallet)
        if self.fee_micro > 0 and tx.to_wallet != PLATFORM:
            legs = [
                TransferRequest(
                    tx.transaction_id,
                    tx.from_wallet,
                    tx.to_wallet,
                    amount,
                    TransferFlags.LINKED,
                    memo=tx.memo,
                ),
                TransferRequest(
                    f"fee:{tx.transaction_id}",
                    tx.from_wallet,
                    PLATFORM,
                    self.fee_micro,
                    memo="gas fee",
                ),
            ]
        else:
            legs = [
                TransferRequest(
                    tx.transaction_id, tx.from_wallet, tx.to_wallet, amount, memo=tx.memo
                )
            ]
        results = await self.ledger.transfers(legs)
        first = results[0]
        if first.code not in (Code.OK, Code.EXISTS):
            # report the leg that caused a chain to fail, not the "linked_event_failed" echo
            first = next((r for r in results if r.code != Code.LINKED_EVENT_FAILED), first)
        if results[0].code == Code.OK:
            await self._after_debit(tx.from_wallet, tx.transaction_id)
        result = self._result(first)
        if result.transaction_id != tx.transaction_id:
            # the fee leg failed: still the payment's result, under the payment's id
            result = result.model_copy(update={"transaction_id": tx.transaction_id})
        return result

    async def calculate_mining_rewards(self, work_proof: WorkProof) -> float:
        return float(to_tokens(self.rewards.reward_micro(work_proof)))

    async def distribute_rewards(
        self, rewards: dict[str, float], *, batch_id: str | None = None
    ) -> bool:
        """Mint rewards to wallets as one linked chain: all are paid or none is."""
        batch = batch_id or uuid.uuid4().hex
        legs: list[tuple[str, int]] = []
        for wallet, amount in sorted(rewards.items()):
            micro = micro_of(amount, f"rewards.{wallet}")
            if micro < 0:
                raise ValidationFailed(f"rewards.{wallet}", "must not be negative")
            account = self.ledger.account(wallet)
            if account is None or account.kind is not AccountKind.WALLET:
                raise NotFound("wallet", wallet)
            if micro:
                legs.append((wallet, micro))
        if not legs:
            return True
        requests = [
            TransferRequest(
                derived_id("reward", batch, wallet),
                MINT,
                wallet,
                micro,
                TransferFlags.LINKED if i < len(legs) - 1 else TransferFlags.NONE,
                memo=f"mining reward {batch}"[:MAX_MEMO],
            )
            for i, (wallet, micro) in enumerate(legs)
        ]
        results = await self.ledger.transfers(requests)
        paid = all(r.code in (Code.OK, Code.EXISTS) for r in results)
        if paid and any(r.code == Code.OK for r in results):
            total = to_tokens(sum(m for _, m in legs))
            self.emit(
                RewardsDistributed(source=NAME, batch_id=batch, total=total, wallets=len(legs))
            )
        return paid

    async def verify_balance(self, wallet_id: str, amount: float) -> bool:
        """Whether ``wallet_id`` can spend ``amount`` now (from memory, no database read)."""
        available = self.ledger.available(wallet_id)
        return available is not None and available >= micro_of(amount)

    async def get_transaction_history(
        self, wallet_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Transaction]:
        """Newest first; pass the last id of a page as ``before`` for the next page."""
        if self.ledger.account(wallet_id) is None:
            raise NotFound("wallet", wallet_id)
        if not 1 <= limit <= 1000:
            raise ValidationFailed("limit", "must be 1 to 1000")
        before_seq = None
        if before is not None:
            cursor = await self.ledger.lookup(before)
            if cursor is None:
                raise ValidationFailed("before", f"no transfer {before!r}")
            before_seq = cursor.seq
        transfers = await self.ledger.history(wallet_id, limit, before_seq)
        return [as_transaction(t) for t in transfers]

    # --- wallets -------------------------------------------------------------------------------

    def wallet_owner(self, wallet_id: str) -> str | None:
        account = self.ledger.state.accounts.get(wallet_id)
        return None if account is None else account.owner

    def wallets_of(self, owner: str) -> list[str]:
        return sorted(
            a.id
            for a in self.ledger.state.accounts.values()
            if a.owner == owner and a.kind is AccountKind.WALLET
        )

    def wallet_info(self, wallet_id: str) -> WalletInfo:
        account = self.ledger.account(wallet_id)
        if account is None or account.kind is AccountKind.ESCROW:
            raise NotFound("wallet", wallet_id)
        return WalletInfo(
            wallet_id=wallet_id,
            owner=account.owner,
            balance=to_tokens(account.balance),
            pending_out=to_tokens(account.debits_pending),
            pending_in=to_tokens(account.credits_pending),
            funding_wallet=account.funding,
        )

    async def holds(self, wallet_id: str) -> list[EscrowHold]:
        """The escrow holds made from ``wallet_id``, newest first."""
        out = []
        for info in await self.ledger.pending_for(wallet_id):
            t = info.transfer
            if not t.id.startswith("hold:"):
                continue
            job_id = t.id.removeprefix("hold:")
            captured = 0
            if info.state is PendingState.POSTED and info.resolved_by:
                post = await self.ledger.lookup(info.resolved_by)
                captured = post.amount if post else 0
            escrow = self.ledger.account(escrow_account(job_id))
            remaining = (escrow.balance + escrow.credits_pending) if escrow else 0
            out.append(
                EscrowHold(
                    job_id=job_id,
                    requester_wallet=wallet_id,
                    held=to_tokens(t.amount),
                    state=info.state.value,
                    captured=to_tokens(captured),
                    remaining=to_tokens(remaining),
                    expires_at=info.expires_at,
                )
            )
        return out

    # --- escrow (the protocol jobs use) ----------------------------------------------------

    async def hold_escrow(
        self, job_id: str, requester_wallet: str, amount_micro: int, timeout_s: float = 0.0
    ) -> TransactionResult:
        r = await self.escrow.hold(job_id, requester_wallet, amount_micro, timeout_s=timeout_s)
        self._escrow_event(job_id, "hold", amount_micro, r)
        return self._result(r)

    async def capture_escrow(self, job_id: str, amount_micro: int) -> TransactionResult:
        r = await self.escrow.capture(job_id, amount_micro)
        self._escrow_event(job_id, "capture", amount_micro, r)
        return self._result(r)

    async def release_escrow(self, job_id: str) -> TransactionResult:
        r = await self.escrow.release(job_id)
        self._escrow_event(job_id, "release", r.transfer.amount if r.transfer else 0, r)
        return self._result(r)

    async def payout_escrow(
        self, job_id: str, batch_id: str, payees: list[tuple[str, int]]
    ) -> list[TransactionResult]:
        results = await self.escrow.payout(job_id, batch_id, payees)
        self._escrow_event(
            job_id, "payout", sum(a for _, a in payees if a > 0), results[0] if results else None
        )
        return [self._result(r) for r in results]

    async def pay_from_escrow(self, job_id: str, legs: list[PayoutLeg]) -> list[TransactionResult]:
        results = await self.escrow.pay(job_id, legs)
        self._escrow_event(
            job_id, "pay", sum(leg.amount_micro for leg in legs), results[0] if results else None
        )
        return [self._result(r) for r in results]

    async def settle_escrow_payouts(
        self, job_id: str, post: list[str], void: list[str]
    ) -> list[TransactionResult]:
        results = await self.escrow.settle(job_id, post, void)
        return [self._result(r) for r in results]

    async def refund_escrow(
        self, job_id: str, refund_id: str, amount_micro: int
    ) -> TransactionResult | None:
        r = await self.escrow.refund(job_id, refund_id, amount_micro)
        if r is None:
            return None
        self._escrow_event(job_id, "refund", amount_micro, r)
        return self._result(r)

    def escrow_available(self, job_id: str) -> int:
        return self.escrow.available(job_id)

    def wallet_available(self, wallet_id: str) -> int | None:
        return self.ledger.available(wallet_id)

    async def close_escrow(self, job_id: str) -> TransactionResult | None:
        r = await self.escrow.close(job_id)
        if r is None:
            return None
        self._escrow_event(job_id, "close", r.transfer.amount if r.transfer else 0, r)
        return self._result(r)

    # --- internals -----------------------------------------------------------------------------

    def _result(self, r: TransferResult) -> TransactionResult:
        if r.code == Code.OK or r.code == Code.EXISTS:
            confirmations = self.ledger.confirmations(r.block)
            needed = self.config.transaction_processing.confirmation_blocks
            if r.code == Code.EXISTS:
                status = TransactionStatus.EXISTS
            elif confirmations >= needed:
                status = TransactionStatus.CONFIRMED
            else:
                status = TransactionStatus.COMMITTED
            return TransactionResult(
                transaction_id=r.id,
                status=status,
                code=r.code,
                block=r.block,
                confirmations=confirmations,
            )
        return TransactionResult(transaction_id=r.id, status=TransactionStatus.FAILED, code=r.code)

    def confirmation(self, transaction_id: str, block: int | None) -> TransactionResult:
        """The current status of a committed transfer: confirmed after enough later blocks."""
        return self._result(TransferResult(transaction_id, Code.OK, block))

    async def _after_debit(self, wallet_id: str, cause: str) -> None:
        account = self.ledger.state.accounts.get(wallet_id)
        if account is None or account.balance >= self.topup_micro:
            return
        funding = self.ledger.account(account.funding) if account.funding else None
        need = self.default_micro - account.balance
        if funding is not None and need > 0 and funding.available >= need:
            (r,) = await self.ledger.transfer(
                TransferRequest(
                    derived_id("topup", wallet_id, cause),
                    funding.id,
                    wallet_id,
                    need,
                    memo="auto top-up",
                )
            )
            if r.code in (Code.OK, Code.EXISTS):
                return
        reason = "no funding wallet" if funding is None else "funding wallet cannot cover it"
        self.emit(
            LowBalance(
                source=NAME,
                wallet_id=wallet_id,
                owner=account.owner,
                balance=to_tokens(account.balance),
                threshold=to_tokens(self.topup_micro),
                reason=reason,
            )
        )

    def _escrow_event(self, job_id: str, step: str, amount: int, r: TransferResult | None) -> None:
        if r is not None and r.code == Code.OK:
            self.emit(
                EscrowChanged(source=NAME, job_id=job_id, step=step, amount=to_tokens(amount))
            )

    def _on_block(self, batch: Batch) -> None:
        volume = sum(t.amount for t in batch.transfers if not t.flags & TransferFlags.VOID_PENDING)
        self.transfers_committed += len(batch.transfers)
        self.volume_committed += volume
        if self._publish is None:
            return
        self.emit(
            BlockCommitted(
                source=NAME,
                number=batch.number,
                hash=batch.hash,
                transfers=len(batch.transfers),
                volume=to_tokens(volume),
            )
        )

    def balances_by_kind(self) -> dict[str, int]:
        """Posted balances summed by role: wallets, escrows, the platform; minted as positive."""
        out = {"wallets": 0, "escrow": 0, "platform": 0, "minted": 0}
        for account in self.ledger.state.accounts.values():
            if account.kind is AccountKind.WALLET:
                out["wallets"] += account.balance
            elif account.kind is AccountKind.ESCROW:
                out["escrow"] += account.balance
            elif account.id == PLATFORM:
                out["platform"] += account.balance
            elif account.id == MINT:
                out["minted"] -= account.balance
        return out
