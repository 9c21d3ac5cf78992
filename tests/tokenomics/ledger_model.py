"""A deliberately naive reference model of the ledger's rules, for the stateful test.

It is written from the rules, not from the engine: plain dicts, a deep copy per chain, one
function per kind of transfer. It covers the requests the stateful test generates (valid ones,
unknown accounts, zero amounts, overdrafts, post/void of any pending, replays), not every
validation code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from fogcoord.tokenomics.model import TransferFlags, TransferRequest

RESOLVE = TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING

STATE_CODES = frozenset(
    {
        "debit_account_not_found",
        "credit_account_not_found",
        "exceeds_credits",
        "pending_transfer_not_found",
        "pending_transfer_already_posted",
        "pending_transfer_already_voided",
        "pending_transfer_expired",
        "exceeds_pending_transfer_amount",
    }
)


@dataclass
class MAccount:
    limited: bool
    reserve: int = 0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    def totals(self) -> tuple[int, int, int, int]:
        return (self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)


@dataclass
class MPending:
    debit: str
    credit: str
    amount: int
    expires_at: float | None
    state: str = "pending"


@dataclass(frozen=True)
class Body:
    """What a recorded transfer is compared with when its id comes again."""

    debit: str
    credit: str
    amount: int
    flags: int
    pending_id: str | None
    timeout: float
    memo: str


@dataclass
class Model:
    accounts: dict[str, MAccount] = field(default_factory=dict)
    pending: dict[str, MPending] = field(default_factory=dict)
    transfers: dict[str, Body] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def clone(self) -> Model:
        return copy.deepcopy(self)

    # --- a batch ----------------------------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        gone = []
        for pid, p in self.pending.items():
            if p.state == "pending" and p.expires_at is not None and p.expires_at <= now:
                p.state = "expired"
                self.accounts[p.debit].debits_pending -= p.amount
                self.accounts[p.credit].credits_pending -= p.amount
                gone.append(pid)
        return gone

    def submit(self, requests: list[TransferRequest], now: float) -> list[str]:
        out: list[str] = []
        chain: list[TransferRequest] = []
        for r in requests:
            chain.append(r)
            if not r.flags & TransferFlags.LINKED:
                out.extend(self._chain(chain, now))
                chain = []
        out.extend("linked_event_chain_open" for _ in chain)
        return out

    def _chain(self, chain: list[TransferRequest], now: float) -> list[str]:
        saved = self.clone()
        got: list[str] = []
        for r in chain:
            code = self._one(r, now)
            got.append(code)
            if code not in ("ok", "exists"):
                break
        else:
            return got
        failing = chain[len(got) - 1]
        code = got[-1]
        self.accounts, self.pending = saved.accounts, saved.pending
        self.transfers, self.failed = saved.transfers, saved.failed
        if code in STATE_CODES:
            self.failed.add(failing.id)
        if len(chain) == 1:
            return [code]
        return [code if r is failing else "linked_event_failed" for r in chain]

    # --- one transfer ----------------------------------------------------------------------

    def _one(self, r: TransferRequest, now: float) -> str:
        resolving = bool(r.flags & RESOLVE)
        if not resolving:
            if r.amount == 0:
                return "amount_must_not_be_zero"
            if r.debit_account == r.credit_account:
                return "accounts_must_be_different"
        if r.id in self.failed:
            return "id_already_failed"
        if r.id in self.transfers:
            return self._compare(r, self.transfers[r.id])
        code = self._resolve(r, now) if resolving else self._move(r, now)
        if code in STATE_CODES:
            self.failed.add(r.id)
        return code

    def _compare(self, r: TransferRequest, t: Body) -> str:
        resolving = bool(r.flags & RESOLVE)
        if r.flags != t.flags:
            return "exists_with_different_flags"
        if r.pending_id != t.pending_id:
            return "exists_with_different_pending_id"
        if r.debit_account != t.debit and not (resolving and not r.debit_account):
            return "exists_with_different_debit_account_id"
        if r.credit_account != t.credit and not (resolving and not r.credit_account):
            return "exists_with_different_credit_account_id"
        if r.amount != t.amount and not (resolving and not r.amount):
            return "exists_with_different_amount"
        if r.timeout != t.timeout:
            return "exists_with_different_timeout"
        if r.memo != t.memo:
            return "exists_with_different_memo"
        return "exists"

    def _move(self, r: TransferRequest, now: float) -> str:
        debit = self.accounts.get(r.debit_account)
        if debit is None:
            return "debit_account_not_found"
        credit = self.accounts.get(r.credit_account)
        if credit is None:
            return "credit_account_not_found"
        amount = r.amount or 0
        if debit.limited:
            spendable = debit.credits_posted - debit.debits_posted - debit.debits_pending
            if amount > spendable - debit.reserve:
                return "exceeds_credits"
        if r.flags & TransferFlags.PENDING:
            debit.debits_pending += amount
            credit.credits_pending += amount
            expires = now + r.timeout if r.timeout > 0 else None
            self.pending[r.id] = MPending(r.debit_account, r.credit_account, amount, expires)
        else:
            debit.debits_posted += amount
            credit.credits_posted += amount
        self.transfers[r.id] = Body(
            r.debit_account, r.credit_account, amount, r.flags, r.pending_id, r.timeout, r.memo
        )
        return "ok"

    def _resolve(self, r: TransferRequest, now: float) -> str:
        assert r.pending_id is not None
        p = self.pending.get(r.pending_id)
        if p is None:
            return "pending_transfer_not_found"
        if p.state == "pending" and p.expires_at is not None and p.expires_at <= now:
            return "pending_transfer_expired"
        if p.state != "pending":
            return {
                "posted": "pending_transfer_already_posted",
                "voided": "pending_transfer_already_voided",
                "expired": "pending_transfer_expired",
            }[p.state]
        posting = bool(r.flags & TransferFlags.POST_PENDING)
        amount = r.amount or p.amount
        if amount > p.amount or (not posting and amount != p.amount):
            return "exceeds_pending_transfer_amount"
        debit, credit = self.accounts[p.debit], self.accounts[p.credit]
        debit.debits_pending -= p.amount
        credit.credits_pending -= p.amount
        if posting:
            debit.debits_posted += amount
            credit.credits_posted += amount
        p.state = "posted" if posting else "voided"
        self.transfers[r.id] = Body(
            p.debit, p.credit, amount, r.flags, r.pending_id, r.timeout, r.memo
        )
        return "ok"
