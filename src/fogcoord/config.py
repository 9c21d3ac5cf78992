"""Configuration: the seed's six YAML blocks plus ``server``, ``storage`` and ``bus``.

Defaults equal the seed's values. Keys the seed lacks are extension keys, each documented in
``docs/configuration.md`` with its default and reason. Precedence, lowest first: defaults, the
YAML file (``--config FILE`` or ``FOGCOORD_CONFIG``), then ``FOGCOORD__SECTION__KEY`` environment
variables (nested keys joined by ``__``; values parsed as YAML scalars). Unknown keys and bad
values are rejected with the dotted key path and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fogcoord.contracts.errors import ConfigError

ENV_PREFIX = "FOGCOORD__"
CONFIG_ENV = "FOGCOORD_CONFIG"


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --- orchestration ----------------------------------------------------------------------------


class ServiceDiscoveryConfig(_Block):
    timeout_seconds: float = Field(30, gt=0, description="timeout of one proxied service call")
    retry_attempts: int = Field(3, ge=0, description="discovery retries for a service not yet up")


class HealthChecksConfig(_Block):
    interval_seconds: float = Field(60, gt=0)
    circuit_breaker_threshold: int = Field(5, ge=1)
    check_timeout_seconds: float = Field(5.0, gt=0, description="extension: one health check")
    breaker_reset_seconds: float = Field(30.0, gt=0, description="extension: open -> half-open")
    half_open_max_calls: int = Field(1, ge=1, description="extension: trial calls when half-open")


class MessagingConfig(_Block):
    max_queue_size: int = Field(1000, ge=1)
    retry_backoff_ms: float = Field(500, ge=0)
    max_delivery_attempts: int = Field(3, ge=1, description="extension: before dead-lettering")
    encoding: Literal["json", "msgpack"] = Field("json", description="extension: NATS encoding")


class OrchestrationConfig(_Block):
    service_discovery: ServiceDiscoveryConfig = ServiceDiscoveryConfig()
    health_checks: HealthChecksConfig = HealthChecksConfig()
    messaging: MessagingConfig = MessagingConfig()
    shutdown_grace_seconds: float = Field(1.5, ge=0, description="extension: drain bound")


# --- harvesting -------------------------------------------------------------------------------


class DeviceDiscoveryConfig(_Block):
    scan_interval_seconds: float = Field(120, gt=0)
    capability_cache_ttl: float = Field(300, gt=0)
    state_flush_seconds: float = Field(
        5.0, gt=0, description="extension: how often heartbeat state is written to the store"
    )


class ParticipantSelectionConfig(_Block):
    min_trust_score: float = Field(0.6, ge=0, le=1)
    min_battery_percent: float = Field(50, ge=0, le=100)
    min_ram_mb: int = Field(2048, ge=0)
    battery_resume_margin_percent: float = Field(
        5, ge=0, le=50, description="extension: battery hysteresis above min_battery_percent"
    )
    max_thermal_celsius: float = Field(
        45, gt=0, le=120, description="extension: a device at or above this is throttled"
    )
    thermal_resume_celsius: float = Field(
        40, gt=0, le=120, description="extension: a throttled device resumes at or below this"
    )


class TrustConfig(_Block):
    initial_trust: float = Field(
        0.65, ge=0, le=1, description="extension: trust of a new device (selectable by default)"
    )
    agreement_gain: float = Field(
        0.05, gt=0, le=1, description="extension: share of the gap to 1 gained per valid result"
    )
    disagreement_factor: float = Field(
        0.5, ge=0, lt=1, description="extension: trust is multiplied by this per invalid result"
    )
    reliability_decay: float = Field(
        0.98, gt=0, lt=1, description="extension: weight of older results in reliability"
    )


class ResourceAllocationConfig(_Block):
    burst_timeout_minutes: float = Field(30, gt=0)
    max_concurrent_bursts: int = Field(10, ge=1)


class HarvestingConfig(_Block):
    device_discovery: DeviceDiscoveryConfig = DeviceDiscoveryConfig()
    participant_selection: ParticipantSelectionConfig = ParticipantSelectionConfig()
    resource_allocation: ResourceAllocationConfig = ResourceAllocationConfig()
    trust: TrustConfig = TrustConfig()


# --- marketplace ------------------------------------------------------------------------------


class PricingConfig(_Block):
    base_compute_rate_per_gflop: float = Field(0.001, gt=0)
    network_multiplier: float = Field(1.2, ge=1)
    storage_rate_per_gb: float = Field(0.0001, ge=0)
    # extension keys (see docs/configuration.md)
    quote_ttl_seconds: float = Field(60.0, gt=0, le=86_400)
    demand_elasticity: float = Field(0.5, ge=0, le=4)
    min_market_factor: float = Field(0.5, gt=0, le=1)
    max_market_factor: float = Field(2.0, ge=1, le=100)


class AuctionsConfig(_Block):
    auction_duration_minutes: float = Field(10, gt=0)
    min_bid_increment: float = Field(0.01, gt=0)
    reserve_price_ratio: float = Field(0.7, ge=0, le=1)


class RevenueSharingConfig(_Block):
    platform_fee_percent: float = Field(5, ge=0, le=100)
    provider_share_percent: float = Field(85, ge=0, le=100)
    validator_share_percent: float = Field(10, ge=0, le=100)

    @field_validator("validator_share_percent")
    @classmethod
    def _shares_sum_to_100(cls, v: float, info: Any) -> float:
        total = (
            v
            + info.data.get("platform_fee_percent", 0)
            + info.data.get("provider_share_percent", 0)
        )
        if abs(total - 100) > 1e-9:
            raise ValueError(f"platform + provider + validator shares must be 100, not {total}")
        return v


class MarketplaceConfig(_Block):
    pricing: PricingConfig = PricingConfig()
    auctions: AuctionsConfig = AuctionsConfig()
    revenue_sharing: RevenueSharingConfig = RevenueSharingConfig()


# --- privacy ----------------------------------------------------------------------------------


class DifferentialPrivacyConfig(_Block):
    default_epsilon: float = Field(1.0, gt=0)
    default_delta: float = Field(1e-5, gt=0, lt=1)
    budget_per_participant: float = Field(10.0, gt=0)


class SecureAggregationConfig(_Block):
    threshold_participants: int = Field(3, ge=2)
    byzantine_tolerance: float = Field(0.33, ge=0, lt=0.5)


class HiddenServicesConfig(_Block):
    max_services_per_node: int = Field(5, ge=1)
    replication_factor: int = Field(3, ge=1)
    access_fee_tokens: float = Field(0.001, ge=0)


class PrivacyConfig(_Block):
    differential_privacy: DifferentialPrivacyConfig = DifferentialPrivacyConfig()
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
    hidden_services: HiddenServicesConfig = HiddenServicesConfig()


# --- tokenomics -------------------------------------------------------------------------------


class ComputeMiningConfig(_Block):
    base_reward_per_gflop_hour: float = Field(0.1, ge=0)
    quality_bonus_multiplier: float = Field(1.5, ge=1)
    reliability_threshold: float = Field(0.9, ge=0, le=1)


class TransactionProcessingConfig(_Block):
    confirmation_blocks: int = Field(3, ge=0)
    gas_price_gwei: float = Field(20, ge=0)
    max_retry_attempts: int = Field(5, ge=0)


class WalletManagementConfig(_Block):
    default_balance: float = Field(10.0, ge=0, le=1e12)
    minimum_balance: float = Field(0.01, ge=0, le=1e12)
    auto_topup_threshold: float = Field(1.0, ge=0, le=1e12)

    @field_validator("default_balance", "minimum_balance", "auto_topup_threshold")
    @classmethod
    def _whole_micro_tokens(cls, v: float) -> float:
        if round(v * 1_000_000) != round(v * 1_000_000, 6):
            raise ValueError("at most 6 decimal places (1 micro-token)")
        return v


class TokenomicsConfig(_Block):
    compute_mining: ComputeMiningConfig = ComputeMiningConfig()
    transaction_processing: TransactionProcessingConfig = TransactionProcessingConfig()
    wallet_management: WalletManagementConfig = WalletManagementConfig()


# --- system stats -----------------------------------------------------------------------------


class MetricsCollectionConfig(_Block):
    interval_seconds: float = Field(30, gt=0)
    batch_size: int = Field(100, ge=1)
    retention_days: float = Field(30, gt=0)


class PerformanceMonitoringConfig(_Block):
    cpu_threshold_percent: float = Field(80, gt=0, le=100)
    memory_threshold_percent: float = Field(85, gt=0, le=100)
    latency_threshold_ms: float = Field(1000, gt=0)


class AlertingConfig(_Block):
    email_notifications: bool = True
    slack_webhook_url: str | None = Field(
        None, description="Slack-compatible webhook; the seed's placeholder means not configured"
    )
    alert_cooldown_minutes: float = Field(15, ge=0)
    smtp_host: str = Field("127.0.0.1", min_length=1, description="extension: SMTP relay host")
    smtp_port: int = Field(25, ge=1, le=65535, description="extension: SMTP relay port")
    email_from: str = Field(
        "fogcoord@localhost", pattern=r"^[^@\s]+@[^@\s]+$", description="extension: sender"
    )
    email_to: list[str] = Field(
        default_factory=list,
        description="extension: recipients; email is sent only when this is non-empty",
    )
    webhook_retries: int = Field(
        3, ge=0, le=10, description="extension: webhook retries after the first attempt"
    )
    webhook_timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="extension: one webhook request"
    )
    group_wait_seconds: float = Field(
        0.0, ge=0, description="extension: a group's new alerts wait this before notifying"
    )

    @field_validator("email_to", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        # An environment variable carries one string: "a@x, b@y" means two recipients.
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("email_to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            if address.count("@") != 1 or any(c.isspace() for c in address):
                raise ValueError(f"{address!r} is not an email address")
        return v

    @field_validator("slack_webhook_url", mode="before")
    @classmethod
    def _placeholder_is_unset(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("must be a URL string")
        text = v.strip()
        if not text or "..." in text:
            return None
        if not text.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return text


class SystemStatsConfig(_Block):
    metrics_collection: MetricsCollectionConfig = MetricsCollectionConfig()
    performance_monitoring: PerformanceMonitoringConfig = PerformanceMonitoringConfig()
    alerting: AlertingConfig = AlertingConfig()


# --- compute jobs (extension block) -----------------------------------------------------------


class JobsConfig(_Block):
    """Verification, replication, dispatch and payment of compute jobs (all extension keys)."""

    min_quorum: int = Field(2, ge=1, le=16, description="agreeing replicas that accept a result")
    max_replicas: int = Field(5, ge=1, le=32, description="replicas tried before a task fails")
    task_timeout_seconds: float = Field(30.0, gt=0, description="a replica not back is reassigned")
    max_in_flight_per_device: int = Field(2, ge=1, le=64)
    trusted_streak: int = Field(
        10, ge=1, description="valid results in a row after which a device runs tasks alone"
    )
    audit_min_probability: float = Field(
        0.05, ge=0, le=1, description="floor of the chance a lone result is re-executed"
    )
    audit_on_coordinator: bool = Field(
        True, description="audits re-execute on the coordinator when no other device is free"
    )
    settle_batch_size: int = Field(100, ge=1, description="verified tasks paid per batch")
    settle_interval_seconds: float = Field(1.0, gt=0, description="a partial batch waits this")
    payout_holding_seconds: float = Field(
        3_600.0, ge=0, description="pending payouts of a long job are posted after this"
    )
    auction_minutes: float = Field(1.0, gt=0, description="longest a job's auction stays open")
    max_tasks: int = Field(100_000, ge=1)
    max_module_bytes: int = Field(16 << 20, ge=1)
    max_input_bytes: int = Field(16 << 20, ge=1)


# --- deployment -------------------------------------------------------------------------------


class ServerConfig(_Block):
    host: str = "127.0.0.1"
    port: int = Field(8400, ge=0, le=65535)
    data_dir: Path = Field(Path("fogcoord-data"), description="SQLite files, keys, outputs")
    operator_key: str | None = Field(
        None,
        pattern=r"^fc_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$",
        description="extension: the first operator API key, if given (fc_<16 hex>_<43 chars>)",
    )


class StorageConfig(_Block):
    url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under data_dir")

    @field_validator("url")
    @classmethod
    def _known_backend(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return v


class BusConfig(_Block):
    url: str = Field("inprocess", description="'inprocess' or a nats:// URL")
    subject_prefix: str = Field("fog", pattern=r"^[A-Za-z0-9_-]+$")

    @field_validator("url")
    @classmethod
    def _known_bus(cls, v: str) -> str:
        if v != "inprocess" and not v.startswith(("nats://", "tls://")):
            raise ValueError("must be 'inprocess' or a nats:// URL")
        return v


class FogConfig(_Block):
    orchestration: OrchestrationConfig = OrchestrationConfig()
    harvesting: HarvestingConfig = HarvestingConfig()
    marketplace: MarketplaceConfig = MarketplaceConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    tokenomics: TokenomicsConfig = TokenomicsConfig()
    system_stats: SystemStatsConfig = SystemStatsConfig()
    jobs: JobsConfig = JobsConfig()
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    bus: BusConfig = BusConfig()

    def database_url(self) -> str:
        if self.storage.url:
            return self.storage.url
        return f"sqlite:///{(self.server.data_dir / 'fogcoord.db').resolve()}"

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([(".".join(path), f"conflicting environment variable {name}")])
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            node[path[-1]] = raw
    return tree


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        out.append((key, reason))
    return out


def parse_config(data: Mapping[str, Any] | None) -> FogConfig:
    """Validate a configuration mapping; raises :class:`ConfigError` listing every problem."""
    try:
        return FogConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(_errors(exc)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("<file>", f"{path} is not valid YAML: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("<root>", f"{path} must hold a mapping of sections")])
    return data


def load_config(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> FogConfig:
    """Defaults, then the file (argument or ``FOGCOORD_CONFIG``), then environment overrides."""
    env = os.environ if environ is None else environ
    file = path if path is not None else env.get(CONFIG_ENV)
    data: dict[str, Any] = read_yaml(Path(file)) if file else {}
    return parse_config(_merge(data, _env_overrides(env)))
