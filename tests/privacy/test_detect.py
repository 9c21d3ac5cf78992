"""Detection of Byzantine updates among honest non-IID ones, and the tolerance rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from fogcoord.config import PrivacyConfig
from fogcoord.privacy.detect import SIGNALS, Detection, detect_updates

F64 = NDArray[np.float64]
TOLERANCE = PrivacyConfig().secure_aggregation.byzantine_tolerance
ATTACKS = ("sign_flip", "scaled", "noise")


def honest_round(rng: np.random.Generator, n: int, d: int, alpha: float = 0.5) -> F64:
    """Gradients of clients with skewed label mixes and data sizes: a shared direction, a drift
    from each client's class mix (Dirichlet(alpha) over 10 classes), sampling noise that shrinks
    with the client's number of samples, and a per-client step size."""
    shared = rng.standard_normal(d)
    shared /= np.linalg.norm(shared)
    classes = rng.standard_normal((10, d))
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    mix = rng.dirichlet(np.full(10, alpha), size=n)
    samples = rng.integers(20, 500, size=n)
    noise = rng.standard_normal((n, d)) / math.sqrt(d) * (3.0 / np.sqrt(samples))[:, None]
    steps = rng.uniform(0.7, 1.3, size=(n, 1))
    out: F64 = steps * (shared + mix @ classes + noise)
    return out


def attack(rng: np.random.Generator, G: F64, share: float) -> tuple[F64, dict[int, str]]:
    """Replace a share of the clients by attackers, the three kinds in turn."""
    n, d = G.shape
    X = G.copy()
    who = rng.choice(n, max(1, round(share * n)), replace=False)
    typical = float(np.median(np.linalg.norm(G, axis=1)))
    kinds: dict[int, str] = {}
    for j, i in enumerate(int(i) for i in who):
        kind = ATTACKS[j % 3]
        if kind == "sign_flip":
            X[i] = -G[i]
        elif kind == "scaled":
            X[i] = 10.0 * G[i]
        else:  # a random direction of the usual length
            v = rng.standard_normal(d)
            X[i] = v / np.linalg.norm(v) * typical
        kinds[i] = kind
    return X, kinds


def named(X: F64) -> dict[str, F64]:
    return {f"c{i:03d}": X[i] for i in range(len(X))}


def flagged(det: Detection) -> set[int]:
    return {int(f.participant_id[1:]) for f in det.flags}


