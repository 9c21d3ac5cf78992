"""Differential privacy: clipping, noise calibration, and the noise apply_dp adds."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fogcoord.contracts.errors import ValidationFailed
from fogcoord.privacy.dp import apply_dp, clip_l1, clip_l2, gaussian_sigma, laplace_scale

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64)
vectors = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
    elements=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32),
)
bounds = st.floats(min_value=1e-3, max_value=1e4)


def rel_tol(dtype: Any) -> float:
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


# --- clipping --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(vectors, bounds)
def test_clip_l2_bounds_the_norm_and_only_scales_down(x: np.ndarray, bound: float) -> None:
    before = x.copy()
    out = clip_l2(x, bound)
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    np.testing.assert_array_equal(x, before)  # the input is not touched
    norm = float(np.linalg.norm(x.astype(np.float64)))
    out_norm = float(np.linalg.norm(out.astype(np.float64)))
    tol = rel_tol(x.dtype)
    assert out_norm <= bound * (1 + tol) + 1e-30
    if norm <= bound:
        np.testing.assert_array_equal(out, x)
    else:
        assert out_norm == pytest.approx(bound, rel=tol)
        # same direction: a positive multiple of the input
        np.testing.assert_allclose(
            out.astype(np.float64), x.astype(np.float64) * (bound / norm), rtol=tol, atol=1e-30
        )


@settings(max_examples=200, deadline=None)
@given(vectors, bounds)
def test_clip_l1_bounds_the_l1_norm(x: np.ndarray, bound: float) -> None:
    out = clip_l1(x, bound)
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    l1 = float(np.abs(x.astype(np.float64)).sum())
    out_l1 = float(np.abs(out.astype(np.float64)).sum())
    assert out_l1 <= bound * (1 + rel_tol(x.dtype)) + 1e-30
    if l1 <= bound:
        np.testing.assert_array_equal(out, x)


def test_clip_survives_squares_that_overflow_float32() -> None:
    x = np.full(10, 1e20, dtype=np.float32)
    out = clip_l2(x, 2.0)
    assert float(np.linalg.norm(out.astype(np.float64))) == pytest.approx(2.0, rel=1e-5)


def test_apply_dp_survives_data_far_out_of_the_bound() -> None:
    x = np.full(1000, 3e38, dtype=np.float32)
    out = apply_dp(x, 1.0, delta=1e-5, clip_norm=1e-3, rng=np.random.default_rng(4))
    assert np.isfinite(out).all()
    noise = out.astype(np.float64) - clip_l2(x, 1e-3)
    assert float(noise.std()) == pytest.approx(gaussian_sigma(1.0, 1e-5, 1e-3), rel=0.1)


def test_clip_rejects_bad_bounds_and_non_finite_values() -> None:
    with pytest.raises(ValidationFailed):
        clip_l2(np.ones(3), 0.0)
    with pytest.raises(ValidationFailed):
        clip_l2(np.ones(3), math.inf)
    with pytest.raises(ValidationFailed):
        clip_l2(np.array([1.0, math.nan]), 1.0)
    with pytest.raises(ValidationFailed):
        clip_l2(np.array([1.0, math.inf]), 1.0)


# --- calibration -----------------------------------------------------------------------------


def test_gaussian_sigma_is_the_analytic_gaussian_mechanism() -> None:
    assert gaussian_sigma(1.0, 1e-5) == pytest.approx(3.7306, abs=1e-3)
    assert gaussian_sigma(1.0, 1e-5, sensitivity=2.5) == pytest.approx(2.5 * 3.7306, abs=3e-3)


def test_analytic_sigma_is_tighter_than_rdp_calibration_and_the_classic_bound() -> None:
    from dp_accounting import (  # type: ignore[import-untyped]
        GaussianDpEvent,
        calibrate_dp_mechanism,
        get_epsilon_gaussian,
    )
    from dp_accounting.rdp import RdpAccountant  # type: ignore[import-untyped]

    rdp_sigma = calibrate_dp_mechanism(RdpAccountant, GaussianDpEvent, 1.0, 1e-5)
    assert rdp_sigma == pytest.approx(4.0454, abs=1e-3)
    assert gaussian_sigma(1.0, 1e-5) < rdp_sigma
    for eps in (0.1, 0.5, 0.9):
        classic = math.sqrt(2 * math.log(1.25 / 1e-5)) / eps
        assert gaussian_sigma(eps, 1e-5) < classic
    # exact: the sigma found gives back the epsilon asked for
    for eps, delta in ((0.3, 1e-6), (1.0, 1e-5), (8.0, 1e-3)):
        assert get_epsilon_gaussian(gaussian_sigma(eps, delta), delta) == pytest.approx(
            eps, rel=1e-6
        )


def test_laplace_scale_is_sensitivity_over_epsilon() -> None:
    assert laplace_scale(0.5, 2.0) == 4.0
    assert laplace_scale(2.0) == 0.5
    with pytest.raises(ValidationFailed):
        laplace_scale(0.0, 1.0)


@pytest.mark.parametrize(
    ("epsilon", "delta"), [(0.0, 1e-5), (-1.0, 1e-5), (math.inf, 1e-5), (1.0, 0.0), (1.0, 1.0)]
)
def test_gaussian_sigma_rejects_out_of_range_parameters(epsilon: float, delta: float) -> None:
    with pytest.raises(ValidationFailed):
        gaussian_sigma(epsilon, delta)


# --- apply_dp --------------------------------------------------------------------------------

N = 1_000_000


def test_gaussian_noise_has_the_calibrated_standard_deviation() -> None:
    rng = np.random.default_rng(7)
    x = np.zeros(N, dtype=np.float32)
    out = apply_dp(x, 1.0, delta=1e-5, clip_norm=2.0, rng=rng)
    sigma = gaussian_sigma(1.0, 1e-5, 2.0)
    # the standard error of a sample std over 1e6 draws is 0.07 %
    assert float(out.std(dtype=np.float64)) == pytest.approx(sigma, rel=5e-3)
    assert abs(float(out.mean(dtype=np.float64))) < 5 * sigma / math.sqrt(N)


def test_gaussian_noise_is_added_to_the_clipped_data() -> None:
    rng = np.random.default_rng(8)
    x = np.random.default_rng(0).normal(3.0, 1.0, N)  # norm ~3,160, far over the bound
    out = apply_dp(x, 2.0, delta=1e-6, clip_norm=10.0, rng=rng)
    noise = out - clip_l2(x, 10.0)
    assert float(noise.std()) == pytest.approx(gaussian_sigma(2.0, 1e-6, 10.0), rel=5e-3)
    assert abs(float(noise.mean())) < 5 * float(noise.std()) / math.sqrt(N)


def test_data_within_the_bound_is_not_scaled() -> None:
    x = np.full(N, 1e-4, dtype=np.float64)  # norm 0.1
    out = apply_dp(x, 1.0, delta=1e-5, clip_norm=1.0, rng=np.random.default_rng(2))
    assert float((out - x).mean()) == pytest.approx(0.0, abs=0.05)
    # the mean survives the noise: sigma / sqrt(N) ~ 0.004 here
    assert float(out.mean()) == pytest.approx(1e-4, abs=0.02)


def test_laplace_path_is_pure_epsilon_with_an_l1_clip() -> None:
    rng = np.random.default_rng(9)
    x = np.ones(N, dtype=np.float32)  # L1 norm 1e6, L2 norm 1e3
    out = apply_dp(x, 0.5, delta=0.0, clip_norm=4.0, mechanism="laplace", rng=rng)
    assert out.dtype == np.float32
    clipped = clip_l1(x, 4.0)
    noise = out.astype(np.float64) - clipped
    b = laplace_scale(0.5, 4.0)
    assert float(noise.std()) == pytest.approx(math.sqrt(2) * b, rel=5e-3)
    # Laplace: mean absolute deviation is the scale itself
    assert float(np.abs(noise).mean()) == pytest.approx(b, rel=5e-3)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_dtype_and_shape_are_kept(dtype: Any, shape: tuple[int, ...], mechanism: Any) -> None:
    x = np.arange(math.prod(shape), dtype=dtype).reshape(shape)
    before = x.copy()
    out = apply_dp(
        x, 1.0, delta=1e-5, clip_norm=1.0, mechanism=mechanism, rng=np.random.default_rng(1)
    )
    assert isinstance(out, np.ndarray)
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    assert out is not x
    np.testing.assert_array_equal(x, before)


def test_non_contiguous_input_is_accepted() -> None:
    x = np.arange(60, dtype=np.float32).reshape(6, 10)[:, ::3].T
    out = apply_dp(x, 1.0, delta=1e-5, clip_norm=1e6, rng=np.random.default_rng(3))
    assert out.shape == x.shape
    assert out.dtype == np.float32


def test_an_injected_rng_makes_the_noise_reproducible() -> None:
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    for mechanism in ("gaussian", "laplace"):
        a = apply_dp(
            x, 1.0, delta=1e-5, clip_norm=1.0, mechanism=mechanism, rng=np.random.default_rng(42)
        )
        b = apply_dp(
            x, 1.0, delta=1e-5, clip_norm=1.0, mechanism=mechanism, rng=np.random.default_rng(42)
        )
        np.testing.assert_array_equal(a, b)


def test_default_noise_is_fresh_on_every_call() -> None:
    x = np.zeros(1000)
    a = apply_dp(x, 1.0, delta=1e-5, clip_norm=1.0)
    b = apply_dp(x, 1.0, delta=1e-5, clip_norm=1.0)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("data", "kwargs"),
    [
        (np.ones(3), {"epsilon": 0.0}),
        (np.ones(3), {"delta": 0.0}),
        (np.ones(3), {"delta": 1.5}),
        (np.ones(3), {"clip_norm": 0.0}),
        (np.ones(3), {"clip_norm": -1.0}),
        (np.ones(3), {"mechanism": "exponential"}),
        (np.ones(3, dtype=np.int64), {}),
        (np.array([1.0, math.nan]), {}),
        (np.array([1.0, -math.inf]), {"mechanism": "laplace"}),
        ([1.0, 2.0], {}),
    ],
)
def test_apply_dp_rejects_bad_input(data: Any, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0, **kwargs}
    epsilon = args.pop("epsilon")
    with pytest.raises(ValidationFailed):
        apply_dp(data, epsilon, rng=np.random.default_rng(0), **args)


def test_dp_accounting_is_imported_lazily() -> None:
    code = (
        "import sys, fogcoord, fogcoord.privacy.dp, fogcoord.privacy.budgets; "
        "assert 'dp_accounting' not in sys.modules, 'imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- torch -----------------------------------------------------------------------------------


def test_torch_tensors_keep_type_dtype_and_device() -> None:
    torch = pytest.importorskip("torch")
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.zeros(10_000, dtype=dtype)
        out = apply_dp(x, 1.0, delta=1e-5, clip_norm=1.0, rng=np.random.default_rng(5))
        assert isinstance(out, torch.Tensor)
        assert out.dtype == dtype
        assert out.device == x.device
        assert out.shape == x.shape
        assert float(out.float().std()) == pytest.approx(gaussian_sigma(1.0, 1e-5), rel=0.05)


class _FakeTensor:
    """Just enough of ``torch.Tensor`` for apply_dp's tensor path, over a numpy array."""

    def __init__(self, array: np.ndarray, device: str = "fake:0", dtype: Any = None) -> None:
        self.array = array
        self.device = device
        self.dtype = array.dtype if dtype is None else dtype
        self.shape = array.shape

    def is_floating_point(self) -> bool:
        return bool(np.issubdtype(self.array.dtype, np.floating))

    def detach(self) -> _FakeTensor:
        return self

    def to(self, where: Any = None, *, device: Any = None, dtype: Any = None) -> _FakeTensor:
        if isinstance(where, str):
            device = where
        elif where is not None:
            dtype = where
        array = self.array if dtype is None else self.array.astype(dtype)
        return _FakeTensor(array, self.device if device is None else device)

    def numpy(self) -> np.ndarray:
        assert self.device == "cpu", "numpy() of a tensor that is not on the CPU"
        return self.array


def test_tensor_path_round_trips_through_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = type(sys)("torch")
    fake.__dict__.update(
        Tensor=_FakeTensor,
        float16=np.dtype(np.float16),
        float32=np.dtype(np.float32),
        float64=np.dtype(np.float64),
        from_numpy=lambda a: _FakeTensor(a, "cpu"),
    )
    monkeypatch.setitem(sys.modules, "torch", fake)
    x = _FakeTensor(np.zeros(200_000, dtype=np.float16))
    out = apply_dp(x, 1.0, delta=1e-5, clip_norm=1.0, rng=np.random.default_rng(6))
    assert isinstance(out, _FakeTensor)
    assert out.device == "fake:0"
    assert out.array.dtype == np.float16
    assert out.shape == x.shape
    assert float(out.array.astype(np.float64).std()) == pytest.approx(
        gaussian_sigma(1.0, 1e-5), rel=0.02
    )
    with pytest.raises(ValidationFailed):
        apply_dp(_FakeTensor(np.ones(3, dtype=np.int32)), 1.0, delta=1e-5, clip_norm=1.0)
