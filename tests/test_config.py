"""Configuration: seed defaults, the seed's YAML, validation with paths, env overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from fogcoord.config import (
    CONFIG_ENV,
    AlertingConfig,
    FogConfig,
    HealthChecksConfig,
    OrchestrationConfig,
    ServerConfig,
    StorageConfig,
    load_config,
    parse_config,
)
from fogcoord.contracts.errors import ConfigError

# The six YAML blocks of the seed design document, verbatim.
SEED_YAML = """\
orchestration:
  service_discovery:
    timeout_seconds: 30
    retry_attempts: 3
  health_checks:
    interval_seconds: 60
    circuit_breaker_threshold: 5
  messaging:
    max_queue_size: 1000
    retry_backoff_ms: 500
harvesting:
  device_discovery:
    scan_interval_seconds: 120
    capability_cache_ttl: 300
  participant_selection:
    min_trust_score: 0.6
    min_battery_percent: 50
    min_ram_mb: 2048
  resource_allocation:
    burst_timeout_minutes: 30
    max_concurrent_bursts: 10
marketplace:
  pricing:
    base_compute_rate_per_gflop: 0.001
    network_multiplier: 1.2
    storage_rate_per_gb: 0.0001
  auctions:
    auction_duration_minutes: 10
    min_bid_increment: 0.01
    reserve_price_ratio: 0.7
  revenue_sharing:
    platform_fee_percent: 5
    provider_share_percent: 85
    validator_share_percent: 10
privacy:
  differential_privacy:
    default_epsilon: 1.0
    default_delta: 1e-5
    budget_per_participant: 10.0
  secure_aggregation:
    threshold_participants: 3
    byzantine_tolerance: 0.33
  hidden_services:
    max_services_per_node: 5
    replication_factor: 3
    access_fee_tokens: 0.001
tokenomics:
  compute_mining:
    base_reward_per_gflop_hour: 0.1
    quality_bonus_multiplier: 1.5
    reliability_threshold: 0.9
  transaction_processing:
    confirmation_blocks: 3
    gas_price_gwei: 20
    max_retry_attempts: 5
  wallet_management:
    default_balance: 10.0
    minimum_balance: 0.01
    auto_topup_threshold: 1.0
system_stats:
  metrics_collection:
    interval_seconds: 30
    batch_size: 100
    retention_days: 30
  performance_monitoring:
    cpu_threshold_percent: 80
    memory_threshold_percent: 85
    latency_threshold_ms: 1000
  alerting:
    email_notifications: true
    slack_webhook_url: "https://..."
    alert_cooldown_minutes: 15
