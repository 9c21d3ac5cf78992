"""The privacy service end to end on SQLite: budgets, noise, robust aggregation, Byzantine
updates, and secure aggregation in process and driven message by message with real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from fogcoord.config import PrivacyConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.privacy import ByzantineFlagged, ParticipantData, PrivacyBudgetExhausted
from fogcoord.privacy.dp import gaussian_sigma
from fogcoord.privacy.service import FogPrivacyService, TooManyByzantine
from fogcoord.secagg import (
    MaskedInputRequest,
    SecAggClient,
    ShareKeysRequest,
    UnmaskRequest,
    decode_message,
    encode_message,
)
from fogcoord.secagg.quantize import Quantizer, auto_bits
from fogcoord.storage.engine import create_engine

DELTA = 1e-5
F64 = np.ndarray[Any, np.dtype[np.float64]]


class Published:
    def __init__(self) -> None:
        self.events: list[ServiceEvent] = []

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)


def config(budget: float = 10.0, tolerance: float = 0.33) -> PrivacyConfig:
    return PrivacyConfig.model_validate(
        {
            "differential_privacy": {"budget_per_participant": budget, "default_delta": DELTA},
            "secure_aggregation": {"byzantine_tolerance": tolerance},
        }
    )


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await make(budget=..., tolerance=...)``: a started service over one SQLite file."""
    engine = create_engine(f"sqlite:///{tmp_path / 'privacy.db'}")
    started: list[FogPrivacyService] = []

    async def build(
        budget: float = 10.0, tolerance: float = 0.33, publish: Published | None = None
    ) -> FogPrivacyService:
        svc = FogPrivacyService(config(budget, tolerance), lambda: engine, publish=publish)
        await svc.start()
        started.append(svc)
        return svc

    try:
        yield build
    finally:
        for svc in started:
            await svc.stop()
        engine.dispose()


