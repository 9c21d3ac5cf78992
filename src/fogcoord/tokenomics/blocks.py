"""Block hashing: each group commit is a block chained to the previous one by SHA-256.

The hash covers every transfer of the block (all fields, in commit order), every pending
transfer that expired in it, and every account created in it, so editing any stored row breaks
the chain from that block on. ``fogcoord ledger verify`` recomputes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from fogcoord.tokenomics.model import Account, Transfer

GENESIS = "0" * 64


def transfer_line(t: Transfer) -> str:
    # float(): a timeout or timestamp given as an int (``timeout=30``) is stored as a float,
    # and the verifier must rebuild the same text from the stored row.
    return (
        f"T|{t.id}|{t.debit_account}|{t.credit_account}|{t.amount}|{t.flags}|"
        f"{t.pending_id or ''}|{float(t.timeout)!r}|{t.memo}|{float(t.timestamp)!r}|{t.seq}"
    )


def account_line(a: Account) -> str:
    return f"A|{a.id}|{a.kind.value}|{a.owner}|{a.flags}|{a.reserve}|{a.funding or ''}"


def expiry_line(pending_id: str) -> str:
    return f"X|{pending_id}"


def content_hash(
    transfers: Iterable[Transfer], accounts: Iterable[Account], expired: Iterable[str]
) -> str:
    """Accounts and expiries in id order, transfers in commit (seq) order: a canonical form a
    verifier rebuilds from the stored rows."""
    h = hashlib.sha256()
    for a in sorted(accounts, key=lambda a: a.id):
        h.update(account_line(a).encode())
        h.update(b"\n")
    for t in transfers:
        h.update(transfer_line(t).encode())
        h.update(b"\n")
    for pid in sorted(expired):
        h.update(expiry_line(pid).encode())
        h.update(b"\n")
    return h.hexdigest()


def block_hash(number: int, prev_hash: str, content: str, timestamp: float) -> str:
    line = f"{number}|{prev_hash}|{content}|{float(timestamp)!r}"
    return hashlib.sha256(line.encode()).hexdigest()


def request_digest(*fields: object) -> str:
    """A fingerprint of a request body, kept for ids that failed."""
    return hashlib.sha256("|".join(repr(f) for f in fields).encode()).hexdigest()[:32]
