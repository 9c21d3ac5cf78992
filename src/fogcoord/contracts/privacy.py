"""Privacy contract: differential privacy, secure aggregation, Byzantine detection, onion routing.

The seed types tensors as ``torch.Tensor``; here they are numpy arrays (torch tensors are
accepted where torch is installed), so the contract holds without a hard torch dependency.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.contracts.errors import Conflict
from fogcoord.contracts.events import ServiceEvent

Tensor = Any
"""A numpy ``ndarray`` or, when torch is installed, a ``torch.Tensor``."""


class HiddenServiceSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    owner: str
    target_host: str = "127.0.0.1"
    target_port: int = Field(ge=1, le=65535)
    introduction_points: int = Field(default=3, ge=1, le=10)


class RouteSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    hops: int = Field(default=3, ge=1, le=8)
    exit_required: bool = False


class OnionRoute(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    circuit_id: int
    relays: tuple[str, ...]


class ParticipantData(BaseModel):
    """One participant's contribution to judge: an update vector, or a compute result."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    participant_id: str
    update: Tensor | None = None
    output_hash: str | None = None
    fuel_used: int | None = None
    task_id: str | None = None


class ByzantineFlag(BaseModel):
    """One participant judged Byzantine, in one task or round, and why."""

    model_config = ConfigDict(frozen=True)

    participant_id: str
    task_id: str
    reason: str


class ByzantineFlagged(ServiceEvent):
    durable = True

    participant_id: str
    task_id: str
    reason: str


class PrivacyProtocol(Protocol):
    async def initialize_privacy_budgets(self, participants: list[str]) -> dict[str, float]: ...

    async def apply_differential_privacy(self, data: Tensor, epsilon: float) -> Tensor: ...

    async def create_hidden_service(self, service_spec: HiddenServiceSpec) -> str: ...

    async def setup_onion_routing(self, route_spec: RouteSpec) -> OnionRoute: ...

    async def secure_aggregate(self, gradients: dict[str, Tensor]) -> Tensor: ...

    async def detect_byzantine_behavior(
        self, participant_data: list[ParticipantData]
    ) -> list[str]: ...

    async def explain_byzantine(
        self, participant_data: list[ParticipantData]
    ) -> list[ByzantineFlag]: ...


class PrivacyBudgetExhausted(Conflict):
    """A round would take ``participants`` past their privacy budget, so nobody was charged.

    ``needed`` is the epsilon the round would add for the participant who would overshoot the most
    and ``remaining`` is what that participant has left (``needed > remaining``). Epsilon does not
    add up linearly under composition, so ``needed`` is the difference between that participant's
    spending after and before the round.
    """

    code = "privacy_budget_exhausted"

    def __init__(self, participants: list[str], needed: float, remaining: float) -> None:
        names = ", ".join(participants[:5]) + (" ..." if len(participants) > 5 else "")
        super().__init__(
            f"{len(participants)} participant(s) lack the privacy budget for this round ({names}):"
            f" the worst needs epsilon {needed:.4g} with {remaining:.4g} left",
            participants=list(participants),
            needed=needed,
            remaining=remaining,
        )
        self.participants = list(participants)
        self.needed = needed
        self.remaining = remaining
