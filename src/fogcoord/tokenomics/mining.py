"""Compute-mining rewards for verified work.

reward (tokens) = base_reward_per_gflop_hour x verified GFLOP-hours x bonus, where
GFLOP-hours = verified GFLOP / 3,600 (one GFLOPS sustained for an hour) and bonus =
quality_bonus_multiplier when the device's reliability >= reliability_threshold, else 1.
Computed exactly and rounded down to the micro-token: the mint never issues more than earned.
(The products are exact at 100 digits; the one division is done last, on integers, as
floor(x / n) == floor(floor(x) / n). Decimal at its default 28 digits would round a huge
intermediate result, and could round it up.)
"""

from __future__ import annotations

import math
from decimal import Context, Decimal

from fogcoord.config import ComputeMiningConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.tokenomics import WorkProof
from fogcoord.contracts.units import GFLOP_PER_GFLOP_HOUR, MICRO_PER_TOKEN

_EXACT = Context(prec=100)
"""Enough digits that multiplying a few float reprs (17 digits each) never rounds."""


class RewardCalculator:
    def __init__(self, config: ComputeMiningConfig) -> None:
        self._base_micro = _EXACT.multiply(
            Decimal(repr(config.base_reward_per_gflop_hour)), MICRO_PER_TOKEN
        )
        self._bonus = Decimal(repr(config.quality_bonus_multiplier))
        self._threshold = config.reliability_threshold

    def reward_micro(self, proof: WorkProof) -> int:
        if not math.isfinite(proof.gflop):
            raise ValidationFailed("gflop", "must be finite")
        micro = _EXACT.multiply(self._base_micro, Decimal(repr(proof.gflop)))
        if proof.reliability >= self._threshold:
            micro = _EXACT.multiply(micro, self._bonus)
        return int(micro) // GFLOP_PER_GFLOP_HOUR  # non-negative: int() and // round down
