"""Request and response bodies of the HTTP API, shared by the server and the Python client.

Kept free of FastAPI so the client (and anything else) can import them cheaply.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.auth.models import Principal, PrincipalKind, Scope
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.orchestration import ServiceEntry


class Liveness(BaseModel):
    status: str
    version: str


class Readiness(BaseModel):
    ready: bool
    services: dict[str, HealthStatus]


class ServicesView(BaseModel):
    orchestration: HealthStatus
    startup_seconds: float
    start_levels: list[list[str]]
    services: list[ServiceEntry]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: PrincipalKind | None = Field(
        None, description="create a new principal of this kind (with name)"
    )
    name: str | None = Field(None, min_length=1, max_length=200)
    principal_id: str | None = Field(None, description="or add a key to an existing principal")
    scopes: list[Scope] | None = Field(None, description="default: every scope of the kind")


class WhoAmI(BaseModel):
    principal: Principal
    key_id: str
    scopes: list[Scope]


class WalletCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wallet_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="default: the caller's principal id (its default wallet)",
    )
    funding_wallet: str | None = Field(
        None, description="a wallet of the same owner that tops this one up automatically"
    )


class TransferCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="chosen by the client; sending it again never pays twice",
    )
    from_wallet: str = Field(min_length=1, max_length=64)
    to_wallet: str = Field(min_length=1, max_length=64)
    amount: Decimal = Field(gt=0, max_digits=19, decimal_places=6, description="tokens")
    memo: str = Field("", max_length=200)


class LedgerHead(BaseModel):
    block: int
    hash: str
    accounts: int
    confirmation_blocks: int
