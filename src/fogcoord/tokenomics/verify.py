"""Offline ledger verification: what ``fogcoord ledger verify`` runs.

From the stored rows alone it recomputes every account's four totals from its transfers and
compares them with the stored totals, checks that debits equal credits (pending and posted),
that no limited account is overdrawn, and recomputes every block hash along the chain.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from fogcoord.tokenomics import blocks
from fogcoord.tokenomics.model import AccountFlags, PendingState, TransferFlags
from fogcoord.tokenomics.store import LedgerStore


@dataclass
class VerifyReport:
    accounts: int = 0
    transfers: int = 0
    block_count: int = 0
    head_hash: str = blocks.GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_ledger(store: LedgerStore, *, max_problems: int = 100) -> VerifyReport:
    report = VerifyReport()

    def problem(text: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(text)

    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    states = store.pending_states()
    pending_amounts: dict[str, tuple[str, str, int]] = {}
    for t in store.all_transfers():
        report.transfers += 1
        if t.flags & TransferFlags.PENDING:
            pending_amounts[t.id] = (t.debit_account, t.credit_account, t.amount)
            if states.get(t.id) is PendingState.PENDING:
                totals[t.debit_account][0] += t.amount
                totals[t.credit_account][2] += t.amount
            elif t.id not in states:
                problem(f"pending transfer {t.id} has no state")
        elif t.flags & TransferFlags.VOID_PENDING:
            continue
        else:
            totals[t.debit_account][1] += t.amount
            totals[t.credit_account][3] += t.amount
    sums = [0, 0, 0, 0]
    for account in store.accounts():
        report.accounts += 1
        want = totals.pop(account.id, [0, 0, 0, 0])
        have = [
            account.debits_pending,
            account.debits_posted,
            account.credits_pending,
            account.credits_posted,
        ]
        for i in range(4):
            sums[i] += have[i]
        if have != want:
            problem(f"account {account.id}: stored {have} but transfers give {want}")
        if account.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and (
            have[0] + have[1] > have[3]
        ):
            problem(f"account {account.id} is overdrawn")
    for orphan in totals:
        problem(f"transfers name account {orphan}, which does not exist")
    if sums[0] != sums[2]:
        problem(f"pending debits {sums[0]} != pending credits {sums[2]}")
    if sums[1] != sums[3]:
        problem(f"posted debits {sums[1]} != posted credits {sums[3]}")
    prev = blocks.GENESIS
    expected_number = 1
    for row in store.blocks():
        report.block_count += 1
        if row.number != expected_number:
            problem(f"block {expected_number} is missing (found {row.number})")
            expected_number = row.number
        if row.prev_hash != prev:
            problem(f"block {row.number} does not chain to the block before it")
        transfers, accounts, expired = store.block_content(row)
        if len(transfers) != row.transfers:
            problem(
                f"block {row.number} holds {len(transfers)} transfers, header says {row.transfers}"
            )
        content = blocks.content_hash(transfers, accounts, expired)
        if blocks.block_hash(row.number, row.prev_hash, content, row.timestamp) != row.hash:
            problem(f"block {row.number} hash does not match its contents")
        prev = row.hash
        expected_number += 1
    report.head_hash = prev
    return report
