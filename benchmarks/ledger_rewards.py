"""``ledger.reward_calc``: mean time of ``await svc.calculate_mining_rewards(proof)``.

100,000 realistic verified-work proofs (fuel from 0.5 to 5,000 GFLOP, device reliability 0.6 to
1.0, so about a quarter reach the 0.9 threshold of the quality bonus), built before timing; the
whole loop is timed and divided by the count. The calculation needs no ledger, so the service is
not started. Baseline, same run: the same formula in plain float arithmetic, in the same loop
shape (not awaited) -- what the service's exact, rounded-down-to-the-micro-token calculation
costs over it.
"""

from __future__ import annotations

import random
from time import perf_counter

from benchmarks._ledger import ledger_config
from benchmarks.harness import Figure, Unit, log
from fogcoord.contracts.tokenomics import WorkProof
from fogcoord.contracts.units import FUEL_PER_GFLOP, GFLOP_PER_GFLOP_HOUR, MICRO_PER_TOKEN
from fogcoord.storage.engine import create_engine
from fogcoord.tokenomics.service import FogTokenomicsService

FIGURES = ("ledger.reward_calc",)
UNIT: Unit = "us"
TIMEOUT_S = 60.0

PROOFS = 100_000
WARMUP = 5_000
TARGET_US = 50.0


def proofs(count: int, seed: int = 5) -> list[WorkProof]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        fuel = int(FUEL_PER_GFLOP * 10 ** rng.uniform(-0.3, 3.7))
        out.append(
            WorkProof(
                device_id=f"dev-{rng.randrange(5_000):06d}",
                task_id=f"task-{i:07d}-{rng.getrandbits(32):08x}",
                verified_fuel=fuel,
                gflop=fuel / FUEL_PER_GFLOP,
                reliability=round(rng.uniform(0.6, 1.0), 3),
            )
        )
    return out


async def run() -> list[Figure]:
    config = ledger_config()
    svc = FogTokenomicsService(config, lambda: create_engine("sqlite://"))
    work = proofs(WARMUP + PROOFS)
    calc = svc.calculate_mining_rewards
    for proof in work[:WARMUP]:
        await calc(proof)
    measured = work[WARMUP:]

    started = perf_counter()
    total = 0.0
    for proof in measured:
        total += await calc(proof)
    service_us = (perf_counter() - started) / PROOFS * 1e6

    mining = config.compute_mining
    base = mining.base_reward_per_gflop_hour * MICRO_PER_TOKEN
    bonus, threshold = mining.quality_bonus_multiplier, mining.reliability_threshold
    started = perf_counter()
    float_total = 0.0
    for proof in measured:
        micro = base * proof.gflop / GFLOP_PER_GFLOP_HOUR
        if proof.reliability >= threshold:
            micro *= bonus
        float_total += int(micro) / MICRO_PER_TOKEN
    float_us = (perf_counter() - started) / PROOFS * 1e6

    if abs(total - float_total) > 1e-6 * PROOFS:
        raise RuntimeError(f"rewards disagree: {total} (service) vs {float_total} (float)")
    log(f"  {PROOFS} proofs, {total:,.3f} tokens in rewards")
    return [
        Figure("ledger.reward_calc", service_us, UNIT, baseline=float_us, target=TARGET_US, op="<")
    ]
