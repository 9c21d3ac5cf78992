"""The ledger's state machine, in memory and free of I/O.

A :class:`BatchBuilder` applies operations on copy-on-write copies of the accounts it touches;
the base state changes only in :meth:`LedgerState.commit`, after the batch is durable. So a
failed database write leaves memory exactly as the database is. Linked chains are applied with
an undo log and rolled back as a unit when any leg fails.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fogcoord.tokenomics import blocks
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.idfilter import IdFilter
from fogcoord.tokenomics.model import (
    ID_RE,
    MAX_AMOUNT,
    MAX_MEMO,
    Account,
    AccountFlags,
    Batch,
    FailedId,
    PendingInfo,
    PendingState,
    Transfer,
    TransferFlags,
    TransferRequest,
    TransferResult,
)

_PHASE = TransferFlags.PENDING | TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING
RECENT_IDS = 200_000
"""Committed transfer ids kept in memory for idempotency checks; older ones are looked up."""

Known = Transfer | FailedId


@dataclass
class Loaded:
    """What a store hands back at start-up."""

    accounts: list[Account] = field(default_factory=list)
    pending: list[PendingInfo] = field(default_factory=list)
    head_number: int = 0
    head_hash: str | None = None
    next_seq: int = 1
    ids: list[str] = field(default_factory=list)


def _digest(r: TransferRequest) -> str:
    return blocks.request_digest(
        r.debit_account, r.credit_account, r.amount, r.flags, r.pending_id, r.timeout, r.memo
    )


def _storable(text: str) -> bool:
    """PostgreSQL text refuses NUL; a lone surrogate cannot be encoded (not even to hash the
    block, which would stop the writer). Either would fail every request in its block."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class LedgerState:
    """The committed state: accounts, pending transfers, recent ids, the chain head."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.pending: dict[str, PendingInfo] = {}
        self.recent: OrderedDict[str, Known] = OrderedDict()
        self.seen = IdFilter()
        self.expiries: list[tuple[float, str]] = []
        self.head_number = 0
        self.head_hash = blocks.GENESIS
        self.next_seq = 1

    @classmethod
    def from_loaded(cls, loaded: Loaded) -> LedgerState:
        state = cls()
        state.accounts = {a.id: a for a in loaded.accounts}
        for info in loaded.pending:
            state.add_pending(info)
        state.head_number = loaded.head_number
        state.head_hash = loaded.head_hash or blocks.GENESIS
        state.next_seq = loaded.next_seq
        for tid in loaded.ids:
            state.seen.add(tid)
        return state

    def replace(self, other: LedgerState) -> None:
        """Take ``other``'s contents in place (readers keep their reference to ``self``)."""
        self.accounts = other.accounts
        self.pending = other.pending
        self.recent = other.recent
        self.seen = other.seen
        self.expiries = other.expiries
        self.head_number = other.head_number
        self.head_hash = other.head_hash
        self.next_seq = other.next_seq

    def remember(self, known: Known) -> None:
        self.seen.add(known.id)
        self.recent[known.id] = known
        if len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    def add_pending(self, info: PendingInfo) -> None:
        known = info.transfer.id in self.pending
        self.pending[info.transfer.id] = info
        if not known and info.state is PendingState.PENDING and info.expires_at is not None:
            heapq.heappush(self.expiries, (info.expires_at, info.transfer.id))

    def unknown_ids(self, ids: Sequence[str]) -> list[str]:
        """Ids that may have been used but are not in memory: the store must be asked."""
        recent, seen = self.recent, self.seen
        return [i for i in ids if i not in recent and i in seen]

    def begin(
        self,
        timestamp: float,
        known: Mapping[str, Known] | None = None,
        parent: BatchBuilder | None = None,
    ) -> BatchBuilder:
        """A builder for the next block; with ``parent``, on top of a block not yet committed."""
        return BatchBuilder(self, timestamp, known or {}, parent)

    def commit(self, builder: BatchBuilder) -> None:
        batch = builder.batch
        for account in batch.accounts_created:
            self.accounts[account.id] = builder.accounts[account.id]
        for acc_id, account in builder.accounts.items():
            self.accounts[acc_id] = account
        for info in builder.pending.values():
            self.add_pending(info)
        for transfer in batch.transfers:
            self.remember(transfer)
        for failed in batch.failed:
            self.remember(failed)
        self.head_number = batch.number
        self.head_hash = batch.hash
        self.next_seq = builder.seq
        builder.popped.clear()
        builder.parent = None