def honest_updates(n: int, d: int = 40, seed: int = 1) -> dict[str, F64]:
    """Clipped updates sharing a direction, each with its own (non-IID-like) part."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0.0, 1.0, d)
    common /= np.linalg.norm(common)
    out: dict[str, F64] = {}
    for i in range(n):
        u = common + rng.normal(0.0, 0.08, d)
        out[f"p{i:02d}"] = u / max(1.0, float(np.linalg.norm(u)))
    return out


# --- budgets ---------------------------------------------------------------------------------


async def test_budgets_initialize_afford_and_charge(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make(budget=7.0)
    left = await svc.initialize_privacy_budgets(["a", "b"])
    assert left == {"a": 7.0, "b": 7.0}
    # rounds at epsilon 4 compose by RDP to 4.32, 6.46, 8.21: two fit in 7, three do not
    assert await svc.affordable(["a", "b", "unknown"], 4.0) == ["a", "b"]
    first = await svc.charge_round(["a"], 4.0, None, "r1")
    assert first["a"] == pytest.approx(4.324, abs=1e-3)
    # a retried round is not charged twice
    assert await svc.charge_round(["a"], 4.0, None, "r1") == first
    second = await svc.charge_round(["a"], 4.0, None, "r2")
    assert second["a"] == pytest.approx(6.457, abs=1e-3)
    assert await svc.affordable(["a", "b"], 4.0) == ["b"]

    # all or nothing: "a" cannot take a third round, so "b" is not charged either
    with pytest.raises(PrivacyBudgetExhausted) as caught:
        await svc.charge_round(["a", "b"], 4.0, None, "r3")
    assert caught.value.http_status == 409
    assert caught.value.code == "privacy_budget_exhausted"
    assert "a" in str(caught.value)
    view = {row["participant_id"]: row for row in svc.budget_view()}
    assert view["b"]["rounds"] == 0
    assert view["b"]["spent_epsilon"] == 0.0
    assert view["a"]["rounds"] == 2
    assert view["a"]["spent_epsilon"] == pytest.approx(second["a"])
    assert view["a"]["remaining_epsilon"] == pytest.approx(7.0 - second["a"])
    assert view["a"]["delta"] == DELTA

    # initializing again keeps what was spent
    again = await svc.initialize_privacy_budgets(["a"])
    assert again["a"] == pytest.approx(7.0 - second["a"])


async def test_budgets_persist_across_a_restart(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make(budget=10.0)
    await svc.initialize_privacy_budgets(["a"])
    spent = await svc.charge_round(["a"], 4.0, None, "r1")
    await svc.stop()
    reopened: FogPrivacyService = await make(budget=10.0)
    (row,) = reopened.budget_view()
    assert row["spent_epsilon"] == pytest.approx(spent["a"])
    assert row["rounds"] == 1
    assert await reopened.affordable(["a"], 4.0) == ["a"]


async def test_the_noise_multiplier_is_the_analytic_gaussian(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make()
    assert svc.noise_multiplier(1.0) == pytest.approx(3.7306, abs=1e-4)
    assert svc.noise_multiplier(1.0) == gaussian_sigma(1.0, DELTA)
    assert svc.noise_multiplier(4.0, 1e-6) == gaussian_sigma(4.0, 1e-6)


# --- noise -----------------------------------------------------------------------------------


async def test_noisy_mean_statistics(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make()
    clip, count, eps = 0.5, 10, 2.0
    total = np.full(200_000, 3.0)
    mean, sigma = await svc.noisy_mean(total, count, eps, None, clip)
    assert sigma == pytest.approx(gaussian_sigma(eps, DELTA) * clip)
    noise = mean * count - total
    # the noise on the sum has standard deviation sigma and mean 0
    assert float(np.std(noise)) == pytest.approx(sigma, rel=0.02)
    assert abs(float(np.mean(noise))) < 5 * sigma / np.sqrt(noise.size)
    assert float(np.mean(mean)) == pytest.approx(3.0 / count, abs=5 * sigma / count / 400)
    # a fresh draw every call
    again, _ = await svc.noisy_mean(total, count, eps, None, clip)
    assert not np.array_equal(mean, again)
    with pytest.raises(ValidationFailed):
        await svc.noisy_mean(total, 0, eps, None, clip)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
async def test_apply_differential_privacy_keeps_shape_and_dtype(
    make: Callable[..., Any], dtype: type[np.floating[Any]], mechanism: str
) -> None:
    svc: FogPrivacyService = await make()
    data = np.arange(12, dtype=dtype).reshape(3, 4)
    out = await svc.apply_differential_privacy(data, 1.0, clip_norm=2.0, mechanism=mechanism)
    assert isinstance(out, np.ndarray)
    assert out.shape == (3, 4)
    assert out.dtype == dtype
    assert not np.array_equal(out, data)
    # with a huge epsilon the noise vanishes and what is left is the clipped input
    out = await svc.apply_differential_privacy(data, 1e6, clip_norm=2.0, mechanism=mechanism)
    norm = float(np.abs(data).sum()) if mechanism == "laplace" else float(np.linalg.norm(data))
    np.testing.assert_allclose(out, data * (2.0 / norm), atol=0.02)


# --- robust aggregation and Byzantine updates ------------------------------------------------


async def test_robust_aggregate_flags_sign_flipped_updates(make: Callable[..., Any]) -> None:
    published = Published()
    svc: FogPrivacyService = await make(publish=published)
    updates = honest_updates(17)
    for name in ("p00", "p05", "p09"):
        updates[name] = -updates[name]  # sign-flipped, within the clip like every update
    honest = {k: v for k, v in updates.items() if k not in ("p00", "p05", "p09")}
    honest_mean = np.mean(list(honest.values()), axis=0)
    for method in ("multi_krum", "median", "trimmed_mean", "krum", "bulyan"):
        aggregate, flags, too_many = await svc.robust_aggregate(updates, method, "round-1")
        assert not too_many
        assert {f.participant_id for f in flags} == {"p00", "p05", "p09"}, method
        assert all(f.task_id == "round-1" and f.reason for f in flags)
        assert "against the median" in flags[0].reason
        # near the honest mean (Krum picks one honest update: as near as they are), where a
        # plain mean is dragged towards the flipped updates
        plain = np.mean(list(updates.values()), axis=0)
        spread = max(float(np.linalg.norm(u - honest_mean)) for u in honest.values())
        off = float(np.linalg.norm(aggregate - honest_mean))
        assert off <= spread, method
        if method != "krum":
            assert off < np.linalg.norm(plain - honest_mean) / 2, method
    for _ in range(5):  # let the published events arrive
        await asyncio.sleep(0)
    flagged_events = [e for e in published.events if isinstance(e, ByzantineFlagged)]
    assert len(flagged_events) == 5 * 3
    assert svc.flagged == 5 * 3


async def test_too_many_byzantine_updates_name_nobody(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make(tolerance=0.2)
    updates = honest_updates(10)
    for name in ("p00", "p01", "p02"):
        updates[name] = -10 * updates[name]
    data = [ParticipantData(participant_id=k, update=v, task_id="r7") for k, v in updates.items()]
    with pytest.raises(TooManyByzantine) as caught:
        await svc.explain_byzantine(data)
    assert caught.value.http_status == 409
    assert caught.value.fields["suspected_share"] == pytest.approx(0.3)
    assert caught.value.fields["tolerance"] == 0.2
    # robust aggregation still aggregates, robustly, but names no one
    aggregate, flags, too_many = await svc.robust_aggregate(updates, "median", "r7")
    assert too_many
    assert flags == []
    assert np.all(np.isfinite(aggregate))
    # within the tolerance the same call names them
    relaxed: FogPrivacyService = await make(tolerance=0.33)
    flags = await relaxed.explain_byzantine(data)
    assert {f.participant_id for f in flags} == {"p00", "p01", "p02"}
    assert await relaxed.detect_byzantine_behavior(data) == ["p00", "p01", "p02"]


async def test_grouped_aggregation_withstands_one_spoiled_group(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make()
    updates = honest_updates(15)
    groups = svc.groups(sorted(updates), 3, "round-3")
    assert len(groups) == 5
    assert sorted(p for g in groups for p in g) == sorted(updates)
    assert svc.groups(sorted(updates), 3, "round-3") == groups  # same seed, same groups
    sums = {f"g{i}": np.sum([updates[p] for p in g], axis=0) for i, g in enumerate(groups)}
    sizes = {f"g{i}": len(g) for i, g in enumerate(groups)}
    sums["g0"] = sums["g0"] - 50 * sums["g0"]  # one member poisons its group's sum
    honest_mean = np.mean([updates[p] for g in groups[1:] for p in g], axis=0)
    for method in ("median", "multi_krum", "bulyan"):
        mean = await svc.grouped_aggregate(sums, sizes, method)
        # within the spread of honest group means, far from what the spoiled sum would give
        assert np.linalg.norm(mean - honest_mean) < 0.2, method
    plain = np.sum(list(sums.values()), axis=0) / len(updates)
    assert np.linalg.norm(plain - honest_mean) > 5


# --- secure aggregation ----------------------------------------------------------------------


async def test_secure_aggregate_is_the_sum_within_quantisation(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make()
    rng = np.random.default_rng(5)
    vectors = {f"c{i}": rng.uniform(-1.0, 1.0, (4, 25)) for i in range(6)}
    total = await svc.secure_aggregate(vectors, clip=1.0)
    assert total.shape == (4, 25)
    exact = np.sum(list(vectors.values()), axis=0)
    bound = Quantizer(1.0, auto_bits(6), 6).error_bound(6)
    assert bound < 1e-6
    assert np.abs(total - exact).max() <= bound
    # without a clip the bound is the largest magnitude: nothing is clipped
    unclipped = {k: 3 * v for k, v in vectors.items()}
    total = await svc.secure_aggregate(unclipped)
    assert np.abs(total - 3 * exact).max() <= Quantizer(3.0, auto_bits(6), 6).error_bound(6)
    with pytest.raises(ValidationFailed):
        await svc.secure_aggregate({"alone": np.zeros(3)})


def run_networked(
    svc: FogPrivacyService,
    vectors: dict[str, F64],
    *,
    drop_before_masking: str | None = None,
    drop_after_masking: str | None = None,
    clip: float = 1.0,
) -> tuple[F64, list[str]]:
    """Drive one networked round: setup and every stage through JSON, as the agents do."""
    length = len(next(iter(vectors.values())))
    clients = {c: SecAggClient(c) for c in vectors}
    requests = svc.secagg_open("session-1", list(vectors), length, clip)
    assert set(requests) == set(vectors)
    replies = {
        c: encode_message(clients[c].setup(cast(Any, decode_message(m))))
        for c, m in requests.items()
    }
    while True:
        nxt, total, included = svc.secagg_step("session-1", replies)
        if total is not None:
            assert nxt == {}
            return total, included
        replies = {}
        for c, raw in nxt.items():
            request = decode_message(raw)
            if isinstance(request, ShareKeysRequest):
                replies[c] = encode_message(clients[c].share_keys(request))
            elif isinstance(request, MaskedInputRequest):
                if c != drop_before_masking:
                    replies[c] = encode_message(clients[c].masked_input(request, vectors[c]))
            elif isinstance(request, UnmaskRequest):
                if c != drop_after_masking:
                    replies[c] = encode_message(clients[c].unmask(request))
            else:
                raise AssertionError(f"unexpected {type(request).__name__}")


async def test_networked_secagg_with_a_dropout_after_masking(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make()
    rng = np.random.default_rng(8)
    vectors = {f"dev-{i}": rng.uniform(-0.5, 0.5, 30) for i in range(6)}
    total, included = run_networked(svc, vectors, drop_after_masking="dev-3")
    # its masked input arrived before it dropped: it is in the sum, its masks are cancelled
    assert included == sorted(vectors)
    exact = np.sum(list(vectors.values()), axis=0)
    assert np.abs(total - exact).max() <= Quantizer(1.0, auto_bits(6), 6).error_bound(6)
    assert "session-1" not in svc._sessions  # the round's state is gone


async def test_networked_secagg_with_a_dropout_before_masking(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make()
    rng = np.random.default_rng(9)
    vectors = {f"dev-{i}": rng.uniform(-0.5, 0.5, 30) for i in range(6)}
    total, included = run_networked(svc, vectors, drop_before_masking="dev-2")
    assert included == sorted(set(vectors) - {"dev-2"})
    exact = np.sum([v for k, v in vectors.items() if k != "dev-2"], axis=0)
    assert np.abs(total - exact).max() <= Quantizer(1.0, auto_bits(6), 6).error_bound(5)


async def test_secagg_shape_is_complete_then_sparse(make: Callable[..., Any]) -> None:
    svc: FogPrivacyService = await make()
    assert svc.secagg_shape(5) == (None, 3)  # SecAgg: everyone's neighbour; floor 3
    assert svc.secagg_shape(30) == (None, 15)
    neighbours, threshold = svc.secagg_shape(100)
    assert neighbours == 2 * 7 + 1
    assert threshold == 8
