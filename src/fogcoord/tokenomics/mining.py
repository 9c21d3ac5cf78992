"""Compute-mining rewards for verified work.

reward (tokens) = base_reward_per_gflop_hour x verified GFLOP-hours x bonus, where
GFLOP-hours = verified GFLOP / 3,600 (one GFLOPS sustained for an hour) and bonus =
quality_bonus_multiplier when the device's reliability >= reliability_threshold, else 1.
Computed in Decimal and rounded down to the micro-token: the mint never issues more than earned.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from fogcoord.config import ComputeMiningConfig
from fogcoord.contracts.tokenomics import WorkProof
from fogcoord.contracts.units import GFLOP_PER_GFLOP_HOUR, MICRO_PER_TOKEN


class RewardCalculator:
    def __init__(self, config: ComputeMiningConfig) -> None:
        self._base_micro = Decimal(repr(config.base_reward_per_gflop_hour)) * MICRO_PER_TOKEN
        self._bonus = Decimal(repr(config.quality_bonus_multiplier))
        self._threshold = config.reliability_threshold

    def reward_micro(self, proof: WorkProof) -> int:
        gflop_hours = Decimal(repr(proof.gflop)) / GFLOP_PER_GFLOP_HOUR
        micro = self._base_micro * gflop_hours
        if proof.reliability >= self._threshold:
            micro *= self._bonus
        return int(micro.to_integral_value(rounding=ROUND_DOWN))
