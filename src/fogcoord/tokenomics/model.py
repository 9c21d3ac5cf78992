"""Ledger records: accounts and transfers, in integer micro-tokens.

Modelled on TigerBeetle: an account keeps four running totals; a transfer is immutable, has a
client-chosen id, and is single-phase, pending (two-phase), or the post/void of a pending one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,96}$")
MAX_AMOUNT = 2**63 - 1
MAX_MEMO = 200


class AccountFlags:
    """Bit flags of an account (plain ints: enum arithmetic is slow on the hot path)."""

    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2


class TransferFlags:
    """Bit flags of a transfer (plain ints, as TigerBeetle's wire format)."""

    NONE = 0
    LINKED = 1
    PENDING = 2
    POST_PENDING = 4
    VOID_PENDING = 8
    ALL = 15


class AccountKind(StrEnum):
    WALLET = "wallet"
    SYSTEM = "system"
    ESCROW = "escrow"


class PendingState(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(slots=True)
class Account:
    """An account and its four running totals.

    ``reserve`` extends ``debits_must_not_exceed_credits``: posted plus pending debits may not
    exceed credits minus the reserve (the wallet's minimum balance).
    """

    id: str
    kind: AccountKind
    owner: str
    flags: int = AccountFlags.NONE
    reserve: int = 0
    funding: str | None = None
    created_at: float = 0.0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    @property
    def balance(self) -> int:
        """Posted credits minus posted debits."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What may still be debited: balance less pending debits and the reserve."""
        return self.credits_posted - self.debits_posted - self.debits_pending - self.reserve

    def copy(self) -> Account:
        return Account(
            self.id,
            self.kind,
            self.owner,
            self.flags,
            self.reserve,
            self.funding,
            self.created_at,
            self.debits_pending,
            self.debits_posted,
            self.credits_pending,
            self.credits_posted,
        )

    def same_definition(self, other: Account) -> bool:
        return (self.kind, self.owner, self.flags, self.reserve, self.funding) == (
            other.kind,
            other.owner,
            other.flags,
            other.reserve,
            other.funding,
        )


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """What a client asks for. ``amount`` None on a post means "the whole pending amount"."""

    id: str
    debit_account: str = ""
    credit_account: str = ""
    amount: int | None = 0
    flags: int = TransferFlags.NONE
    pending_id: str | None = None
    timeout: float = 0.0
    memo: str = ""


@dataclass(frozen=True, slots=True)
class Transfer:
    """A committed transfer: the request as resolved, with its place in the ledger."""

    id: str
    debit_account: str
    credit_account: str
    amount: int
    flags: int
    pending_id: str | None
    timeout: float
    memo: str
    timestamp: float
    block: int
    seq: int


@dataclass(frozen=True, slots=True)
class TransferResult:
    id: str
    code: str
    block: int | None = None
    transfer: Transfer | None = None

    @property
    def ok(self) -> bool:
        return self.code in ("ok", "exists")


@dataclass(slots=True)
class PendingInfo:
    """The live state of a pending transfer, kept in memory for post/void/expiry."""

    transfer: Transfer
    state: PendingState = PendingState.PENDING
    expires_at: float | None = None
    resolved_by: str | None = None


@dataclass(frozen=True, slots=True)
class FailedId:
    id: str
    code: str
    digest: str


@dataclass(slots=True)
class Batch:
    """What one group commit writes: the block, its transfers, state changes, failures."""

    number: int
    timestamp: float
    prev_hash: str
    hash: str = ""
    transfers: list[Transfer] = field(default_factory=list)
    accounts_created: list[Account] = field(default_factory=list)
    accounts_touched: dict[str, Account] = field(default_factory=dict)
    pending_changes: list[tuple[str, PendingState, str | None, float | None]] = field(
        default_factory=list
    )
    failed: list[FailedId] = field(default_factory=list)
