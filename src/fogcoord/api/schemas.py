"""Request and response bodies of the HTTP API, shared by the server and the Python client.

Kept free of FastAPI so the client (and anything else) can import them cheaply.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.auth.models import Principal, PrincipalKind, Scope
from fogcoord.contracts.harvesting import DeviceCapability, DeviceHealth, NetworkType
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
