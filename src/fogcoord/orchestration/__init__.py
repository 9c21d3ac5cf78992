"""Orchestration: service registry and discovery, lifecycle, health, breakers, the event bus."""

from fogcoord.orchestration.breaker import CircuitBreaker
from fogcoord.orchestration.service import FogOrchestrationService

__all__ = ["CircuitBreaker", "FogOrchestrationService"]
