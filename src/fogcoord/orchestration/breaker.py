"""Circuit breaker for service calls.

Written here because no maintained asyncio library offers what is needed together: an injected
monotonic clock (tests drive it), a cap on concurrent half-open trial calls, excluded errors that
count as neither success nor failure, and a per-call timeout.

closed --(threshold consecutive failures)--> open --(reset timeout)--> half-open
half-open --(a trial call succeeds)--> closed;  half-open --(a trial call fails)--> open
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fogcoord.clock import Clock, SystemClock
from fogcoord.contracts.errors import CallTimeout, CircuitOpen, FogError, ServiceUnavailable
from fogcoord.contracts.orchestration import BreakerState

T = TypeVar("T")
StateListener = Callable[[BreakerState, BreakerState, int], None]


def business_error(exc: BaseException) -> bool:
    """Errors a caller caused (bad input, not found, no funds) say nothing of service health."""
    return isinstance(exc, FogError) and not isinstance(exc, ServiceUnavailable)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        call_timeout: float | None = 30.0,
        clock: Clock | None = None,
        is_excluded: Callable[[BaseException], bool] = business_error,
        on_state_change: StateListener | None = None,
    ) -> None:
        if failure_threshold < 1 or half_open_max_calls < 1:
            raise ValueError("failure_threshold and half_open_max_calls must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self.call_timeout = call_timeout
        self._clock = clock or SystemClock()
        self._is_excluded = is_excluded
        self._listeners: list[StateListener] = [on_state_change] if on_state_change else []
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        self._epoch = 0  # counts half-open periods, so a late trial cannot touch a newer one
        self.calls = 0
        self.rejected = 0

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock.monotonic() - self._opened_at >= self.reset_timeout
        ):
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if new is BreakerState.OPEN:
            self._opened_at = self._clock.monotonic()
        if new is BreakerState.HALF_OPEN:
            self._trials = 0
            self._epoch += 1
        if new is BreakerState.CLOSED:
            self._failures = 0
        for listener in self._listeners:
            listener(old, new, self._failures)

    def _admit(self) -> int | None:
        """Take a permit; returns the half-open period of a trial call, None for a normal one."""
        state = self.state
        if state is BreakerState.OPEN:
            self.rejected += 1
            retry = self.reset_timeout - (self._clock.monotonic() - self._opened_at)
            raise CircuitOpen(self.name, max(0.0, retry))
        if state is BreakerState.HALF_OPEN:
            if self._trials >= self.half_open_max_calls:
                self.rejected += 1
                raise CircuitOpen(self.name, 0.0)
            self._trials += 1
            return self._epoch
        return None

    # Outcomes act on the state the breaker is in now, not the one the call was admitted in: a
    # trial finishing after a sibling trial already re-opened (or closed) the circuit must not
    # flip it back.

    def _on_success(self, trial: int | None) -> None:
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.CLOSED)

    def _on_failure(self, trial: int | None) -> None:
        self._failures += 1
        half_open = self._state is BreakerState.HALF_OPEN
        if half_open or self._failures >= self.failure_threshold:
            self._transition(BreakerState.OPEN)

    def _on_neutral(self, trial: int | None) -> None:
        if trial == self._epoch and self._state is BreakerState.HALF_OPEN:
            self._trials -= 1

    async def call(
        self, fn: Callable[..., Awaitable[T]], *args: object, method: str = "call", **kw: object
    ) -> T:
        trial = self._admit()
        self.calls += 1
        try:
            async with self._clock.timeout(self.call_timeout):
                result = await fn(*args, **kw)
        except TimeoutError:
            self._on_failure(trial)
            raise CallTimeout(self.name, method, self.call_timeout or 0.0) from None
        except BaseException as exc:
            if not isinstance(exc, Exception) or self._is_excluded(exc):
                self._on_neutral(trial)
            else:
                self._on_failure(trial)
            raise
        self._on_success(trial)
        return result

    def reset(self) -> None:
        self._transition(BreakerState.CLOSED)
