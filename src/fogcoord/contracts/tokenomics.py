"""Tokenomics contract: wallets, payments, mining rewards, history.

The seed speaks floats at this boundary (``amount: float``); amounts are converted to integer
micro-tokens at once and never computed on as floats.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.contracts.events import ServiceEvent

PLATFORM_WALLET = "platform"
"""The ledger account that collects platform fees."""


class WalletInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    wallet_id: str
    owner: str
    balance: Decimal
    pending_out: Decimal = Decimal(0)
    pending_in: Decimal = Decimal(0)
    funding_wallet: str | None = None


class Transaction(BaseModel):
    model_config = ConfigDict(frozen=True)

    transaction_id: str = Field(min_length=1, max_length=64)
    from_wallet: str
    to_wallet: str
    amount: Decimal = Field(gt=0)
    memo: str = Field(default="", max_length=200)
    timestamp: float = 0.0
    block: int | None = None
    kind: str = Field(
        default="transfer", description="transfer, pending, post or void (two-phase steps)"
    )


class TransactionStatus(StrEnum):
    CONFIRMED = "confirmed"
    COMMITTED = "committed"
    EXISTS = "exists"
    FAILED = "failed"


class TransactionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    transaction_id: str
    status: TransactionStatus
    code: str
    block: int | None = None
    confirmations: int = 0


class WorkProof(BaseModel):
    """Built by the coordinator after verification, never taken from a device's word."""

    model_config = ConfigDict(frozen=True)

    device_id: str
    task_id: str
    verified_fuel: int = Field(ge=0)
    gflop: float = Field(ge=0)
    reliability: float = Field(ge=0, le=1)


class EscrowHold(BaseModel):
    """A requester's view of one job's escrow."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    requester_wallet: str
    held: Decimal
    state: str = Field(description="pending, posted (captured), voided or expired")
    captured: Decimal = Decimal(0)
    remaining: Decimal = Decimal(0)
    expires_at: float | None = None


class PayoutLeg(BaseModel):
    """One leg of a payout chain from a job's escrow, named by the caller so retries dedupe."""

    model_config = ConfigDict(frozen=True)

    transfer_id: str = Field(min_length=1, max_length=96)
    to_wallet: str
    amount_micro: int = Field(ge=0)
    pending: bool = Field(default=False, description="left pending until posted or voided")
    memo: str = Field(default="", max_length=200)


class WalletCreated(ServiceEvent):
    wallet_id: str
    owner: str
    granted: Decimal


class LowBalance(ServiceEvent):
    wallet_id: str
    owner: str
    balance: Decimal
    threshold: Decimal
    reason: str


class RewardsDistributed(ServiceEvent):
    durable = True

    batch_id: str
    total: Decimal
    wallets: int


class EscrowChanged(ServiceEvent):
    durable = True

    job_id: str
    step: str
    amount: Decimal


class BlockCommitted(ServiceEvent):
    number: int
    hash: str
    transfers: int
    volume: Decimal


class TokenomicsProtocol(Protocol):
    async def initialize_wallet(self, wallet_id: str) -> WalletInfo: ...

    async def process_payment(self, transaction: Transaction) -> TransactionResult: ...

    async def calculate_mining_rewards(self, work_proof: WorkProof) -> float: ...

    async def distribute_rewards(
        self, rewards: dict[str, float], *, batch_id: str | None = None
    ) -> bool: ...

    async def verify_balance(self, wallet_id: str, amount: float) -> bool: ...

    async def get_transaction_history(self, wallet_id: str) -> list[Transaction]: ...

    # escrow, in integer micro-tokens (the protocol every job uses)
    async def hold_escrow(
        self, job_id: str, requester_wallet: str, amount_micro: int, timeout_s: float = 0.0
    ) -> TransactionResult: ...

    async def capture_escrow(self, job_id: str, amount_micro: int) -> TransactionResult: ...

    async def release_escrow(self, job_id: str) -> TransactionResult: ...

    async def payout_escrow(
        self, job_id: str, batch_id: str, payees: list[tuple[str, int]]
    ) -> list[TransactionResult]: ...

    async def pay_from_escrow(
        self, job_id: str, legs: list[PayoutLeg]
    ) -> list[TransactionResult]: ...

    async def settle_escrow_payouts(
        self, job_id: str, post: list[str], void: list[str]
    ) -> list[TransactionResult]: ...

    async def refund_escrow(
        self, job_id: str, refund_id: str, amount_micro: int
    ) -> TransactionResult | None: ...

    def escrow_available(self, job_id: str) -> int: ...

    def wallet_available(self, wallet_id: str) -> int | None: ...

    async def close_escrow(self, job_id: str) -> TransactionResult | None: ...

    def wallet_owner(self, wallet_id: str) -> str | None: ...