class BatchBuilder:
    def __init__(
        self,
        state: LedgerState,
        timestamp: float,
        known: Mapping[str, Known],
        parent: BatchBuilder | None = None,
    ) -> None:
        self.state = state
        self.known = known
        self.parent: BatchBuilder | None = parent
        self.timestamp: float
        self.seq: int
        if parent is not None:
            timestamp = max(timestamp, parent.timestamp)
        self.timestamp = timestamp
        self.seq = parent.seq if parent is not None else state.next_seq
        self.accounts: dict[str, Account] = {}
        self.pending: dict[str, PendingInfo] = {}
        self.new: dict[str, Known] = {}
        self.expired: list[str] = []
        self.popped: list[tuple[float, str]] = []
        self.batch: Batch
        if parent is not None:
            self.batch = Batch(
                number=parent.batch.number + 1, timestamp=timestamp, prev_hash=parent.batch.hash
            )
        else:
            self.batch = Batch(
                number=state.head_number + 1, timestamp=timestamp, prev_hash=state.head_hash
            )
        self._undo: dict[str, tuple[int, int, int, int] | None] | None = None
        self._undo_pending: dict[str, PendingInfo | None] | None = None

    # --- views over base + overlay ---------------------------------------------------------

    def account(self, acc_id: str) -> Account | None:
        acc = self.accounts.get(acc_id)
        if acc is not None:
            return acc
        base = self.parent.accounts.get(acc_id) if self.parent is not None else None
        if base is None:
            base = self.state.accounts.get(acc_id)
        if base is None:
            return None
        acc = base.copy()
        self.accounts[acc_id] = acc
        return acc

    def _pending(self, pending_id: str) -> PendingInfo | None:
        info = self.pending.get(pending_id)
        if info is not None:
            return info
        base = self.parent.pending.get(pending_id) if self.parent is not None else None
        if base is None:
            base = self.state.pending.get(pending_id)
        if base is None:
            return None
        info = PendingInfo(base.transfer, base.state, base.expires_at, base.resolved_by)
        self.pending[pending_id] = info
        return info

    def _existing(self, tid: str) -> Known | None:
        found = self.new.get(tid)
        if found is None and self.parent is not None:
            found = self.parent.new.get(tid)
        return found or self.state.recent.get(tid) or self.known.get(tid)

    # --- accounts --------------------------------------------------------------------------

    def create_account(self, account: Account) -> str:
        if not ID_RE.match(account.id):
            return Code.ID_INVALID
        existing = self.account(account.id)
        if existing is not None:
            if existing.same_definition(account):
                return Code.ACCOUNT_EXISTS
            return Code.ACCOUNT_EXISTS_WITH_DIFFERENT_FIELDS
        fresh = account.copy()
        fresh.created_at = self.timestamp
        fresh.debits_pending = fresh.debits_posted = 0
        fresh.credits_pending = fresh.credits_posted = 0
        self.accounts[fresh.id] = fresh
        self.batch.accounts_created.append(fresh)
        return Code.OK

    # --- expiry ----------------------------------------------------------------------------

    def expire_due(self) -> list[str]:
        heap = self.state.expiries
        while heap and heap[0][0] <= self.timestamp:
            entry = heapq.heappop(heap)
            self.popped.append(entry)
            info = self._pending(entry[1])
            if info is None or info.state is not PendingState.PENDING:
                continue
            self._release(info.transfer)
            info.state = PendingState.EXPIRED
            self.expired.append(info.transfer.id)
        return self.expired

    def abandon(self) -> None:
        """Forget this batch (its write failed): put popped expiries back."""
        for entry in self.popped:
            heapq.heappush(self.state.expiries, entry)
        self.popped.clear()

    def _release(self, t: Transfer) -> None:
        debit = self.account(t.debit_account)
        credit = self.account(t.credit_account)
        assert debit is not None
        assert credit is not None
        self._snapshot(debit)
        self._snapshot(credit)
        debit.debits_pending -= t.amount
        credit.credits_pending -= t.amount

    # --- transfers -------------------------------------------------------------------------

    def submit(self, requests: Sequence[TransferRequest]) -> list[TransferResult]:
        """Apply one request's transfers, chain by chain, in order."""
        results: list[TransferResult] = []
        chain: list[TransferRequest] = []
        for req in requests:
            chain.append(req)
            if not req.flags & TransferFlags.LINKED:
                results.extend(self._chain(chain))
                chain = []
        if chain:
            results.extend(TransferResult(r.id, Code.LINKED_EVENT_CHAIN_OPEN) for r in chain)
        return results

    def _chain(self, chain: list[TransferRequest]) -> list[TransferResult]:
        if len(chain) == 1:
            return [self._one(chain[0])]
        self._undo, self._undo_pending = {}, {}
        mark_transfers = len(self.batch.transfers)
        mark_new = list(self.new)
        mark_seq = self.seq
        results: list[TransferResult] = []
        failed_at = -1
        for i, req in enumerate(chain):
            res = self._one(req)
            results.append(res)
            if not res.ok:
                failed_at = i
                break
        undo, undo_pending = self._undo, self._undo_pending
        self._undo = self._undo_pending = None
        if failed_at < 0:
            return results
        # roll the chain back: balances, pending states, new transfers and ids
        for acc_id, snap in undo.items():
            if snap is None:
                continue
            acc = self.accounts[acc_id]
            acc.debits_pending, acc.debits_posted, acc.credits_pending, acc.credits_posted = snap
        for pid, prev in undo_pending.items():
            if prev is None:
                self.pending.pop(pid, None)
            else:
                self.pending[pid] = prev
        del self.batch.transfers[mark_transfers:]
        keep = set(mark_new)
        failing = chain[failed_at]
        failure = results[failed_at]
        for tid in list(self.new):
            if tid not in keep and not (tid == failing.id and isinstance(self.new[tid], FailedId)):
                del self.new[tid]
        self.seq = mark_seq
        self.batch.failed = [f for f in self.batch.failed if f.id in self.new]
        out: list[TransferResult] = []
        for i, req in enumerate(chain):
            if i == failed_at:
                out.append(failure)
            else:
                out.append(TransferResult(req.id, Code.LINKED_EVENT_FAILED))
        return out

    def _snapshot(self, acc: Account) -> None:
        if self._undo is not None and acc.id not in self._undo:
            self._undo[acc.id] = (
                acc.debits_pending,
                acc.debits_posted,
                acc.credits_pending,
                acc.credits_posted,
            )

    def _fail(self, req: TransferRequest, code: Code) -> TransferResult:
        if code.transient:
            failed = FailedId(req.id, code.value, _digest(req))
            self.new[req.id] = failed
            self.batch.failed.append(failed)
        return TransferResult(req.id, code.value)

    def _one(self, req: TransferRequest) -> TransferResult:
        code = self._validate(req)
        if code is not None:
            return TransferResult(req.id, code.value)
        existing = self._existing(req.id)
        if existing is not None:
            if isinstance(existing, FailedId):
                return TransferResult(req.id, Code.ID_ALREADY_FAILED.value)
            return self._compare(req, existing)
        if req.flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING):
            return self._resolve(req)
        return self._move(req)

    def _validate(self, r: TransferRequest) -> Code | None:
        if not ID_RE.match(r.id):
            return Code.ID_INVALID
        if r.flags & ~TransferFlags.ALL:
            return Code.RESERVED_FLAG
        phase = r.flags & _PHASE
        if phase and phase not in (
            TransferFlags.PENDING,
            TransferFlags.POST_PENDING,
            TransferFlags.VOID_PENDING,
        ):
            return Code.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if len(r.memo) > MAX_MEMO:
            return Code.MEMO_TOO_LONG
        if r.memo and not _storable(r.memo):
            return Code.MEMO_INVALID
        resolving = bool(r.flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING))
        if resolving:
            if not r.pending_id:
                return Code.PENDING_ID_REQUIRED
            if r.pending_id == r.id or not ID_RE.match(r.pending_id):
                return Code.ID_INVALID
            if r.amount is not None and (r.amount < 0 or r.amount > MAX_AMOUNT):
                return Code.AMOUNT_INVALID
            if r.timeout:
                return Code.TIMEOUT_RESERVED_FOR_PENDING
            return None
        if r.pending_id:
            return Code.PENDING_ID_MUST_BE_EMPTY
        if r.amount is None or r.amount < 0 or r.amount > MAX_AMOUNT:
            return Code.AMOUNT_INVALID
        if r.amount == 0:
            return Code.AMOUNT_MUST_NOT_BE_ZERO
        if r.timeout and not r.flags & TransferFlags.PENDING:
            return Code.TIMEOUT_RESERVED_FOR_PENDING
        if not 0 <= r.timeout < math.inf:
            # negative, NaN or infinite: NaN would be stored as NULL by SQLite (failing the
            # whole block for every caller in it) and never compares equal on a replay
            return Code.AMOUNT_INVALID
        if not ID_RE.match(r.debit_account) or not ID_RE.match(r.credit_account):
            return Code.ID_INVALID
        if r.debit_account == r.credit_account:
            return Code.ACCOUNTS_MUST_BE_DIFFERENT
        return None

    def _compare(self, r: TransferRequest, t: Transfer) -> TransferResult:
        """The same id again: ``exists`` if the body matches, else which field differs.

        On a post or void, empty accounts and an empty amount mean "as the pending transfer".
        """
        resolving = bool(r.flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING))
        if r.flags != t.flags:
            code = Code.EXISTS_WITH_DIFFERENT_FLAGS
        elif r.pending_id != t.pending_id:
            code = Code.EXISTS_WITH_DIFFERENT_PENDING_ID
        elif r.debit_account != t.debit_account and not (resolving and not r.debit_account):
            code = Code.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT
        elif r.credit_account != t.credit_account and not (resolving and not r.credit_account):
            code = Code.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT
        elif r.amount != t.amount and not (resolving and not r.amount):
            code = Code.EXISTS_WITH_DIFFERENT_AMOUNT
        elif r.timeout != t.timeout:
            code = Code.EXISTS_WITH_DIFFERENT_TIMEOUT
        elif r.memo != t.memo:
            code = Code.EXISTS_WITH_DIFFERENT_MEMO
        else:
            return TransferResult(r.id, Code.EXISTS.value, t.block, t)
        return TransferResult(r.id, code.value)

    def _limits(self, debit: Account, credit: Account, amount: int) -> Code | None:
        if debit.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and (
            debit.debits_pending + debit.debits_posted + amount + debit.reserve
            > debit.credits_posted
        ):
            return Code.EXCEEDS_CREDITS
        if credit.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS and (
            credit.credits_pending + credit.credits_posted + amount > credit.debits_posted
        ):
            return Code.EXCEEDS_DEBITS
        if debit.debits_pending + debit.debits_posted + amount > MAX_AMOUNT:
            return Code.OVERFLOWS_DEBITS
        if credit.credits_pending + credit.credits_posted + amount > MAX_AMOUNT:
            return Code.OVERFLOWS_CREDITS
        return None

    def _record(
        self,
        req: TransferRequest,
        debit: str,
        credit: str,
        amount: int,
    ) -> Transfer:
        t = Transfer(
            id=req.id,
            debit_account=debit,
            credit_account=credit,
            amount=amount,
            flags=req.flags,
            pending_id=req.pending_id,
            timeout=req.timeout,
            memo=req.memo,
            timestamp=self.timestamp,
            block=self.batch.number,
            seq=self.seq,
        )
        self.seq += 1
        self.batch.transfers.append(t)
        self.new[t.id] = t
        return t

    def _move(self, r: TransferRequest) -> TransferResult:
        debit = self.account(r.debit_account)
        if debit is None:
            return self._fail(r, Code.DEBIT_ACCOUNT_NOT_FOUND)
        credit = self.account(r.credit_account)
        if credit is None:
            return self._fail(r, Code.CREDIT_ACCOUNT_NOT_FOUND)
        amount = r.amount or 0
        limit = self._limits(debit, credit, amount)
        if limit is not None:
            return self._fail(r, limit)
        self._snapshot(debit)
        self._snapshot(credit)
        if r.flags & TransferFlags.PENDING:
            debit.debits_pending += amount
            credit.credits_pending += amount
        else:
            debit.debits_posted += amount
            credit.credits_posted += amount
        t = self._record(r, debit.id, credit.id, amount)
        if r.flags & TransferFlags.PENDING:
            if self._undo_pending is not None:
                self._undo_pending.setdefault(t.id, None)
            expires = self.timestamp + r.timeout if r.timeout > 0 else None
            self.pending[t.id] = PendingInfo(t, PendingState.PENDING, expires)
        return TransferResult(r.id, Code.OK.value, self.batch.number, t)

    def _resolve(self, r: TransferRequest) -> TransferResult:
        assert r.pending_id is not None
        info = self._pending(r.pending_id)
        if info is None:
            return self._fail(r, Code.PENDING_TRANSFER_NOT_FOUND)
        p = info.transfer
        if r.debit_account and r.debit_account != p.debit_account:
            return self._fail(r, Code.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT)
        if r.credit_account and r.credit_account != p.credit_account:
            return self._fail(r, Code.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT)
        if info.state is PendingState.PENDING and (
            info.expires_at is not None and info.expires_at <= self.timestamp
        ):
            return self._fail(r, Code.PENDING_TRANSFER_EXPIRED)
        if info.state is not PendingState.PENDING:
            return self._fail(
                r,
                {
                    PendingState.POSTED: Code.PENDING_TRANSFER_ALREADY_POSTED,
                    PendingState.VOIDED: Code.PENDING_TRANSFER_ALREADY_VOIDED,
                    PendingState.EXPIRED: Code.PENDING_TRANSFER_EXPIRED,
                }[info.state],
            )
        posting = bool(r.flags & TransferFlags.POST_PENDING)
        amount = p.amount if r.amount is None or r.amount == 0 else r.amount
        if amount > p.amount:
            return self._fail(r, Code.EXCEEDS_PENDING_TRANSFER_AMOUNT)
        if not posting and amount != p.amount:
            return self._fail(r, Code.EXCEEDS_PENDING_TRANSFER_AMOUNT)
        if self._undo_pending is not None and p.id not in self._undo_pending:
            self._undo_pending[p.id] = PendingInfo(
                info.transfer, info.state, info.expires_at, info.resolved_by
            )
        self._release(p)
        debit = self.account(p.debit_account)
        credit = self.account(p.credit_account)
        assert debit is not None
        assert credit is not None
        if posting:
            debit.debits_posted += amount
            credit.credits_posted += amount
        t = self._record(r, p.debit_account, p.credit_account, amount)
        self.pending[p.id] = PendingInfo(
            p,
            PendingState.POSTED if posting else PendingState.VOIDED,
            info.expires_at,
            t.id,
        )
        return TransferResult(r.id, Code.OK.value, self.batch.number, t)

    # --- sealing ---------------------------------------------------------------------------

    def _pending_changed(self, pid: str, info: PendingInfo) -> bool:
        base = self.parent.pending.get(pid) if self.parent is not None else None
        if base is None:
            base = self.state.pending.get(pid)
        return base is None or (base.state, base.resolved_by) != (info.state, info.resolved_by)

    def empty(self) -> bool:
        b = self.batch
        return not (b.transfers or b.accounts_created or b.failed or self.expired)

    def finish(self) -> Batch:
        b = self.batch
        touched = set(self.accounts)
        b.accounts_touched = {a: self.accounts[a] for a in touched}
        # Only real changes: a pending transfer merely read here (a refused post of an expired
        # one, an expiry entry of one already posted) is unchanged, and re-reporting it as
        # expired would make the store move its expiry into this block, breaking both hashes.
        b.pending_changes = [
            (pid, info.state, info.resolved_by, info.expires_at)
            for pid, info in self.pending.items()
            if self._pending_changed(pid, info)
        ]
        content = blocks.content_hash(b.transfers, b.accounts_created, self.expired)
        b.hash = blocks.block_hash(b.number, b.prev_hash, content, b.timestamp)
        return b
