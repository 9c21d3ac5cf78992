"""Measured compute speed: a dense float64 matrix multiply (the LINPACK/HPL kernel, DGEMM).

Multiplying two ``n x n`` float64 matrices costs ``2 n^3`` floating point operations; the agent
times a few multiplies with numpy (which uses the machine's BLAS and all its cores) and reports
the best run in GFLOP per second. The result is cached in ``<state dir>/speed.json`` together with
what it depends on (CPU count, machine type, matrix size), so a restarted agent does not measure
again unless the machine changed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fogcoord.agent.identity import write_private

SPEED_FILE = "speed.json"
DEFAULT_SIZE = 512
DEFAULT_RUNS = 3
MIN_GFLOPS = 0.001


@dataclass(frozen=True, slots=True)
class SpeedMeasurement:
    gflops: float
    n: int
    runs: int
    best_seconds: float
    cpu_count: int
    machine: str
    measured_at: float


def gflop_per_multiply(n: int) -> float:
    return 2.0 * n**3 / 1e9


def measure(
    n: int = DEFAULT_SIZE,
    runs: int = DEFAULT_RUNS,
    *,
    seed: int = 0,
    timer: Callable[[], float] = time.perf_counter,
) -> SpeedMeasurement:
    """Time ``runs`` multiplies of two random ``n x n`` float64 matrices; keep the best."""
    if n < 1 or runs < 1:
        raise ValueError("n and runs must be at least 1")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    out = np.empty((n, n))
    np.matmul(a, b, out=out)  # warm-up: BLAS threads, page faults
    best = float("inf")
    for _ in range(runs):
        started = timer()
        np.matmul(a, b, out=out)
        best = min(best, timer() - started)
    best = max(best, 1e-9)
    return SpeedMeasurement(
        gflops=max(MIN_GFLOPS, gflop_per_multiply(n) / best),
        n=n,
        runs=runs,
        best_seconds=best,
        cpu_count=_cpu_count(),
        machine=platform.machine(),
        measured_at=time.time(),
    )


def cached_speed(
    state_dir: Path,
    *,
    n: int = DEFAULT_SIZE,
    runs: int = DEFAULT_RUNS,
    measure_fn: Callable[[int, int], SpeedMeasurement] | None = None,
) -> SpeedMeasurement:
    """The cached measurement if it still describes this machine, else measure and cache."""
    path = Path(state_dir) / SPEED_FILE
    cached = _load(path)
    if (
        cached is not None
        and cached.n == n
        and cached.cpu_count == _cpu_count()
        and cached.machine == platform.machine()
    ):
        return cached
    result = (measure_fn or _measure)(n, runs)
    write_private(path, json.dumps(asdict(result), indent=2) + "\n")
    return result


def _measure(n: int, runs: int) -> SpeedMeasurement:
    return measure(n, runs)


def _load(path: Path) -> SpeedMeasurement | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        result = SpeedMeasurement(**data)
    except (OSError, ValueError, TypeError):
        return None
    return result if result.gflops > 0 else None


def _cpu_count() -> int:
    return os.cpu_count() or 1
