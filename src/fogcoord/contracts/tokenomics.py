"""Tokenomics contract: wallets, payments, mining rewards, history.

The seed speaks floats at this boundary (``amount: float``); amounts are converted to integer
micro-tokens at once and never computed on as floats.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


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
    memo: str = ""
    timestamp: float = 0.0
    block: int | None = None


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


class TokenomicsProtocol(Protocol):
    async def initialize_wallet(self, wallet_id: str) -> WalletInfo: ...

    async def process_payment(self, transaction: Transaction) -> TransactionResult: ...

    async def calculate_mining_rewards(self, work_proof: WorkProof) -> float: ...

    async def distribute_rewards(self, rewards: dict[str, float]) -> bool: ...

    async def verify_balance(self, wallet_id: str, amount: float) -> bool: ...

    async def get_transaction_history(self, wallet_id: str) -> list[Transaction]: ...
