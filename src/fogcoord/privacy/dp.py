"""Differential privacy for one participant's contribution: clip it, then add calibrated noise.

A mechanism is (epsilon, delta)-differentially private when adding or removing one participant's
contribution changes the probability of any outcome by at most a factor ``e**epsilon`` plus
``delta``. :func:`apply_dp` makes a release private in two steps:

1. **Clip.** The contribution is scaled down, never up, so that its norm is at most
   ``clip_norm``. That bounds the *sensitivity*: how far one participant can move the result
   (``clip_norm`` under the add-or-remove-one neighbouring relation, the same one the budget
   accountant in :mod:`fogcoord.privacy.budgets` uses).
2. **Add noise** scaled to that sensitivity:

   * ``"gaussian"`` (the default): the L2 norm is clipped and Gaussian noise of standard
     deviation :func:`gaussian_sigma` is added. Sigma is the smallest that gives (epsilon, delta)
     exactly, by the *analytic* Gaussian mechanism of Balle & Wang (2018), computed by
     dp-accounting's ``get_sigma_gaussian``. The classic bound
     ``sqrt(2 ln(1.25/delta)) / epsilon`` is looser (it adds more noise) and holds only for
     epsilon < 1.
   * ``"laplace"``: pure epsilon-DP (``delta`` is not used). The Laplace mechanism is calibrated
     to the **L1** sensitivity, so for this mechanism ``clip_norm`` bounds the **L1** norm, and
     Laplace noise of scale ``clip_norm / epsilon`` is added to every coordinate.

Noise comes from a ``numpy.random.Generator``. Tests inject a seeded one; by default every call
seeds a fresh generator from the operating system's entropy, because noise that can be predicted
can be subtracted, and then it protects nothing. (The generator is PCG64, not a cryptographic
one, and floating-point noise has known side channels (Mironov 2012); the noise hides the
contribution from the other participants and the model's users, not from an attacker who can
observe the process that draws it.)

Inputs are numpy arrays of any floating dtype, or torch tensors when torch is installed; the
result has the same type, dtype, shape (and device, for a tensor). ``float16`` is computed in
``float32`` and ``longdouble`` in ``float64``, the widest precisions numpy's generator draws.
"""

from __future__ import annotations

import functools
import math
import numbers
import secrets
import sys
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt

from fogcoord.contracts.errors import ValidationFailed

Mechanism = Literal["gaussian", "laplace"]
MECHANISMS: tuple[Mechanism, ...] = ("gaussian", "laplace")

FloatArray = npt.NDArray[np.floating[Any]]
T = TypeVar("T")


def clip_l2(x: FloatArray, bound: float) -> FloatArray:
    """``x`` scaled down so that its L2 norm is at most ``bound`` (a new array, same dtype).

    A vector already within the bound is returned unchanged (as a copy): clipping never scales up.
    """
    _check_bound(bound, "bound")
    arr = np.asarray(x)
    work = _work_dtype(arr.dtype)
    flat = np.ascontiguousarray(arr, dtype=work).reshape(-1)
    scale = _scale(_l2(flat), bound)
    out = flat * work.type(scale) if scale < 1.0 else flat.copy()
    return out.reshape(arr.shape).astype(arr.dtype, copy=False)


def clip_l1(x: FloatArray, bound: float) -> FloatArray:
    """``x`` scaled down so that its L1 norm is at most ``bound`` (a new array, same dtype)."""
    _check_bound(bound, "bound")
    arr = np.asarray(x)
    work = _work_dtype(arr.dtype)
    flat = np.ascontiguousarray(arr, dtype=work).reshape(-1)
    scale = _scale(_l1(flat), bound)
    out = flat * work.type(scale) if scale < 1.0 else flat.copy()
    return out.reshape(arr.shape).astype(arr.dtype, copy=False)


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Standard deviation of Gaussian noise that makes an L2-``sensitivity`` query (eps, delta)-DP.

    The analytic Gaussian mechanism (Balle & Wang 2018), via dp-accounting: e.g. epsilon 1,
    delta 1e-5 needs sigma 3.7306 per unit of sensitivity.
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    _check_bound(sensitivity, "sensitivity")
    return _unit_sigma(float(epsilon), float(delta)) * float(sensitivity)


@functools.lru_cache(maxsize=256)
def _unit_sigma(epsilon: float, delta: float) -> float:
    # A root search costs about half a millisecond, more than the noise for a small update, and
    # a deployment uses a handful of (epsilon, delta) pairs: remember them.
    from dp_accounting import get_sigma_gaussian  # type: ignore[import-untyped]

    return float(get_sigma_gaussian(epsilon, delta))


def laplace_scale(epsilon: float, sensitivity: float = 1.0) -> float:
    """Scale ``b`` of Laplace noise that makes an L1-``sensitivity`` query epsilon-DP."""
    _check_epsilon(epsilon)
    _check_bound(sensitivity, "sensitivity")
    return float(sensitivity) / float(epsilon)


