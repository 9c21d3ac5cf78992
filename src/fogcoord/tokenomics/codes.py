"""Stable result codes of ledger operations (after TigerBeetle's, in snake case)."""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    OK = "ok"
    EXISTS = "exists"
    # validation: nothing is recorded, the same id may be sent again corrected
    ID_INVALID = "id_invalid"
    AMOUNT_MUST_NOT_BE_ZERO = "amount_must_not_be_zero"
    AMOUNT_INVALID = "amount_invalid"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    RESERVED_FLAG = "reserved_flag"
    PENDING_ID_REQUIRED = "pending_id_required"
    PENDING_ID_MUST_BE_EMPTY = "pending_id_must_be_empty"
    TIMEOUT_RESERVED_FOR_PENDING = "timeout_reserved_for_pending_transfer"
    MEMO_TOO_LONG = "memo_too_long"
    MEMO_INVALID = "memo_invalid"  # a NUL or a lone surrogate: no database can store it
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    # idempotency
    ID_ALREADY_FAILED = "id_already_failed"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT = "exists_with_different_debit_account_id"
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT = "exists_with_different_credit_account_id"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_PENDING_ID = "exists_with_different_pending_id"
    EXISTS_WITH_DIFFERENT_TIMEOUT = "exists_with_different_timeout"
    EXISTS_WITH_DIFFERENT_MEMO = "exists_with_different_memo"
    # state-dependent ("transient"): the id is recorded as failed, a retry cannot apply later
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"
    OVERFLOWS_DEBITS = "overflows_debits"
    OVERFLOWS_CREDITS = "overflows_credits"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT = "pending_transfer_has_different_debit_account_id"
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT = (
        "pending_transfer_has_different_credit_account_id"
    )
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    # accounts
    ACCOUNT_EXISTS = "account_exists"
    ACCOUNT_EXISTS_WITH_DIFFERENT_FIELDS = "account_exists_with_different_fields"

    @property
    def ok(self) -> bool:
        return self in (Code.OK, Code.EXISTS)

    @property
    def transient(self) -> bool:
        """A failure that depends on ledger state, so its id is remembered as failed."""
        return self in _TRANSIENT


_TRANSIENT = frozenset(
    {
        Code.DEBIT_ACCOUNT_NOT_FOUND,
        Code.CREDIT_ACCOUNT_NOT_FOUND,
        Code.EXCEEDS_CREDITS,
        Code.EXCEEDS_DEBITS,
        Code.OVERFLOWS_DEBITS,
        Code.OVERFLOWS_CREDITS,
        Code.PENDING_TRANSFER_NOT_FOUND,
        Code.PENDING_TRANSFER_NOT_PENDING,
        Code.PENDING_TRANSFER_ALREADY_POSTED,
        Code.PENDING_TRANSFER_ALREADY_VOIDED,
        Code.PENDING_TRANSFER_EXPIRED,
        Code.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT,
        Code.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT,
        Code.EXCEEDS_PENDING_TRANSFER_AMOUNT,
    }
)
