from __future__ import annotations

import numpy as np
import pytest

from fogcoord.agent.backoff import Backoff


def test_waits_grow_jittered_and_capped() -> None:
    backoff = Backoff(base=1.0, cap=10.0, rng=np.random.default_rng(1))
    waits = [backoff.next() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 10, 10, 10, 10]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert len(set(waits)) == len(waits)  # jittered


def test_reset_starts_over() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=np.random.default_rng(2))
    for _ in range(5):
        backoff.next()
    assert backoff.ceiling() == 16.0
    backoff.reset()
    assert backoff.ceiling() == 0.5
    assert 0.25 <= backoff.next() <= 0.5


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    backoff.attempts = 10_000
    assert 30.0 <= backoff.next() <= 60.0


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=5, cap=1)