@pytest.mark.parametrize(("n", "d"), [(30, 1000), (50, 2000), (100, 5000)])
@pytest.mark.parametrize("seed", range(5))
def test_every_attacker_and_no_honest_client_is_flagged(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X, kinds = attack(rng, honest_round(rng, n, d), 0.10)
    det = detect_updates(named(X), TOLERANCE, round_id="round-7")
    assert flagged(det) == set(kinds)
    assert not det.too_many
    assert det.suspected_share == pytest.approx(len(kinds) / n)
    assert all(f.task_id == "round-7" for f in det.flags)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("seed", range(4))
def test_honest_rounds_flag_nobody(alpha: float, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    det = detect_updates(named(honest_round(rng, 60, 2000, alpha)), TOLERANCE)
    assert det.flags == []
    assert det.suspected_share == 0.0
    assert not det.too_many


def test_the_reasons_name_the_signals_that_fired() -> None:
    rng = np.random.default_rng(1)
    X, kinds = attack(rng, honest_round(rng, 60, 2000), 0.10)
    reasons = {int(f.participant_id[1:]): f.reason for f in detect_updates(named(X), 0.33).flags}
    for i, kind in kinds.items():
        if kind == "sign_flip":
            assert "points against the median update (cosine -" in reasons[i]
        elif kind == "scaled":
            assert "x the median norm" in reasons[i]
        else:
            assert "is nearly orthogonal to the median update" in reasons[i]


def test_scores_cover_every_participant() -> None:
    rng = np.random.default_rng(2)
    X, kinds = attack(rng, honest_round(rng, 40, 500), 0.10)
    det = detect_updates(named(X), TOLERANCE)
    assert set(det.scores) == set(named(X))
    for i in range(40):
        s = det.scores[f"c{i:03d}"]
        assert set(s) == set(SIGNALS)
        assert all(math.isfinite(v) for v in s.values())
        if kinds.get(i) == "sign_flip":
            assert s["cosine"] < 0
        elif i not in kinds:
            assert s["cosine"] > 0


def test_more_than_the_tolerance_says_so_and_flags_nobody() -> None:
    rng = np.random.default_rng(3)
    X, kinds = attack(rng, honest_round(rng, 50, 1000), 0.40)
    det = detect_updates(named(X), TOLERANCE)
    assert det.too_many
    assert det.flags == []
    assert det.suspected_share > TOLERANCE
    # the scores are still there, for whoever wants to look
    assert len(det.scores) == 50
    # the same round against a tolerance it fits within names them
    relaxed = detect_updates(named(X), 0.45)
    assert not relaxed.too_many
    assert flagged(relaxed) == set(kinds)


def test_a_zero_tolerance_treats_any_flag_as_too_many() -> None:
    rng = np.random.default_rng(4)
    X, _ = attack(rng, honest_round(rng, 30, 500), 0.05)
    det = detect_updates(named(X), 0.0)
    assert det.too_many
    assert det.flags == []
    honest = detect_updates(named(honest_round(rng, 30, 500)), 0.0)
    assert not honest.too_many


def test_nonfinite_updates_are_flagged_without_statistics() -> None:
    rng = np.random.default_rng(5)
    updates = named(honest_round(rng, 20, 300))
    updates["c003"] = updates["c003"].copy()
    updates["c003"][10] = np.nan
    updates["c011"] = np.full(300, np.inf)
    det = detect_updates(updates, TOLERANCE, round_id="r1")
    assert {f.participant_id: f.reason for f in det.flags} == {
        "c003": "holds NaN or infinite values",
        "c011": "holds NaN or infinite values",
    }
    assert math.isinf(det.scores["c003"]["krum_z"])
    assert math.isnan(det.scores["c003"]["cosine"])
    assert math.isfinite(det.scores["c000"]["krum_z"])


def test_an_explicit_f_is_used_for_the_krum_scores() -> None:
    rng = np.random.default_rng(6)
    X, kinds = attack(rng, honest_round(rng, 30, 500), 0.10)
    assert flagged(detect_updates(named(X), TOLERANCE, f=3)) == set(kinds)
    with pytest.raises(ValueError, match="Krum with f=14"):
        detect_updates(named(X), TOLERANCE, f=14)


def test_updates_of_any_shape_are_flattened() -> None:
    rng = np.random.default_rng(7)
    X, kinds = attack(rng, honest_round(rng, 30, 600), 0.10)
    det = detect_updates({f"c{i:03d}": X[i].reshape(20, 30) for i in range(30)}, TOLERANCE)
    assert flagged(det) == set(kinds)


def test_float32_updates_give_the_same_verdict() -> None:
    rng = np.random.default_rng(8)
    X, kinds = attack(rng, honest_round(rng, 50, 2000), 0.10)
    det = detect_updates(named(X.astype(np.float32)), TOLERANCE)
    assert flagged(det) == set(kinds)


def test_too_few_updates_flag_nobody() -> None:
    det = detect_updates({"a": np.ones(4), "b": -np.ones(4) * 100}, TOLERANCE)
    assert det.flags == []
    assert math.isnan(det.scores["a"]["krum_z"])
    assert detect_updates({}, TOLERANCE) == Detection([], 0.0, False, {})


def test_identical_updates_flag_nobody() -> None:
    det = detect_updates({f"c{i}": np.ones(10) for i in range(8)}, TOLERANCE)
    assert det.flags == []


@pytest.mark.parametrize("tolerance", [-0.1, 0.5, 0.9])
def test_the_tolerance_must_be_below_a_half(tolerance: float) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        detect_updates({"a": np.ones(3)}, tolerance)


def test_updates_must_have_one_size() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        detect_updates({"a": np.ones(3), "b": np.ones(4)}, TOLERANCE)
