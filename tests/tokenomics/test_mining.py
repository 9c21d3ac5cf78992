"""Compute-mining rewards: base x GFLOP-hours x bonus, exact, rounded down to the micro-token."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from fogcoord.config import ComputeMiningConfig, TokenomicsConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.tokenomics import WorkProof
from fogcoord.tokenomics.mining import RewardCalculator
from fogcoord.tokenomics.service import FogTokenomicsService

DEFAULT = RewardCalculator(ComputeMiningConfig())


def proof(gflop: float, reliability: float = 0.95) -> WorkProof:
    return WorkProof(
        device_id="dev-1",
        task_id="task-1",
        verified_fuel=0,
        gflop=gflop,
        reliability=reliability,
    )


def exact_micro(config: ComputeMiningConfig, gflop: float, reliability: float) -> Fraction:
    """The formula of the docstring, unrounded, in micro-tokens."""
    reward = Fraction(repr(config.base_reward_per_gflop_hour)) * Fraction(repr(gflop)) / 3600
    if reliability >= config.reliability_threshold:
        reward *= Fraction(repr(config.quality_bonus_multiplier))
    return reward * 1_000_000


@pytest.mark.parametrize(
    ("gflop", "reliability", "micro"),
    [
        # one GFLOP-hour: 0.1 token, x1.5 for a reliable device
        (3600.0, 0.95, 150_000),
        (3600.0, 0.5, 100_000),
        # reliability exactly at the threshold earns the bonus; just below does not
        (36.0, 0.9, 1_500),
        (36.0, 0.8999999, 1_000),
        (36.0, 1.0, 1_500),
        (36.0, 0.0, 1_000),
        # 0.1 / 3600 = 27.77... micro-tokens per GFLOP: rounded down, never up
        (1.0, 0.5, 27),
        (1.0, 0.95, 41),
        # tiny work: exactly one micro-token, a hair less is nothing
        (0.024, 0.95, 1),
        (0.0239, 0.95, 0),
        (1e-9, 0.95, 0),
        (0.0, 0.95, 0),
        (123456789.123, 0.95, 5_144_032_880),
        # huge work: exact to the last micro-token (no 28-digit Decimal rounding)
        (7.2e18, 0.5, 200_000_000_000_000_000_000),
        (1e30, 0.95, 41_666_666_666_666_666_666_666_666_666_666),
        (1e30, 0.5, 27_777_777_777_777_777_777_777_777_777_777),
    ],
)
def test_formula_exact_micro_tokens(gflop: float, reliability: float, micro: int) -> None:
    assert DEFAULT.reward_micro(proof(gflop, reliability)) == micro


def test_other_configuration_values() -> None:
    config = ComputeMiningConfig(
        base_reward_per_gflop_hour=0.25, quality_bonus_multiplier=2.0, reliability_threshold=0.5
    )
    calc = RewardCalculator(config)
    assert calc.reward_micro(proof(3600.0, 0.5)) == 500_000
    assert calc.reward_micro(proof(3600.0, 0.49)) == 250_000
    assert calc.reward_micro(proof(7200.0, 0.7)) == 1_000_000
    zero = RewardCalculator(ComputeMiningConfig(base_reward_per_gflop_hour=0.0))
    assert zero.reward_micro(proof(1e12, 1.0)) == 0


def test_infinite_work_is_refused() -> None:
    with pytest.raises(ValidationFailed) as refused:
        DEFAULT.reward_micro(proof(float("inf")))
    assert refused.value.fields["field"] == "gflop"


def test_work_proof_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="greater than or equal"):
        proof(-1.0)
    with pytest.raises(ValueError, match="less than or equal"):
        proof(1.0, reliability=1.5)


async def test_service_reports_tokens_as_float() -> None:
    def no_engine() -> Engine:
        raise AssertionError("calculating a reward needs no database")

    svc = FogTokenomicsService(TokenomicsConfig(), no_engine)
    assert await svc.calculate_mining_rewards(proof(3600.0, 0.95)) == 0.15
    assert await svc.calculate_mining_rewards(proof(3600.0, 0.1)) == 0.1
    assert await svc.calculate_mining_rewards(proof(1.0, 0.95)) == 0.000041
    assert Decimal(str(await svc.calculate_mining_rewards(proof(0.01)))) == 0


GFLOP = st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False)
RELIABILITY = st.floats(min_value=0, max_value=1)
CONFIGS = st.builds(
    ComputeMiningConfig,
    base_reward_per_gflop_hour=st.sampled_from([0.0, 0.1, 0.25, 1.0, 3.7]),
    quality_bonus_multiplier=st.sampled_from([1.0, 1.5, 2.25]),
    reliability_threshold=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
)


@settings(max_examples=300, deadline=None)
@given(config=CONFIGS, a=GFLOP, b=GFLOP, reliability=RELIABILITY)
def test_reward_is_monotone_in_gflop(
    config: ComputeMiningConfig, a: float, b: float, reliability: float
) -> None:
    calc = RewardCalculator(config)
    low, high = sorted((a, b))
    assert calc.reward_micro(proof(low, reliability)) <= calc.reward_micro(proof(high, reliability))


@settings(max_examples=300, deadline=None)
@given(config=CONFIGS, gflop=GFLOP, reliability=RELIABILITY)
def test_reward_never_exceeds_the_unrounded_value(
    config: ComputeMiningConfig, gflop: float, reliability: float
) -> None:
    reward = RewardCalculator(config).reward_micro(proof(gflop, reliability))
    exact = exact_micro(config, gflop, reliability)
    assert reward <= exact
    assert exact - reward < 1  # rounded down by less than one micro-token


@settings(max_examples=200, deadline=None)
@given(gflop=GFLOP, reliability=RELIABILITY)
def test_reliable_devices_never_earn_less(gflop: float, reliability: float) -> None:
    plain = DEFAULT.reward_micro(proof(gflop, min(reliability, 0.89)))
    assert DEFAULT.reward_micro(proof(gflop, max(reliability, 0.9))) >= plain
