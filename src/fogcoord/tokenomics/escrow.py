"""Escrow: the one protocol by which a job's money is held, captured, paid out or returned.

Each job gets its own escrow account ``escrow:<job>`` that may never be debited beyond what was
credited to it, so payouts can never exceed what the job captured:

- ``hold``: a pending transfer requester -> ``escrow:<job>`` for the most the job can cost;
- ``capture(amount)``: post that pending transfer partially; the rest returns to the requester;
- ``payout``: one linked chain from ``escrow:<job>`` to the payees (all or nothing);
- ``refund``: escrow back to the requester; ``close`` refunds whatever is left;
- ``release``: void the hold (nothing was captured);
- ``pay``: caller-named legs from ``escrow:<job>`` as one linked chain, each leg posted at once or
  left pending; ``settle`` later posts or voids pending legs (a voided leg's money stays in escrow
  and goes back to the requester on ``close``).

Transfer ids are derived from the job and step, so every step is idempotent: a retry after a
crash or timeout returns ``exists`` instead of moving money twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from fogcoord.contracts.errors import Conflict, NotFound, ValidationFailed
from fogcoord.contracts.tokenomics import PayoutLeg
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.ledger import Ledger
from fogcoord.tokenomics.model import (
    Account,
    AccountFlags,
    AccountKind,
    PendingState,
    TransferFlags,
    TransferRequest,
    TransferResult,
)


class EscrowFailed(Conflict):
    code = "escrow_failed"

    def __init__(self, step: str, job_id: str, result_code: str) -> None:
        super().__init__(
            f"escrow {step} for job {job_id!r} failed: {result_code}",
            step=step,
            job_id=job_id,
            result=result_code,
        )
        self.result_code = result_code


def escrow_account(job_id: str) -> str:
    return f"escrow:{job_id}"


def hold_id(job_id: str) -> str:
    return f"hold:{job_id}"


def _check(step: str, job_id: str, results: Sequence[TransferResult]) -> list[TransferResult]:
    for r in results:
        if r.code not in (Code.OK, Code.EXISTS, Code.LINKED_EVENT_FAILED):
            raise EscrowFailed(step, job_id, r.code)
    if any(r.code == Code.LINKED_EVENT_FAILED for r in results):
        raise EscrowFailed(step, job_id, Code.LINKED_EVENT_FAILED)
    return list(results)


class Escrow:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _requester(self, job_id: str) -> str:
        info = self.ledger.pending(hold_id(job_id))
        if info is None:
            raise NotFound("escrow hold", job_id)
        return info.transfer.debit_account

    async def hold(
        self, job_id: str, requester_wallet: str, amount: int, *, timeout_s: float = 0.0
    ) -> TransferResult:
        if amount <= 0:
            raise ValidationFailed("amount", "a hold must be positive")
        wallet = self.ledger.account(requester_wallet)
        if wallet is None:
            raise NotFound("wallet", requester_wallet)
        code = await self.ledger.create_account(
            Account(
                escrow_account(job_id),
                AccountKind.ESCROW,
                wallet.owner,
                AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
            )
        )
        if code not in (Code.OK, Code.ACCOUNT_EXISTS):
            raise EscrowFailed("hold", job_id, code)
        (result,) = await self.ledger.transfer(
            TransferRequest(
                hold_id(job_id),
                requester_wallet,
                escrow_account(job_id),
                amount,
                TransferFlags.PENDING,
                timeout=timeout_s,
                memo=f"escrow hold for {job_id}",
            )
        )
        return _check("hold", job_id, [result])[0]

    async def capture(self, job_id: str, amount: int) -> TransferResult:
        """Post ``amount`` of the hold (0 < amount <= hold); the rest goes back at once."""
        if amount <= 0:
            raise ValidationFailed("amount", "a capture must be positive; release instead")
        (result,) = await self.ledger.transfer(
            TransferRequest(
                f"capture:{job_id}",
                amount=amount,
                flags=TransferFlags.POST_PENDING,
                pending_id=hold_id(job_id),
                memo=f"escrow capture for {job_id}",
            )
        )
        return _check("capture", job_id, [result])[0]

    async def release(self, job_id: str) -> TransferResult:
        (result,) = await self.ledger.transfer(
            TransferRequest(
                f"release:{job_id}",
                amount=None,
                flags=TransferFlags.VOID_PENDING,
                pending_id=hold_id(job_id),
                memo=f"escrow release for {job_id}",
            )
        )
        return _check("release", job_id, [result])[0]

    async def payout(
        self,
        job_id: str,
        batch_id: str,
        payees: Sequence[tuple[str, int]],
        *,
        memo: str = "",
    ) -> list[TransferResult]:
        """Pay ``payees`` from the job's escrow as one linked chain (all or nothing)."""
        legs = [
            PayoutLeg(
                transfer_id=f"pay:{job_id}:{batch_id}:{i}",
                to_wallet=wallet,
                amount_micro=amount,
                memo=memo or f"payout {batch_id} for {job_id}",
            )
            for i, (wallet, amount) in enumerate((w, a) for w, a in payees if a > 0)
        ]
        return await self.pay(job_id, legs, step="payout")

    async def pay(
        self, job_id: str, legs: Sequence[PayoutLeg], *, step: str = "pay"
    ) -> list[TransferResult]:
        """Pay ``legs`` from the job's escrow as one linked chain (all or nothing)."""
        live = [leg for leg in legs if leg.amount_micro > 0]
        if not live:
            return []
        account = escrow_account(job_id)
        last = len(live) - 1
        requests = [
            TransferRequest(
                leg.transfer_id,
                account,
                leg.to_wallet,
                leg.amount_micro,
                (TransferFlags.LINKED if i < last else TransferFlags.NONE)
                | (TransferFlags.PENDING if leg.pending else TransferFlags.NONE),
                memo=leg.memo or f"payout for {job_id}",
            )
            for i, leg in enumerate(live)
        ]
        return _check(step, job_id, await self.ledger.transfers(requests))

    async def settle(
        self, job_id: str, post: Sequence[str], void: Sequence[str]
    ) -> list[TransferResult]:
        """Post the pending legs ``post`` and void the legs ``void`` (retries are idempotent)."""
        requests = [
            TransferRequest(
                f"post:{pid}", amount=None, flags=TransferFlags.POST_PENDING, pending_id=pid
            )
            for pid in post
        ] + [
            TransferRequest(
                f"void:{pid}", amount=None, flags=TransferFlags.VOID_PENDING, pending_id=pid
            )
            for pid in void
        ]
        if not requests:
            return []
        results = await self.ledger.transfers(requests)
        for r in results:
            # a pending leg that was already posted or voided by an earlier attempt is settled
            if r.code not in (
                Code.OK,
                Code.EXISTS,
                Code.PENDING_TRANSFER_ALREADY_POSTED,
                Code.PENDING_TRANSFER_ALREADY_VOIDED,
            ):
                raise EscrowFailed("settle", job_id, r.code)
        return list(results)

    async def refund(self, job_id: str, refund_id: str, amount: int) -> TransferResult | None:
        if amount <= 0:
            return None
        (result,) = await self.ledger.transfer(
            TransferRequest(
                f"refund:{job_id}:{refund_id}",
                escrow_account(job_id),
                self._requester(job_id),
                amount,
                memo=f"escrow refund for {job_id}",
            )
        )
        return _check("refund", job_id, [result])[0]

    async def close(self, job_id: str) -> TransferResult | None:
        """Return everything still in the job's escrow to the requester; void an open hold."""
        info = self.ledger.pending(hold_id(job_id))
        if info is None:
            raise NotFound("escrow hold", job_id)
        if info.state is PendingState.PENDING:
            try:
                return await self.release(job_id)
            except EscrowFailed as exc:
                # The hold's time ran out before the release landed: the expiry already gave
                # the money back and nothing was captured, so there is nothing left to close.
                if exc.result_code != Code.PENDING_TRANSFER_EXPIRED:
                    raise
                return None
        account = self.ledger.account(escrow_account(job_id))
        left = account.balance if account is not None else 0
        return await self.refund(job_id, "close", left)

    def available(self, job_id: str) -> int:
        """What the escrow can still pay: posted balance less pending payouts."""
        account = self.ledger.account(escrow_account(job_id))
        if account is None:
            raise NotFound("escrow", job_id)
        return account.balance - account.debits_pending

    def balance(self, job_id: str) -> int:
        account = self.ledger.account(escrow_account(job_id))
        info = self.ledger.pending(hold_id(job_id))
        if account is None or info is None:
            raise NotFound("escrow", job_id)
        return account.balance + account.credits_pending
