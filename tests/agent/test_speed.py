"""The matrix-multiply benchmark and its cache."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogcoord.agent import speed


def test_gflop_per_multiply_is_two_n_cubed() -> None:
    assert speed.gflop_per_multiply(512) == pytest.approx(0.268435456)
    assert speed.gflop_per_multiply(1000) == 2.0


def test_measure_keeps_the_best_run() -> None:
    ticks: Iterator[float] = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])  # runs of 0.5, 0.25, 1.0 s

    result = speed.measure(64, 3, timer=lambda: next(ticks))
    assert result.best_seconds == 0.25
    assert result.gflops == pytest.approx(speed.gflop_per_multiply(64) / 0.25)
    assert (result.n, result.runs) == (64, 3)


def test_measure_on_this_machine_is_positive() -> None:
    result = speed.measure(32, 2)
    assert result.gflops > 0
    assert result.cpu_count >= 1


def test_measure_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        speed.measure(0)


def test_cache_is_written_private_and_reused(tmp_path: Path) -> None:
    calls: list[int] = []

    def fake(n: int, runs: int) -> speed.SpeedMeasurement:
        calls.append(n)
        return speed.measure(n, 1)

    first = speed.cached_speed(tmp_path, n=32, measure_fn=fake)
    again = speed.cached_speed(tmp_path, n=32, measure_fn=fake)
    assert calls == [32]
    assert again == first
    path = tmp_path / speed.SPEED_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["gflops"] == first.gflops
    speed.cached_speed(tmp_path, n=48, measure_fn=fake)  # another size: measured again
    assert calls == [32, 48]


def test_a_corrupt_cache_is_measured_again(tmp_path: Path) -> None:
    (tmp_path / speed.SPEED_FILE).write_text("{not json")
    result = speed.cached_speed(tmp_path, n=16, measure_fn=lambda n, r: speed.measure(n, 1))
    assert result.gflops > 0