"""

SEED_VALUES: list[tuple[str, object]] = [
    ("orchestration.service_discovery.timeout_seconds", 30),
    ("orchestration.service_discovery.retry_attempts", 3),
    ("orchestration.health_checks.interval_seconds", 60),
    ("orchestration.health_checks.circuit_breaker_threshold", 5),
    ("orchestration.messaging.max_queue_size", 1000),
    ("orchestration.messaging.retry_backoff_ms", 500),
    ("harvesting.device_discovery.scan_interval_seconds", 120),
    ("harvesting.device_discovery.capability_cache_ttl", 300),
    ("harvesting.participant_selection.min_trust_score", 0.6),
    ("harvesting.participant_selection.min_battery_percent", 50),
    ("harvesting.participant_selection.min_ram_mb", 2048),
    ("harvesting.resource_allocation.burst_timeout_minutes", 30),
    ("harvesting.resource_allocation.max_concurrent_bursts", 10),
    ("marketplace.pricing.base_compute_rate_per_gflop", 0.001),
    ("marketplace.pricing.network_multiplier", 1.2),
    ("marketplace.pricing.storage_rate_per_gb", 0.0001),
    ("marketplace.auctions.auction_duration_minutes", 10),
    ("marketplace.auctions.min_bid_increment", 0.01),
    ("marketplace.auctions.reserve_price_ratio", 0.7),
    ("marketplace.revenue_sharing.platform_fee_percent", 5),
    ("marketplace.revenue_sharing.provider_share_percent", 85),
    ("marketplace.revenue_sharing.validator_share_percent", 10),
    ("privacy.differential_privacy.default_epsilon", 1.0),
    ("privacy.differential_privacy.default_delta", 1e-5),
    ("privacy.differential_privacy.budget_per_participant", 10.0),
    ("privacy.secure_aggregation.threshold_participants", 3),
    ("privacy.secure_aggregation.byzantine_tolerance", 0.33),
    ("privacy.hidden_services.max_services_per_node", 5),
    ("privacy.hidden_services.replication_factor", 3),
    ("privacy.hidden_services.access_fee_tokens", 0.001),
    ("tokenomics.compute_mining.base_reward_per_gflop_hour", 0.1),
    ("tokenomics.compute_mining.quality_bonus_multiplier", 1.5),
    ("tokenomics.compute_mining.reliability_threshold", 0.9),
    ("tokenomics.transaction_processing.confirmation_blocks", 3),
    ("tokenomics.transaction_processing.gas_price_gwei", 20),
    ("tokenomics.transaction_processing.max_retry_attempts", 5),
    ("tokenomics.wallet_management.default_balance", 10.0),
    ("tokenomics.wallet_management.minimum_balance", 0.01),
    ("tokenomics.wallet_management.auto_topup_threshold", 1.0),
    ("system_stats.metrics_collection.interval_seconds", 30),
    ("system_stats.metrics_collection.batch_size", 100),
    ("system_stats.metrics_collection.retention_days", 30),
    ("system_stats.performance_monitoring.cpu_threshold_percent", 80),
    ("system_stats.performance_monitoring.memory_threshold_percent", 85),
    ("system_stats.performance_monitoring.latency_threshold_ms", 1000),
    ("system_stats.alerting.email_notifications", True),
    ("system_stats.alerting.slack_webhook_url", None),
    ("system_stats.alerting.alert_cooldown_minutes", 15),
]


def lookup(config: FogConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def write(tmp_path: Path, text: str, name: str = "fog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("FOGCOORD"):
            monkeypatch.delenv(name)
    return monkeypatch


# --- defaults ---------------------------------------------------------------------------------


def test_seed_table_covers_every_seed_key() -> None:
    seed = yaml.safe_load(SEED_YAML)
    keys = [
        f"{section}.{block}.{key}"
        for section, blocks in seed.items()
        for block, values in blocks.items()
        for key in values
    ]
    assert sorted(keys) == sorted(path for path, _ in SEED_VALUES)


@pytest.mark.parametrize(("path", "expected"), SEED_VALUES)
def test_defaults_equal_seed_values(path: str, expected: object) -> None:
    value = lookup(FogConfig(), path)
    if isinstance(expected, bool) or expected is None:
        assert value is expected
    else:
        assert value == pytest.approx(expected)


def test_default_delta_is_a_float() -> None:
    delta = FogConfig().privacy.differential_privacy.default_delta
    assert isinstance(delta, float)
    assert delta == 1e-5


def test_defaults_for_extension_blocks() -> None:
    config = FogConfig()
    assert config.bus.url == "inprocess"
    assert config.storage.url is None
    assert config.server.port == 8400
    assert config.orchestration.health_checks.half_open_max_calls == 1


def test_blocks_are_frozen() -> None:
    config = OrchestrationConfig(health_checks=HealthChecksConfig(circuit_breaker_threshold=3))
    assert config.health_checks.circuit_breaker_threshold == 3
    with pytest.raises(ValueError, match="frozen"):
        config.health_checks.circuit_breaker_threshold = 4  # type: ignore[misc]


# --- the seed's YAML --------------------------------------------------------------------------


def test_seed_yaml_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SEED_YAML), environ={})
    delta = config.privacy.differential_privacy.default_delta
    assert isinstance(delta, float)
    assert delta == 1e-5
    assert config.system_stats.alerting.slack_webhook_url is None
    for path, expected in SEED_VALUES:
        value = lookup(config, path)
        if isinstance(expected, bool) or expected is None:
            assert value is expected, path
        else:
            assert value == pytest.approx(expected), path
    assert config == FogConfig()


def test_seed_yaml_loads_from_str_path(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, SEED_YAML)), environ={}) == FogConfig()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), environ={}) == FogConfig()


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    text = "harvesting:\n  participant_selection:\n    min_trust_score: 0.8\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.harvesting.participant_selection.min_trust_score == 0.8
    assert config.harvesting.participant_selection.min_ram_mb == 2048
    assert config.orchestration == OrchestrationConfig()


@pytest.mark.parametrize("url", ["https://hooks.slack.com/services/T/B/X", "http://chat.local/h"])
def test_real_slack_url_is_kept(url: str) -> None:
    assert AlertingConfig(slack_webhook_url=url).slack_webhook_url == url


@pytest.mark.parametrize("url", ["https://...", "", "   ", None])
def test_placeholder_slack_url_means_unset(url: str | None) -> None:
    assert AlertingConfig(slack_webhook_url=url).slack_webhook_url is None


# --- rejected input ---------------------------------------------------------------------------


def test_unknown_key_rejected_with_dotted_path() -> None:
    errors = errors_of({"harvesting": {"participant_selection": {"min_trust": 0.5}}})
    assert ("harvesting.participant_selection.min_trust", "unknown key") in errors


def test_unknown_section_rejected() -> None:
    assert ("harvestng", "unknown key") in errors_of({"harvestng": {}})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "orchestration:\n  messaging:\n    max_queue: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.errors == [("orchestration.messaging.max_queue", "unknown key")]
    assert "orchestration.messaging.max_queue: unknown key" in info.value.message
    assert info.value.fields["errors"] == [["orchestration.messaging.max_queue", "unknown key"]]


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        (
            {"orchestration": {"health_checks": {"interval_seconds": -1}}},
            "orchestration.health_checks.interval_seconds",
            "greater than 0",
        ),
        (
            {"harvesting": {"participant_selection": {"min_trust_score": 1.5}}},
            "harvesting.participant_selection.min_trust_score",
            "less than or equal to 1",
        ),
        (
            {"marketplace": {"revenue_sharing": {"platform_fee_percent": 10}}},
            "marketplace.revenue_sharing.validator_share_percent",
            "must be 100",
        ),
        (
            {
                "marketplace": {
                    "revenue_sharing": {
                        "platform_fee_percent": 5,
                        "provider_share_percent": 80,
                        "validator_share_percent": 10,
                    }
                }
            },
            "marketplace.revenue_sharing.validator_share_percent",
            "must be 100",
        ),
        ({"storage": {"url": "mysql://x"}}, "storage.url", "sqlite:// or postgresql://"),
        ({"bus": {"url": "redis://x"}}, "bus.url", "nats://"),
        (
            {"system_stats": {"alerting": {"slack_webhook_url": "ftp://x"}}},
            "system_stats.alerting.slack_webhook_url",
            "http:// or https://",
        ),
        (
            {"orchestration": {"service_discovery": {"retry_attempts": "many"}}},
            "orchestration.service_discovery.retry_attempts",
            "integer",
        ),
        (
            {"orchestration": {"messaging": {"encoding": "xml"}}},
            "orchestration.messaging.encoding",
            "json",
        ),
    ],
)
def test_bad_values_rejected_with_path_and_reason(
    data: dict[str, Any], path: str, reason: str
) -> None:
    errors = errors_of(data)
    assert [key for key, _ in errors] == [path]
    assert reason in errors[0][1]


def test_revenue_shares_summing_to_100_accepted() -> None:
    config = parse_config(
        {
            "marketplace": {
                "revenue_sharing": {
                    "platform_fee_percent": 10,
                    "provider_share_percent": 80,
                    "validator_share_percent": 10,
                }
            }
        }
    )
    assert config.marketplace.revenue_sharing.platform_fee_percent == 10


def test_every_problem_is_listed() -> None:
    errors = errors_of(
        {
            "orchestration": {"health_checks": {"interval_seconds": 0}},
            "bus": {"url": "redis://x"},
            "privacy": {"nope": 1},
        }
    )
    keys = {key for key, _ in errors}
    assert keys == {"orchestration.health_checks.interval_seconds", "bus.url", "privacy.nope"}


@pytest.mark.parametrize("url", ["sqlite:///tmp/x.db", "postgresql+psycopg://u@h/db"])
def test_known_storage_backends_accepted(url: str) -> None:
    assert StorageConfig(url=url).url == url


@pytest.mark.parametrize("url", ["inprocess", "nats://127.0.0.1:4222", "tls://nats.example:4222"])
def test_known_bus_urls_accepted(url: str) -> None:
    assert parse_config({"bus": {"url": url}}).bus.url == url


# --- files ------------------------------------------------------------------------------------


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml", environ={})
    assert info.value.errors[0][0] == "<file>"
    assert "absent.yaml" in info.value.errors[0][1]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_is_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.errors[0][0] == "<root>"
    assert "mapping" in info.value.errors[0][1]


def test_invalid_yaml_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "orchestration: [unclosed\n"), environ={})
    assert info.value.errors[0][0] == "<file>"
    assert "not valid YAML" in info.value.errors[0][1]


# --- environment ------------------------------------------------------------------------------


def test_env_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_YAML)
    config = load_config(
        path,
        environ={
            "FOGCOORD__ORCHESTRATION__HEALTH_CHECKS__INTERVAL_SECONDS": "15",
            "FOGCOORD__HARVESTING__PARTICIPANT_SELECTION__MIN_TRUST_SCORE": "0.75",
            "FOGCOORD__SYSTEM_STATS__ALERTING__EMAIL_NOTIFICATIONS": "false",
            "FOGCOORD__BUS__URL": "nats://127.0.0.1:4222",
            "FOGCOORD__SERVER__PORT": "9000",
            "UNRELATED": "ignored",
        },
    )
    assert config.orchestration.health_checks.interval_seconds == 15
    assert config.harvesting.participant_selection.min_trust_score == 0.75
    assert config.system_stats.alerting.email_notifications is False
    assert config.bus.url == "nats://127.0.0.1:4222"
    assert config.server.port == 9000
    # Keys the environment did not touch keep the file's values.
    assert config.orchestration.health_checks.circuit_breaker_threshold == 5
    assert config.orchestration.service_discovery == FogConfig().orchestration.service_discovery


def test_env_values_are_parsed_as_yaml_scalars() -> None:
    config = load_config(
        environ={
            "FOGCOORD__ORCHESTRATION__MESSAGING__MAX_QUEUE_SIZE": "250",
            "FOGCOORD__PRIVACY__DIFFERENTIAL_PRIVACY__DEFAULT_EPSILON": "0.5",
            "FOGCOORD__SYSTEM_STATS__ALERTING__SLACK_WEBHOOK_URL": "",
        }
    )
    assert config.orchestration.messaging.max_queue_size == 250
    assert config.privacy.differential_privacy.default_epsilon == 0.5
    assert config.system_stats.alerting.slack_webhook_url is None


def test_env_override_with_unknown_key_names_the_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"FOGCOORD__HARVESTING__PARTICIPANT_SELECTION__MIN_TRUST": "0.5"})
    assert info.value.errors == [("harvesting.participant_selection.min_trust", "unknown key")]


def test_env_override_with_bad_value_names_the_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"FOGCOORD__ORCHESTRATION__HEALTH_CHECKS__INTERVAL_SECONDS": "-5"})
    assert info.value.errors[0][0] == "orchestration.health_checks.interval_seconds"


def test_config_env_is_used_when_no_path_given(tmp_path: Path) -> None:
    path = write(tmp_path, "orchestration:\n  service_discovery:\n    retry_attempts: 7\n")
    config = load_config(environ={CONFIG_ENV: str(path)})
    assert config.orchestration.service_discovery.retry_attempts == 7


def test_explicit_path_beats_config_env(tmp_path: Path) -> None:
    env_file = write(tmp_path, "orchestration:\n  service_discovery:\n    retry_attempts: 7\n")
    arg_file = write(
        tmp_path, "orchestration:\n  service_discovery:\n    retry_attempts: 1\n", "arg.yaml"
    )
    config = load_config(arg_file, environ={CONFIG_ENV: str(env_file)})
    assert config.orchestration.service_discovery.retry_attempts == 1


def test_process_environment_is_read_by_default(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "harvesting:\n  resource_allocation:\n    max_concurrent_bursts: 4\n")
    clean_env.setenv(CONFIG_ENV, str(path))
    clean_env.setenv("FOGCOORD__HARVESTING__RESOURCE_ALLOCATION__BURST_TIMEOUT_MINUTES", "45")
    config = load_config()
    assert config.harvesting.resource_allocation.max_concurrent_bursts == 4
    assert config.harvesting.resource_allocation.burst_timeout_minutes == 45


def test_no_file_and_no_env_gives_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert load_config() == FogConfig()


# --- round trip and derived values ------------------------------------------------------------


def test_to_yaml_round_trips() -> None:
    config = FogConfig()
    assert parse_config(yaml.safe_load(config.to_yaml())) == config


def test_non_default_config_round_trips(tmp_path: Path) -> None:
    config = parse_config(
        {
            "orchestration": {"health_checks": {"circuit_breaker_threshold": 2}},
            "system_stats": {"alerting": {"slack_webhook_url": "https://hooks.example/x"}},
            "server": {"data_dir": str(tmp_path)},
            "storage": {"url": "sqlite:///x.db"},
        }
    )
    again = load_config(write(tmp_path, config.to_yaml()), environ={})
    assert again == config


def test_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    default = FogConfig().database_url()
    assert default == f"sqlite:///{(Path('fogcoord-data') / 'fogcoord.db').resolve()}"

    config = FogConfig(server=ServerConfig(data_dir=tmp_path))
    assert config.database_url() == f"sqlite:///{tmp_path.resolve() / 'fogcoord.db'}"


def test_database_url_uses_storage_url_when_set() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/fog"
    assert FogConfig(storage=StorageConfig(url=url)).database_url() == url
