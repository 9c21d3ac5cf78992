"""Request and response bodies of the HTTP API, shared by the server and the Python client.

Kept free of FastAPI so the client (and anything else) can import them cheaply.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.auth.models import Principal, PrincipalKind, Scope
from fogcoord.contracts.harvesting import DeviceCapability, DeviceHealth, NetworkType
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.marketplace import AuctionView, ResourceSpec
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


class DeviceRegistration(BaseModel):
    """What an agent sends to register its device (the owner is the authenticated caller)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    cpu_cores: int = Field(ge=1, le=1024)
    gflops: float = Field(gt=0, le=1e6, description="measured GFLOP per second")
    ram_mb: int = Field(ge=1, le=16_777_216)
    storage_gb: float = Field(ge=0, le=1e6)
    battery_percent: float = Field(ge=0, le=100)
    charging: bool
    thermal_celsius: float = Field(ge=-40, le=150)
    network: NetworkType = NetworkType.UNKNOWN
    bandwidth_mbps: float = Field(0.0, ge=0, le=1e6)
    platform: str = Field("", max_length=64)
    region: str = Field("", max_length=64)
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="Ed25519 public key, hex")
    signature: str = Field(
        pattern=r"^[0-9a-f]{128}$",
        description="Ed25519 signature of 'fogcoord-register|<device_id>|<public_key>', hex",
    )


class DeviceRegistered(BaseModel):
    device: DeviceCapability
    device_key: str = Field(description="the device's own API key, shown once")
    health: DeviceHealth


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    battery_percent: float = Field(ge=0, le=100)
    charging: bool
    thermal_celsius: float = Field(ge=-40, le=150)


class DeviceView(BaseModel):
    device: DeviceCapability
    health: DeviceHealth


# --- marketplace -------------------------------------------------------------------------------


MIN_GFLOP = 1e-6
"""Less work than this prices one micro-token over a vanishing amount: a price per GFLOP beyond
any arithmetic the market does, so it is refused as input."""
MAX_PRICE = Decimal(1_000_000)
"""Tokens per GFLOP: far above any market price, and within the integer range prices are kept in."""


class QuoteRequest(ResourceSpec):
    """A resource spec whose misspelt fields are refused rather than silently priced as 0."""

    model_config = ConfigDict(extra="forbid")

    gflop: float = Field(ge=MIN_GFLOP, le=1e12, description="amount of verified work, GFLOP")


class AuctionCreate(BaseModel):
    """What a requester sends to open a reverse auction (the requester is the caller)."""

    model_config = ConfigDict(extra="forbid")

    slots: int = Field(ge=1, le=100_000, description="devices to buy")
    gflop: float = Field(ge=MIN_GFLOP, le=1e12, description="work to buy, GFLOP")
    # prices are whole micro-tokens: more than 6 decimals is refused, never rounded
    max_price_per_gflop: Decimal = Field(
        gt=0, le=MAX_PRICE, decimal_places=6, description="ceiling, tokens per GFLOP"
    )
    duration_minutes: float | None = Field(None, gt=0, le=10_080)
    allow_partial: bool = False
    job_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")
    wallet: str | None = Field(
        None, min_length=1, max_length=64, description="paying wallet (default: the caller's)"
    )
    quote_id: str | None = Field(
        None, min_length=1, max_length=128, description="an unexpired quote to price from"
    )
    storage_gb: float = Field(0.0, ge=0, le=1e6)
    network_bound: bool = False


class BidCreate(BaseModel):
    """An ask for one device: the caller is that device, its owner or an operator."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="device id")
    price_per_gflop: Decimal = Field(
        gt=0, le=MAX_PRICE, decimal_places=6, description="tokens per GFLOP"
    )


class BidPlaced(AuctionView):
    """The auction after an accepted ask (settled already when it was the (N+1)-th)."""

    accepted: bool = True
