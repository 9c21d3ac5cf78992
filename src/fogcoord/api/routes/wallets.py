"""Wallets, transfers and escrow views. Only a wallet's owner moves money out of it."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from fogcoord.api.schemas import LedgerHead, TransferCreate, WalletCreate
from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import Conflict, Forbidden, NotFound
from fogcoord.contracts.tokenomics import (
    EscrowHold,
    Transaction,
    TransactionResult,
    TransactionStatus,
    WalletInfo,
)
from fogcoord.coordinator import Coordinator
from fogcoord.tokenomics.service import FogTokenomicsService, as_transaction

router = APIRouter(prefix="/v1", tags=["wallets"])
PRINCIPAL_ID = re.compile(r"^(ope|req|dev)_[0-9a-f]{16}$")


class PaymentFailed(Conflict):
    """A transfer the ledger refused; ``result`` is its stable ledger code."""

    code = "transfer_failed"


def _owned(
    tok: FogTokenomicsService, wallet_id: str, who: Identity, *, operator_may: bool = True
) -> None:
    """The caller owns the wallet (or, to read it, holds ``admin``)."""
    owner = tok.wallet_owner(wallet_id)
    if owner is None:
        raise NotFound("wallet", wallet_id)
    if owner != who.principal.principal_id and not (operator_may and who.allows(Scope.ADMIN)):
        raise Forbidden(f"wallet {wallet_id!r} belongs to another principal", wallet=wallet_id)


@router.post("/wallets", response_model=WalletInfo, status_code=201, summary="Create a wallet")
async def create_wallet(
    body: WalletCreate,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_WRITE)),
) -> WalletInfo:
    owner = who.principal.principal_id
    wallet_id = body.wallet_id or owner
    existing = coord.tokenomics.wallet_owner(wallet_id)
    if existing is not None and existing != owner:
        raise Conflict(f"wallet id {wallet_id!r} is taken", wallet=wallet_id)
    if wallet_id != owner and PRINCIPAL_ID.match(wallet_id):
        # a principal id names that principal's default wallet: nobody else may take it
        raise Forbidden("a wallet id shaped like a principal id is reserved for that principal")
    return await coord.tokenomics.initialize_wallet(
        wallet_id, owner=owner, funding_wallet=body.funding_wallet
    )


@router.get("/wallets", response_model=list[WalletInfo], summary="The caller's wallets")
async def my_wallets(
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_READ)),
) -> list[WalletInfo]:
    tok = coord.tokenomics
    return [tok.wallet_info(w) for w in tok.wallets_of(who.principal.principal_id)]


@router.get("/wallets/{wallet_id}", response_model=WalletInfo, summary="Balance of a wallet")
async def wallet(
    wallet_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_READ)),
) -> WalletInfo:
    _owned(coord.tokenomics, wallet_id, who)
    return coord.tokenomics.wallet_info(wallet_id)


@router.get(
    "/wallets/{wallet_id}/history",
    response_model=list[Transaction],
    summary="Transfers of a wallet, newest first (page with ?before=<last id>)",
)
async def history(
    wallet_id: str,
    limit: int = Query(50, ge=1, le=1000),
    before: str | None = Query(None, max_length=96),
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_READ)),
) -> list[Transaction]:
    _owned(coord.tokenomics, wallet_id, who)
    return await coord.tokenomics.get_transaction_history(wallet_id, limit=limit, before=before)


@router.get(
    "/wallets/{wallet_id}/holds",
    response_model=list[EscrowHold],
    summary="Escrow holds made from this wallet (read-only: services make and resolve them)",
)
async def holds(
    wallet_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_READ)),
) -> list[EscrowHold]:
    _owned(coord.tokenomics, wallet_id, who)
    return await coord.tokenomics.holds(wallet_id)


@router.post(
    "/transfers",
    response_model=TransactionResult,
    status_code=201,
    summary="Pay from one of the caller's wallets (idempotent by transaction_id)",
    responses={200: {"model": TransactionResult, "description": "already done (same body)"}},
)
async def transfer(
    body: TransferCreate,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_WRITE)),
) -> JSONResponse:
    tok = coord.tokenomics
    _owned(tok, body.from_wallet, who, operator_may=False)  # only the owner moves money out
    result = await tok.process_payment(
        Transaction(
            transaction_id=body.transaction_id,
            from_wallet=body.from_wallet,
            to_wallet=body.to_wallet,
            amount=body.amount,
            memo=body.memo,
        )
    )
    if result.status is TransactionStatus.FAILED:
        raise PaymentFailed(
            f"transfer {body.transaction_id!r} refused: {result.code}",
            result=result.code,
            transaction_id=body.transaction_id,
        )
    status = 200 if result.status is TransactionStatus.EXISTS else 201
    return JSONResponse(result.model_dump(mode="json"), status_code=status)


@router.get("/transfers/{transaction_id}", response_model=Transaction, summary="One transfer")
async def get_transfer(
    transaction_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_READ)),
) -> Transaction:
    tok = coord.tokenomics
    found = await tok.ledger.lookup(transaction_id)
    if found is None:
        raise NotFound("transfer", transaction_id)
    mine = who.principal.principal_id in (
        tok.wallet_owner(found.debit_account),
        tok.wallet_owner(found.credit_account),
    )
    if not mine and not who.allows(Scope.ADMIN):
        raise NotFound("transfer", transaction_id)
    return as_transaction(found)


@router.get("/ledger", response_model=LedgerHead, summary="The ledger's head block")
async def ledger_head(
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.WALLETS_READ)),
) -> LedgerHead:
    ledger = coord.tokenomics.ledger
    number, block_hash = ledger.head
    return LedgerHead(
        block=number,
        hash=block_hash,
        accounts=len(ledger.state.accounts),
        confirmation_blocks=coord.config.tokenomics.transaction_processing.confirmation_blocks,
    )
