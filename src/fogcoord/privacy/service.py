"""FogPrivacyService: Byzantine detection for compute results.

Differential privacy, secure aggregation and onion routing are separate parts of this service that
this deployment does not include yet: their methods raise :class:`FeatureUnavailable` (HTTP 501)
with the reason, rather than pretending to protect anything.
"""

from __future__ import annotations

from fogcoord.clock import Clock
from fogcoord.config import PrivacyConfig
from fogcoord.contracts.errors import FeatureUnavailable
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.privacy import (
    ByzantineFlag,
    ByzantineFlagged,
    HiddenServiceSpec,
    OnionRoute,
    ParticipantData,
    RouteSpec,
    Tensor,
)
from fogcoord.lifecycle import Publish, ServiceBase
from fogcoord.privacy.byzantine import compute_flags

NAME = "privacy"


class FogPrivacyService(ServiceBase):
    service_type = NAME

    def __init__(
        self, config: PrivacyConfig, *, clock: Clock | None = None, publish: Publish | None = None
    ) -> None:
        super().__init__(NAME, clock=clock, publish=publish)
        self.config = config
        self.flagged = 0

    async def check_health(self) -> HealthStatus:
        return HealthStatus.passing(f"{self.flagged} participants flagged")

    async def detect_byzantine_behavior(self, participant_data: list[ParticipantData]) -> list[str]:
        """Ids of the participants whose compute results disagree with the accepted one."""
        return sorted({f.participant_id for f in await self.explain_byzantine(participant_data)})

    async def explain_byzantine(
        self, participant_data: list[ParticipantData]
    ) -> list[ByzantineFlag]:
        updates = [d for d in participant_data if d.update is not None]
        if updates:
            raise FeatureUnavailable(
                "byzantine detection of model updates",
                "robust aggregation of update vectors is not part of this deployment",
            )
        flags = compute_flags(participant_data)
        self.flagged += len(flags)
        for f in flags:
            self.emit(
                ByzantineFlagged(
                    source=NAME, participant_id=f.participant_id, task_id=f.task_id, reason=f.reason
                )
            )
        return flags

    async def initialize_privacy_budgets(self, participants: list[str]) -> dict[str, float]:
        raise FeatureUnavailable("privacy budgets", "differential privacy is not available yet")

    async def apply_differential_privacy(self, data: Tensor, epsilon: float) -> Tensor:
        raise FeatureUnavailable(
            "differential privacy", "differential privacy is not available yet"
        )

    async def secure_aggregate(self, gradients: dict[str, Tensor]) -> Tensor:
        raise FeatureUnavailable("secure aggregation", "secure aggregation is not available yet")

    async def setup_onion_routing(self, route_spec: RouteSpec) -> OnionRoute:
        raise FeatureUnavailable("onion routing", "onion routing is not available yet")

    async def create_hidden_service(self, service_spec: HiddenServiceSpec) -> str:
        raise FeatureUnavailable("hidden services", "hidden services are not available yet")
