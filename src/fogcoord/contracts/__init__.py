"""What crosses a service boundary: value types, events, service Protocols and errors.

Nothing here does I/O. Import the names from the submodules or from this package.
"""

from fogcoord.contracts.errors import FogError
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.harvesting import (
    AllocationPlan,
    BurstRequest,
    ComputeWorkload,
    DeviceCapability,
    DeviceHealth,
    HarvestingProtocol,
    ResourceRequirements,
    SuitabilityScore,
)
from fogcoord.contracts.lifecycle import HealthState, HealthStatus, Lifecycle, ServiceStats
from fogcoord.contracts.marketplace import (
    AuctionId,
    AuctionResult,
    CompletedJob,
    MarketMetrics,
    MarketplaceProtocol,
    PricingQuote,
    ResourceBid,
    ResourceRequest,
    ResourceSpec,
    RevenueDistribution,
)
from fogcoord.contracts.orchestration import (
    OrchestrationProtocol,
    ServiceInstance,
    ServiceRegistry,
)
from fogcoord.contracts.privacy import (
    HiddenServiceSpec,
    OnionRoute,
    ParticipantData,
    PrivacyProtocol,
    RouteSpec,
)
from fogcoord.contracts.stats import (
    AlertConfig,
    ExportFormat,
    HealthReport,
    MetricEvent,
    PerformanceStats,
    StatsProtocol,
    SystemMetrics,
    TimeWindow,
)
from fogcoord.contracts.tokenomics import (
    TokenomicsProtocol,
    Transaction,
    TransactionResult,
    WalletInfo,
    WorkProof,
)

__all__ = [
    "AlertConfig",
    "AllocationPlan",
    "AuctionId",
    "AuctionResult",
    "BurstRequest",
    "CompletedJob",
    "ComputeWorkload",
    "DeviceCapability",
    "DeviceHealth",
    "ExportFormat",
    "FogError",
    "HarvestingProtocol",
    "HealthReport",
    "HealthState",
    "HealthStatus",
    "HiddenServiceSpec",
    "Lifecycle",
    "MarketMetrics",
    "MarketplaceProtocol",
    "MetricEvent",
    "OnionRoute",
    "OrchestrationProtocol",
    "ParticipantData",
    "PerformanceStats",
    "PricingQuote",
    "PrivacyProtocol",
    "ResourceBid",
    "ResourceRequest",
    "ResourceRequirements",
    "ResourceSpec",
    "RevenueDistribution",
    "RouteSpec",
    "ServiceEvent",
    "ServiceInstance",
    "ServiceRegistry",
    "ServiceStats",
    "StatsProtocol",
    "SuitabilityScore",
    "SystemMetrics",
    "TimeWindow",
    "TokenomicsProtocol",
    "Transaction",
    "TransactionResult",
    "WalletInfo",
    "WorkProof",
]
