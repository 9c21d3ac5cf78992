"""The one error hierarchy.

Every error carries a stable machine-readable ``code`` and the fields a caller needs. The API
maps ``http_status`` to the response status with a JSON body ``{"error": code, "detail": ...}``.
Business errors (``FogError`` subclasses) are *excluded* from circuit-breaker accounting: a
caller's mistake says nothing about the health of the service that rejected it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FogError(Exception):
    """Base of every error the system raises on purpose."""

    code: ClassVar[str] = "fog_error"
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.message, **self.fields}


class ValidationFailed(FogError):
    """Input was rejected; ``field`` names which part and ``reason`` says why."""

    code = "validation_failed"
    http_status = 422

    def __init__(self, field: str, reason: str, **fields: Any) -> None:
        super().__init__(f"{field}: {reason}", field=field, reason=reason, **fields)


class ConfigError(FogError):
    """Configuration was rejected at start-up; ``errors`` lists ``(dotted.key, reason)``."""

    code = "config_invalid"
    http_status = 500

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        lines = "; ".join(f"{key}: {reason}" for key, reason in errors)
        super().__init__(f"invalid configuration: {lines}", errors=[list(e) for e in errors])
        self.errors = errors


class NotFound(FogError):
    code = "not_found"
    http_status = 404

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found", kind=kind, key=key)


class Conflict(FogError):
    code = "conflict"
    http_status = 409


class InsufficientFunds(Conflict):
    """A wallet cannot cover ``amount`` (tokens); ``available`` is what it could spend."""

    code = "insufficient_funds"

    def __init__(self, wallet: str, amount: Any, available: Any) -> None:
        super().__init__(
            f"wallet {wallet!r} cannot cover {amount} tokens (available {available})",
            wallet=wallet,
            amount=str(amount),
            available=str(available),
        )


class Unauthenticated(FogError):
    code = "unauthenticated"
    http_status = 401

    def __init__(self, message: str = "a valid API key is required") -> None:
        super().__init__(message)


class Forbidden(FogError):
    code = "forbidden"
    http_status = 403

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, **fields)


class FeatureUnavailable(FogError):
    """A contract method whose implementation is not part of this deployment."""

    code = "feature_unavailable"
    http_status = 501

    def __init__(self, feature: str, reason: str) -> None:
        super().__init__(f"{feature} is unavailable: {reason}", feature=feature, reason=reason)


class ServiceUnavailable(FogError):
    """Infrastructure failure: the target cannot serve now. Counted by circuit breakers."""

    code = "service_unavailable"
    http_status = 503


class CircuitOpen(ServiceUnavailable):
    code = "circuit_open"

    def __init__(self, service: str, retry_after: float) -> None:
        FogError.__init__(
            self,
            f"circuit for {service!r} is open; retry in {retry_after:.2f}s",
            service=service,
            retry_after=retry_after,
        )
        self.retry_after = retry_after


class CallTimeout(ServiceUnavailable):
    code = "call_timeout"

    def __init__(self, service: str, method: str, timeout: float) -> None:
        FogError.__init__(
            self,
            f"{service}.{method} did not answer within {timeout:.3f}s",
            service=service,
            method=method,
            timeout=timeout,
        )


class DependencyError(FogError):
    """The service graph cannot be started: a cycle or a missing dependency."""

    code = "dependency_error"
    http_status = 500

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, **fields)


class QueueFull(ServiceUnavailable):
    code = "queue_full"

    def __init__(self, subscriber: str, size: int) -> None:
        FogError.__init__(
            self,
            f"queue of subscriber {subscriber!r} is full ({size} events)",
            subscriber=subscriber,
            size=size,
        )


class BusClosed(ServiceUnavailable):
    code = "bus_closed"

    def __init__(self) -> None:
        FogError.__init__(self, "the event bus is closed")
