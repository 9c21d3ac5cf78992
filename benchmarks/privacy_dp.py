"""``privacy.dp_noise_1m`` and ``privacy.accounting``: the cost of differential privacy.

``privacy.dp_noise_1m``: median time of ``apply_dp`` (Gaussian, epsilon 1, delta 1e-5, clip 1)
on a 1,000,000-element float32 update, with the production default generator (a fresh one seeded
from the operating system on every call), over 30 calls. Baseline, same run, calls alternating:
drawing the same number of float32 standard normals with numpy,
``rng.standard_normal(1_000_000, dtype=np.float32)`` -- the floor, since the noise must be drawn.
The ratio is what clipping, scaling and adding cost on top; the target is at most 1.3x, and
under 50 ms. The calibration of sigma is cached per (epsilon, delta), so the timed calls reuse it;
its first computation (and dp-accounting's import) is logged separately.

``privacy.accounting``: median time of ``BudgetBook.charge`` for a round of 100 participants
drawn from 10,000 who all have histories (three rounds at noise 6 for everyone, one at noise 4
for half), on the embedded backend (SQLite file, WAL, ``synchronous=FULL``: the commit is on disk
before ``charge`` returns), over 30 rounds. Target: under 50 ms. Baseline, same run, same 100
participants: dp-accounting's ``RdpAccountant`` used directly, one accountant per participant,
composing that participant's history and the new round and converting to epsilon -- in memory,
with no storage at all, so it is the cost of the accounting alone, not of a persisted charge.
Both give the same epsilons (checked).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter

import numpy as np

from benchmarks.harness import Figure, Unit, log
from fogcoord.privacy.budgets import BudgetBook
from fogcoord.privacy.dp import apply_dp, gaussian_sigma
from fogcoord.storage.engine import create_engine

FIGURES = ("privacy.dp_noise_1m", "privacy.accounting")
UNIT: Unit = "ms"
TIMEOUT_S = 300.0

SIZE = 1_000_000
NOISE_CALLS = 30
NOISE_TARGET_MS = 50.0
NOISE_RATIO_TARGET = 1.3
EPSILON, DELTA, CLIP = 1.0, 1e-5, 1.0

POPULATION = 10_000
ROUND = 100
ROUNDS = 30
BUDGET = 10.0
HISTORY = ((6.0, 1.0), (6.0, 1.0), (6.0, 1.0), (4.0, 0.5))  # (noise, share of participants)
ROUND_NOISE = 5.0
ACCOUNTING_TARGET_MS = 50.0


def noise_figure() -> Figure:
    started = perf_counter()
    cold = "dp_accounting" not in sys.modules
    gaussian_sigma(EPSILON, DELTA, CLIP)
    log(
        f"  first calibration {(perf_counter() - started) * 1e3:.0f} ms"
        f" ({'with' if cold else 'without'} importing dp-accounting)"
    )
    data = np.random.default_rng(1).standard_normal(SIZE, dtype=np.float32) * np.float32(1e-2)
    rng = np.random.default_rng(2)
    for _ in range(3):
        apply_dp(data, EPSILON, delta=DELTA, clip_norm=CLIP)
        rng.standard_normal(SIZE, dtype=np.float32)
    dp_s: list[float] = []
    draw_s: list[float] = []
    for _ in range(NOISE_CALLS):
        started = perf_counter()
        rng.standard_normal(SIZE, dtype=np.float32)
        draw_s.append(perf_counter() - started)
        started = perf_counter()
        apply_dp(data, EPSILON, delta=DELTA, clip_norm=CLIP)
        dp_s.append(perf_counter() - started)
    value, baseline = statistics.median(dp_s) * 1e3, statistics.median(draw_s) * 1e3
    log(f"  apply_dp {value:.2f} ms vs draw {baseline:.2f} ms: {value / baseline:.2f}x")
    return Figure(
        "privacy.dp_noise_1m",
        value,
        UNIT,
        baseline=baseline,
        target=NOISE_TARGET_MS,
        op="<",
        ratio_target=NOISE_RATIO_TARGET,
        ratio_op="<=",
    )


def accountant_epsilons(
    history: dict[str, list[float]], ids: list[str]
) -> tuple[float, dict[str, float]]:
    """Seconds to account ``ids``' next round with one RdpAccountant each, and the epsilons."""
    from dp_accounting import ComposedDpEvent, GaussianDpEvent  # type: ignore[import-untyped]
    from dp_accounting.rdp import RdpAccountant  # type: ignore[import-untyped]

    started = perf_counter()
    out: dict[str, float] = {}
    for pid in ids:
        accountant = RdpAccountant()
        past = [GaussianDpEvent(noise) for noise in history[pid]]
        accountant.compose(ComposedDpEvent([*past, GaussianDpEvent(ROUND_NOISE)]))
        out[pid] = accountant.get_epsilon(DELTA)
    return perf_counter() - started, out


def accounting_figure(directory: Path) -> Figure:
    engine = create_engine(f"sqlite:///{directory / 'budgets.db'}")
    try:
        book = BudgetBook(engine, budget_epsilon=BUDGET, delta=DELTA)
        ids = [f"participant-{i:05d}" for i in range(POPULATION)]
        history: dict[str, list[float]] = {pid: [] for pid in ids}
        started = perf_counter()
        book.initialize(ids)
        rng = np.random.default_rng(3)
        for n, (noise, share) in enumerate(HISTORY):
            chosen = [ids[i] for i in rng.choice(POPULATION, int(POPULATION * share), False)]
            book.charge(chosen, noise, f"history-{n}")
            for pid in chosen:
                history[pid].append(noise)
        log(f"  {POPULATION:,} histories written in {perf_counter() - started:.1f} s")

        charge_s: list[float] = []
        direct_s: list[float] = []
        for r in range(ROUNDS):
            chosen = [ids[i] for i in rng.choice(POPULATION, ROUND, False)]
            seconds, expected = accountant_epsilons(history, chosen)
            direct_s.append(seconds)
            started = perf_counter()
            spent = book.charge(chosen, ROUND_NOISE, f"round-{r}")
            charge_s.append(perf_counter() - started)
            for pid in chosen:
                history[pid].append(ROUND_NOISE)
                if abs(spent[pid] - expected[pid]) > 1e-6:
                    raise RuntimeError(
                        f"{pid}: charged {spent[pid]}, the accountant says {expected[pid]}"
                    )
        most = max(len(h) for h in history.values())
        log(
            f"  histories up to {most} rounds; {len(book.can_afford(ids, ROUND_NOISE)):,} of "
            f"{POPULATION:,} can afford another round"
        )
    finally:
        engine.dispose()
    value, baseline = statistics.median(charge_s) * 1e3, statistics.median(direct_s) * 1e3
    log(
        f"  charge {value:.2f} ms per round of {ROUND} (persisted); one RdpAccountant per "
        f"participant {baseline:.2f} ms (in memory, nothing stored)"
    )
    return Figure(
        "privacy.accounting",
        value,
        UNIT,
        baseline=baseline,
        target=ACCOUNTING_TARGET_MS,
        op="<",
    )


def run() -> list[Figure]:
    figures = [noise_figure()]
    with tempfile.TemporaryDirectory(prefix="fogcoord-privacy-bench-") as tmp:
        figures.append(accounting_figure(Path(tmp)))
    return figures
