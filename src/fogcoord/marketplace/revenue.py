"""Revenue: how one batch of verified tasks is split, in integer micro-tokens, summing exactly.

For each task the gross is ``clearing price per GFLOP x verified GFLOP`` (from the exact fuel
count when given), rounded down to the micro-token: a requester never pays for a fraction of a
micro-token of work. The gross is split:

- platform = floor(gross x ``platform_fee_percent``);
- validators = floor(gross x ``validator_share_percent``), shared equally by the devices whose
  re-execution confirmed the task; the micro-tokens that do not divide evenly go one each to the
  validators in id order;
- provider = gross - platform - validators: every rounding remainder goes to the device that did
  the work, so the three parts always sum to the gross exactly.

A task nobody re-executed has no validators of its own: its validator share is pooled and shared
by the job's validators pro rata to what they have validated so far (largest-remainder rounding,
ties by id), or goes back to the requester when nothing in the job was re-executed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from fogcoord.config import RevenueSharingConfig
from fogcoord.contracts.marketplace import CompletedTask
from fogcoord.contracts.units import FUEL_PER_GFLOP

PPM = 1_000_000


def percent_ppm(percent: float) -> int:
    return round(percent * 10_000)


def task_gross(price_micro: int, task: CompletedTask) -> int:
    """Clearing price x verified work, floored to the micro-token."""
    if task.fuel is not None:
        return price_micro * task.fuel // FUEL_PER_GFLOP
    exact = Decimal(price_micro) * Decimal(repr(task.gflop))
    return int(exact.to_integral_value(rounding=ROUND_FLOOR))


def split_equal(amount: int, ids: Iterable[str]) -> dict[str, int]:
    members = sorted(set(ids))
    if not members or amount <= 0:
        return {}
    base, extra = divmod(amount, len(members))
    return {m: base + (1 if i < extra else 0) for i, m in enumerate(members)}


def pro_rata(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``amount`` in proportion to ``weights`` (largest remainder; ties by id); sums exactly."""
    live = {k: w for k, w in weights.items() if w > 0}
    total = sum(live.values())
    if amount <= 0 or total <= 0:
        return {}
    parts = {k: amount * w // total for k, w in live.items()}
    left = amount - sum(parts.values())
    by_remainder = sorted(live, key=lambda k: (-(amount * live[k] % total), k))
    for k in by_remainder[:left]:
        parts[k] += 1
    return parts


@dataclass
class BatchSplit:
    gross: dict[str, int] = field(default_factory=dict)
    """task id -> gross"""
    providers: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    validators: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    platform: int = 0
    refund: int = 0

    @property
    def total(self) -> int:
        return sum(self.gross.values())


def split_batch(
    tasks: Sequence[CompletedTask],
    price_micro: int,
    shares: RevenueSharingConfig,
    job_validator_weights: Mapping[str, int],
) -> BatchSplit:
    """Split a batch; ``job_validator_weights`` is what each validator earned earlier in the job."""
    v_ppm = percent_ppm(shares.validator_share_percent)
    # shares are rounded one by one; never let two of them add up past the whole
    f_ppm = min(percent_ppm(shares.platform_fee_percent), PPM - v_ppm)
    out = BatchSplit()
    pooled = 0
    for task in tasks:
        gross = task_gross(price_micro, task)
        out.gross[task.task_id] = gross
        validators = gross * v_ppm // PPM
        platform = gross * f_ppm // PPM
        out.platform += platform
        out.providers[task.provider] += gross - validators - platform
        confirmed = [v for v in task.validators if v != task.provider]
        if confirmed:
            for device, amount in split_equal(validators, confirmed).items():
                out.validators[device] += amount
        else:
            pooled += validators
    if pooled:
        weights = dict(job_validator_weights)
        for device, amount in out.validators.items():
            weights[device] = weights.get(device, 0) + amount
        shared = pro_rata(pooled, weights)
        for device, amount in shared.items():
            out.validators[device] += amount
        out.refund = pooled - sum(shared.values())
    out.providers = dict(out.providers)
    out.validators = dict(out.validators)
    return out