def apply_dp(
    data: T,
    epsilon: float,
    *,
    delta: float,
    clip_norm: float,
    mechanism: Mechanism = "gaussian",
    rng: np.random.Generator | None = None,
) -> T:
    """``data`` clipped to ``clip_norm`` and noised for (``epsilon``, ``delta``)-DP.

    ``data`` is one participant's contribution: the whole array is clipped as one vector. Its
    type, dtype and shape are kept. ``delta`` is ignored by the Laplace mechanism (pure epsilon),
    whose clip is an L1 clip. Raises :class:`ValidationFailed` for parameters out of range, a
    non-float array or non-finite values.
    """
    _check_epsilon(epsilon)
    _check_bound(clip_norm, "clip_norm")
    if mechanism not in MECHANISMS:
        raise ValidationFailed("mechanism", f"must be one of {', '.join(MECHANISMS)}")
    if mechanism == "gaussian":
        _check_delta(delta)
    if rng is None:
        rng = np.random.default_rng(secrets.randbits(128))
    torch = _torch_of(data)
    if torch is not None:
        return cast(T, _apply_torch(torch, data, epsilon, delta, clip_norm, mechanism, rng))
    if not isinstance(data, np.ndarray):
        raise ValidationFailed("data", f"must be a numpy array or a torch tensor, not {type(data)}")
    return cast(T, _apply_numpy(data, epsilon, delta, clip_norm, mechanism, rng))


def _apply_numpy(
    arr: np.ndarray[Any, Any],
    epsilon: float,
    delta: float,
    clip_norm: float,
    mechanism: Mechanism,
    rng: np.random.Generator,
) -> FloatArray:
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValidationFailed("data", f"must be a floating-point array, not {arr.dtype}")
    work = _work_dtype(arr.dtype)
    flat = np.ascontiguousarray(arr, dtype=work).reshape(-1)
    if mechanism == "gaussian":
        norm = _l2(flat)
        scale = _scale(norm, clip_norm)
        sigma = gaussian_sigma(epsilon, delta, clip_norm)
        # The noise is drawn straight into the result and the rest is done in place: beyond the
        # draw itself, only three passes over memory, no temporaries.
        out = rng.standard_normal(flat.size, dtype=work.type)
        if scale < 1.0 and 8 * sigma / scale + norm > float(np.finfo(work).max) / 2:
            # The fused form below would overflow for data this far out of the bound.
            out *= work.type(sigma)
            out += flat * work.type(scale)
        elif scale < 1.0:
            # scale * (x + noise * sigma / scale) == scale * x + sigma * noise
            out *= work.type(sigma / scale)
            out += flat
            out *= work.type(scale)
        else:
            out *= work.type(sigma)
            out += flat
    else:
        scale = _scale(_l1(flat), clip_norm)
        # numpy draws Laplace noise in float64 only; this path is not the hot one.
        noise = rng.laplace(0.0, laplace_scale(epsilon, clip_norm), flat.size)
        out = noise.astype(work, copy=False)
        out += flat * work.type(scale) if scale < 1.0 else flat
    result: FloatArray = out.reshape(arr.shape).astype(arr.dtype, copy=False)
    return result


def _apply_torch(
    torch: Any,
    tensor: Any,
    epsilon: float,
    delta: float,
    clip_norm: float,
    mechanism: Mechanism,
    rng: np.random.Generator,
) -> Any:
    if not tensor.is_floating_point():
        raise ValidationFailed("data", f"must be a floating-point tensor, not {tensor.dtype}")
    host = tensor.detach().to("cpu")
    if host.dtype not in (torch.float16, torch.float32, torch.float64):
        # bfloat16 and friends have no numpy counterpart: compute in float32.
        host = host.to(torch.float32)
    noised = _apply_numpy(host.numpy(), epsilon, delta, clip_norm, mechanism, rng)
    return torch.from_numpy(noised).to(device=tensor.device, dtype=tensor.dtype)


def _torch_of(data: object) -> Any:
    # torch is optional and heavy: only a tensor's own module being loaded can make data one.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, torch.Tensor):
        return torch
    return None


def _work_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if not np.issubdtype(dtype, np.floating):
        raise ValidationFailed("data", f"must be a floating-point array, not {dtype}")
    if dtype == np.float32 or dtype == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _l2(flat: FloatArray) -> float:
    # dot runs in BLAS without a temporary; float32 accumulation is ample for a clip.
    with np.errstate(over="ignore"):
        norm = math.sqrt(float(np.dot(flat, flat)))
    if math.isinf(norm) and np.isfinite(flat).all():
        # The squares overflowed, not the values: take the norm of the rescaled vector.
        peak = float(np.abs(flat).max())
        norm = peak * float(np.linalg.norm(flat.astype(np.float64) / peak))
    return norm


def _l1(flat: FloatArray) -> float:
    return float(np.abs(flat).sum(dtype=np.float64))


def _scale(norm: float, bound: float) -> float:
    if not math.isfinite(norm):
        raise ValidationFailed("data", "contains values that are not finite")
    return 1.0 if norm <= bound else bound / norm


def _check_epsilon(epsilon: float) -> None:
    _check_bound(epsilon, "epsilon")


def _check_delta(delta: float) -> None:
    if not (_is_real(delta) and 0 < delta < 1):
        raise ValidationFailed("delta", "must be strictly between 0 and 1")


def _check_bound(bound: float, name: str) -> None:
    if not (_is_real(bound) and 0 < bound < math.inf):
        raise ValidationFailed(name, "must be a positive finite number")


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)
