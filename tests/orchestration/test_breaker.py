"""The circuit breaker: thresholds, half-open trials, excluded errors, timeouts, listeners."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogcoord.clock import FakeClock
from fogcoord.contracts.errors import (
    CallTimeout,
    CircuitOpen,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from fogcoord.contracts.orchestration import BreakerState
from fogcoord.orchestration.breaker import CircuitBreaker, business_error

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
Transition = tuple[BreakerState, BreakerState, int]


class Boom(Exception):
    """An infrastructure failure (not a FogError): counts against the breaker."""


class Target:
    """A callable service method that counts how often it was actually reached."""

    def __init__(self) -> None:
        self.calls = 0

    async def ok(self) -> str:
        self.calls += 1
        return "ok"

    async def fail(self) -> str:
        self.calls += 1
        raise Boom("down")

    async def invalid(self) -> str:
        self.calls += 1
        raise ValidationFailed("amount", "must be positive")

    async def missing(self) -> str:
        self.calls += 1
        raise NotFound("wallet", "w1")

    async def unavailable(self) -> str:
        self.calls += 1
        raise ServiceUnavailable("backend is down")


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def make(
    clock: FakeClock,
    *,
    threshold: int = 3,
    reset: float = 10.0,
    half_open: int = 1,
    call_timeout: float | None = 5.0,
    transitions: list[Transition] | None = None,
) -> CircuitBreaker:
    def record(old: BreakerState, new: BreakerState, failures: int) -> None:
        if transitions is not None:
            transitions.append((old, new, failures))

    return CircuitBreaker(
        "svc",
        failure_threshold=threshold,
        reset_timeout=reset,
        half_open_max_calls=half_open,
        call_timeout=call_timeout,
        clock=clock,
        on_state_change=record,
    )


async def fail_times(breaker: CircuitBreaker, fn: Callable[[], Awaitable[str]], n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(fn)


async def trip(breaker: CircuitBreaker, target: Target) -> None:
    await fail_times(breaker, target.fail, breaker.failure_threshold)
    assert breaker.state is OPEN


class Gate:
    """A service call that blocks until released, then succeeds or fails."""

    def __init__(self) -> None:
        self.entered = 0
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self) -> str:
        self.entered += 1
        await self.release.wait()
        if self.fail:
            raise Boom("trial failed")
        return "ok"


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "half_open"), [(0, 1), (1, 0), (-1, 1)])
def test_rejects_nonsense_limits(threshold: int, half_open: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker("svc", failure_threshold=threshold, half_open_max_calls=half_open)


def test_business_error_classification() -> None:
    assert business_error(ValidationFailed("a", "b"))
    assert business_error(NotFound("kind", "key"))
    assert not business_error(ServiceUnavailable("down"))
    assert not business_error(CallTimeout("svc", "m", 1.0))
    assert not business_error(CircuitOpen("svc", 1.0))
    assert not business_error(Boom())
    assert not business_error(RuntimeError())


# --- closed -> open ---------------------------------------------------------------------------


async def test_returns_result_and_passes_arguments(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)

    async def add(a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    assert await breaker.call(add, 2, 3, scale=10) == 50
    assert breaker.calls == 1
    assert breaker.state is CLOSED


async def test_n_minus_one_failures_do_not_open(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=4), Target()
    await fail_times(breaker, target.fail, 3)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 3
    assert await breaker.call(target.ok) == "ok"


async def test_opens_after_exactly_threshold_consecutive_failures(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=4), Target()
    await fail_times(breaker, target.fail, 3)
    assert breaker.state is CLOSED
    await fail_times(breaker, target.fail, 1)
    assert breaker.state is OPEN
    assert breaker.consecutive_failures == 4


async def test_threshold_of_one_opens_on_first_failure(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=1), Target()
    await fail_times(breaker, target.fail, 1)
    assert breaker.state is OPEN


async def test_success_in_between_resets_the_count(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=3), Target()
    await fail_times(breaker, target.fail, 2)
    assert await breaker.call(target.ok) == "ok"
    assert breaker.consecutive_failures == 0
    await fail_times(breaker, target.fail, 2)
    assert breaker.state is CLOSED
    await fail_times(breaker, target.fail, 1)
    assert breaker.state is OPEN


async def test_open_rejects_without_calling_with_retry_after(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=2, reset=10.0), Target()
    await trip(breaker, target)
    reached = target.calls

    with pytest.raises(CircuitOpen) as info:
        await breaker.call(target.ok)
    assert target.calls == reached
    assert info.value.retry_after == pytest.approx(10.0)
    assert info.value.fields["service"] == "svc"
    assert info.value.fields["retry_after"] == pytest.approx(10.0)
    assert isinstance(info.value, ServiceUnavailable)

    fake_clock.advance(4.0)
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(target.ok)
    assert info.value.retry_after == pytest.approx(6.0)
    assert target.calls == reached
    assert breaker.rejected == 2
    assert breaker.calls == reached  # rejected calls are not counted as calls


async def test_half_open_after_reset_timeout(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, reset=10.0), Target()
    await trip(breaker, target)
    fake_clock.advance(9.999)
    assert breaker.state is OPEN
    fake_clock.advance(0.001)
    assert breaker.state is HALF_OPEN


async def test_successful_trial_closes(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock), Target()
    await trip(breaker, target)
    fake_clock.advance(10)
    assert breaker.state is HALF_OPEN
    assert await breaker.call(target.ok) == "ok"
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    # Closed again: it takes a full threshold of failures to re-open.
    await fail_times(breaker, target.fail, 2)
    assert breaker.state is CLOSED


async def test_failed_trial_reopens_for_a_full_reset_timeout(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, reset=10.0), Target()
    await trip(breaker, target)
    fake_clock.advance(10)
    await fail_times(breaker, target.fail, 1)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(target.ok)
    assert info.value.retry_after == pytest.approx(10.0)
    fake_clock.advance(10)
    assert breaker.state is HALF_OPEN


async def test_half_open_permit_cap(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, half_open=2), Target()
    await trip(breaker, target)
    fake_clock.advance(10)

    gate = Gate()
    trials = [asyncio.create_task(breaker.call(gate)) for _ in range(2)]
    await settle()
    assert gate.entered == 2

    with pytest.raises(CircuitOpen) as info:
        await breaker.call(target.ok)
    assert info.value.retry_after == 0.0
    assert gate.entered == 2
    assert breaker.state is HALF_OPEN

    gate.release.set()
    assert await asyncio.gather(*trials) == ["ok", "ok"]
    assert breaker.state is CLOSED


async def test_single_permit_rejects_second_concurrent_trial(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, half_open=1), Target()
    await trip(breaker, target)
    fake_clock.advance(10)
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    await settle()
    with pytest.raises(CircuitOpen):
        await breaker.call(gate)
    assert gate.entered == 1
    gate.release.set()
    assert await trial == "ok"
    assert breaker.state is CLOSED


async def test_late_trial_success_does_not_close_a_reopened_circuit(
    fake_clock: FakeClock,
) -> None:
    """A trial failing re-opens the circuit; a sibling trial succeeding later must not close it."""
    breaker, target = make(fake_clock, half_open=2), Target()
    await trip(breaker, target)
    fake_clock.advance(10)

    failing, passing = Gate(), Gate()
    failing.fail = True
    t_fail = asyncio.create_task(breaker.call(failing))
    t_pass = asyncio.create_task(breaker.call(passing))
    await settle()

    failing.release.set()
    with pytest.raises(Boom):
        await t_fail
    assert breaker.state is OPEN

    passing.release.set()
    assert await t_pass == "ok"
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen):
        await breaker.call(target.ok)


async def test_late_trial_failure_after_close_counts_as_one_failure(
    fake_clock: FakeClock,
) -> None:
    breaker, target = make(fake_clock, threshold=3, half_open=2), Target()
    await trip(breaker, target)
    fake_clock.advance(10)

    passing, failing = Gate(), Gate()
    failing.fail = True
    t_pass = asyncio.create_task(breaker.call(passing))
    t_fail = asyncio.create_task(breaker.call(failing))
    await settle()

    passing.release.set()
    assert await t_pass == "ok"
    assert breaker.state is CLOSED

    failing.release.set()
    with pytest.raises(Boom):
        await t_fail
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 1


async def test_stale_trial_cancelled_later_does_not_widen_the_next_permit_cap(
    fake_clock: FakeClock,
) -> None:
    breaker, target = make(fake_clock, half_open=2), Target()
    await trip(breaker, target)
    fake_clock.advance(10)

    stale, failing = Gate(), Gate()
    failing.fail = True
    t_stale = asyncio.create_task(breaker.call(stale))
    t_fail = asyncio.create_task(breaker.call(failing))
    await settle()
    failing.release.set()
    with pytest.raises(Boom):
        await t_fail
    assert breaker.state is OPEN

    fake_clock.advance(10)
    assert breaker.state is HALF_OPEN
    t_stale.cancel()  # a trial of the previous half-open period ends without an outcome
    with pytest.raises(asyncio.CancelledError):
        await t_stale

    fresh = Gate()
    trials = [asyncio.create_task(breaker.call(fresh)) for _ in range(2)]
    await settle()
    assert fresh.entered == 2
    with pytest.raises(CircuitOpen):
        await breaker.call(target.ok)
    assert fresh.entered == 2
    fresh.release.set()
    assert await asyncio.gather(*trials) == ["ok", "ok"]
    assert breaker.state is CLOSED


# --- excluded errors --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["invalid", "missing"])
async def test_business_errors_never_open(fake_clock: FakeClock, kind: str) -> None:
    breaker, target = make(fake_clock, threshold=3), Target()
    fn = getattr(target, kind)
    for _ in range(10):
        with pytest.raises((ValidationFailed, NotFound)):
            await breaker.call(fn)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    assert target.calls == 10


async def test_business_errors_do_not_reset_the_failure_count(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=3), Target()
    await fail_times(breaker, target.fail, 1)
    with pytest.raises(ValidationFailed):
        await breaker.call(target.invalid)
    await fail_times(breaker, target.fail, 1)
    with pytest.raises(NotFound):
        await breaker.call(target.missing)
    assert breaker.consecutive_failures == 2
    await fail_times(breaker, target.fail, 1)
    assert breaker.state is OPEN


async def test_business_error_in_half_open_releases_permit_without_closing(
    fake_clock: FakeClock,
) -> None:
    transitions: list[Transition] = []
    breaker, target = make(fake_clock, half_open=1, transitions=transitions), Target()
    await trip(breaker, target)
    fake_clock.advance(10)
    assert breaker.state is HALF_OPEN

    with pytest.raises(ValidationFailed):
        await breaker.call(target.invalid)
    assert breaker.state is HALF_OPEN
    assert transitions[-1] == (OPEN, HALF_OPEN, 3)

    # The permit was given back: another trial is admitted and decides the state.
    assert await breaker.call(target.ok) == "ok"
    assert breaker.state is CLOSED


async def test_service_unavailable_counts_as_failure(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=2), Target()
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await breaker.call(target.unavailable)
    assert breaker.state is OPEN


async def test_custom_exclusion_predicate(fake_clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "svc",
        failure_threshold=1,
        clock=fake_clock,
        is_excluded=lambda exc: isinstance(exc, Boom),
    )
    target = Target()
    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.call(target.fail)
    assert breaker.state is CLOSED
    with pytest.raises(ValidationFailed):
        await breaker.call(target.invalid)
    assert breaker.state is OPEN


# --- timeouts and cancellation ----------------------------------------------------------------


async def test_hanging_call_is_cut_off_by_call_timeout(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, threshold=2, call_timeout=5.0)
    gate = Gate()
    task = asyncio.create_task(breaker.call(gate, method="slow_method"))
    await settle()
    assert gate.entered == 1

    await fake_clock.advance_and_settle(4.9)
    assert not task.done()

    await fake_clock.advance_and_settle(0.1)
    assert task.done()
    with pytest.raises(CallTimeout) as info:
        await task
    assert info.value.fields == {"service": "svc", "method": "slow_method", "timeout": 5.0}
    assert breaker.consecutive_failures == 1
    assert breaker.state is CLOSED


async def test_timeouts_open_the_circuit(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, threshold=2, call_timeout=1.0)
    for _ in range(2):
        task = asyncio.create_task(breaker.call(Gate()))
        await settle()
        await fake_clock.advance_and_settle(1.0)
        with pytest.raises(CallTimeout):
            await task
    assert breaker.state is OPEN


async def test_no_call_timeout_waits_forever(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, call_timeout=None)
    gate = Gate()
    task = asyncio.create_task(breaker.call(gate))
    await settle()
    await fake_clock.advance_and_settle(10_000)
    assert not task.done()
    gate.release.set()
    assert await task == "ok"


async def test_cancellation_is_neutral_when_closed(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, threshold=2), Target()
    await fail_times(breaker, target.fail, 1)
    for _ in range(3):
        task = asyncio.create_task(breaker.call(Gate()))
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 1


async def test_cancellation_in_half_open_releases_permit(fake_clock: FakeClock) -> None:
    breaker, target = make(fake_clock, half_open=1), Target()
    await trip(breaker, target)
    fake_clock.advance(10)
    task = asyncio.create_task(breaker.call(Gate()))
    await settle()
    with pytest.raises(CircuitOpen):
        await breaker.call(target.ok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is HALF_OPEN
    assert await breaker.call(target.ok) == "ok"
    assert breaker.state is CLOSED


# --- listeners --------------------------------------------------------------------------------


async def test_listener_sees_every_transition(fake_clock: FakeClock) -> None:
    transitions: list[Transition] = []
    breaker, target = make(fake_clock, threshold=3, transitions=transitions), Target()
    extra: list[Transition] = []
    breaker.add_listener(lambda old, new, n: extra.append((old, new, n)))

    await trip(breaker, target)  # closed -> open with 3 failures
    fake_clock.advance(10)
    assert breaker.state is HALF_OPEN  # open -> half-open
    await fail_times(breaker, target.fail, 1)  # half-open -> open, 4 failures
    fake_clock.advance(10)
    assert await breaker.call(target.ok) == "ok"  # open -> half-open -> closed
    await trip(breaker, target)  # closed -> open
    breaker.reset()  # open -> closed

    assert transitions == [
        (CLOSED, OPEN, 3),
        (OPEN, HALF_OPEN, 3),
        (HALF_OPEN, OPEN, 4),
        (OPEN, HALF_OPEN, 4),
        (HALF_OPEN, CLOSED, 0),
        (CLOSED, OPEN, 3),
        (OPEN, CLOSED, 0),
    ]
    assert extra == transitions


async def test_no_transition_no_notification(fake_clock: FakeClock) -> None:
    transitions: list[Transition] = []
    breaker, target = make(fake_clock, transitions=transitions), Target()
    await breaker.call(target.ok)
    await fail_times(breaker, target.fail, 2)
    breaker.reset()  # already closed
    assert transitions == []


# --- property: the breaker against a model ----------------------------------------------------

Outcome = Literal["success", "failure", "excluded"]
OUTCOMES: list[Outcome] = ["success", "failure", "excluded"]


async def _run(breaker: CircuitBreaker, target: Target, outcome: Outcome) -> str:
    fn = {"success": target.ok, "failure": target.fail, "excluded": target.invalid}[outcome]
    try:
        await breaker.call(fn)
    except CircuitOpen:
        return "rejected"
    except (Boom, ValidationFailed):
        return "raised"
    return "ok"


def _opens(outcomes: list[Outcome], threshold: int) -> int | None:
    """Index of the call that opens the circuit: threshold failures, excluded ignored."""
    run = 0
    for i, outcome in enumerate(outcomes):
        if outcome == "success":
            run = 0
        elif outcome == "failure":
            run += 1
            if run >= threshold:
                return i
    return None


@given(
    threshold=st.integers(min_value=1, max_value=5),
    outcomes=st.lists(st.sampled_from(OUTCOMES), max_size=40),
)
def test_property_open_iff_unbroken_run_of_failures(
    threshold: int, outcomes: list[Outcome]
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        breaker, target = make(clock, threshold=threshold), Target()
        opened_at = _opens(outcomes, threshold)
        for i, outcome in enumerate(outcomes):
            before = target.calls
            result = await _run(breaker, target, outcome)
            if opened_at is not None and i > opened_at:
                assert result == "rejected"
                assert target.calls == before
            else:
                assert result != "rejected"
                assert target.calls == before + 1
        expected = OPEN if opened_at is not None else CLOSED
        assert breaker.state is expected

    asyncio.run(scenario())


Step = Literal["success", "failure", "excluded", "wait"]


@given(
    threshold=st.integers(min_value=1, max_value=4),
    steps=st.lists(st.sampled_from(["success", "failure", "excluded", "wait"]), max_size=50),
)
def test_property_matches_state_machine_model(threshold: int, steps: list[Step]) -> None:
    """Sequential calls and reset-timeout waits against the documented state machine."""

    async def scenario() -> None:
        clock = FakeClock()
        breaker, target = make(clock, threshold=threshold, reset=10.0), Target()
        state, failures = CLOSED, 0
        for step in steps:
            if step == "wait":
                clock.advance(10.0)
                if state is OPEN:
                    state = HALF_OPEN
            else:
                result = await _run(breaker, target, step)
                if state is OPEN:
                    assert result == "rejected"
                elif step == "success":
                    assert result == "ok"
                    state, failures = CLOSED, 0
                elif step == "failure":
                    assert result == "raised"
                    failures += 1
                    if state is HALF_OPEN or failures >= threshold:
                        state = OPEN
                else:
                    assert result == "raised"
            assert breaker.state is state
            if state is CLOSED:
                assert breaker.consecutive_failures == failures

    asyncio.run(scenario())
