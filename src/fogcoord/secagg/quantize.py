"""Fixed-point encoding of real vectors into the ring Z_{2^b} that secure aggregation sums in.

Masking (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017) hides a vector by adding uniformly random ring elements, so inputs must be
ring elements too, and the sum of every client's input must not wrap around the ring or the
server decodes garbage. A float vector is therefore

1. clipped coordinate-wise to ``[-clip, clip]`` (the bound every client agrees on),
2. shifted and scaled onto the integers ``0 .. L`` with ``L = floor((2^b - 1) / n)`` levels,
   where ``n`` is the number of participants, so that even ``n`` inputs all at the maximum sum
   to at most ``2^b - 1``: overflow is impossible by construction, not merely unlikely,
3. rounded, stochastically (``floor(v + u)``, ``u ~ U[0, 1)``: unbiased, error below one step)
   or deterministically (nearest, error at most half a step).

The server subtracts the masks and decodes ``sum * step - m * clip`` for the ``m`` inputs that
were summed, with ``step = 2 * clip / L``. Per coordinate the decoded sum differs from the sum of
the clipped inputs by at most ``m * step`` (stochastic) or ``m * step / 2`` (deterministic), plus
float64 rounding; :meth:`Quantizer.error_bound` states it. Stochastic rounding is the usual
choice in federated learning (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020, sec. 6; Kairouz et al., "The Distributed Discrete Gaussian Mechanism",
ICML 2021) because its error averages out instead of adding up.

Rings of up to 32 bits live in ``uint32`` and up to 64 bits in ``uint64``; numpy's unsigned
arithmetic wraps modulo ``2^32`` / ``2^64``, which reduces correctly modulo any smaller power of
two, so the ring reduction is a single mask at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Rounding = Literal["stochastic", "deterministic"]

MAX_BITS = 64
#: levels per input the automatic ring size aims for: float32 has a 24-bit significand
PRECISION_BITS = 24


def ring_dtype(bits: int) -> np.dtype[np.unsignedinteger]:
    """The little-endian unsigned integer type that holds ``Z_{2^bits}``."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def ring_mask(bits: int) -> int:
    return (1 << bits) - 1


def levels_for(bits: int, clients: int) -> int:
    """Levels per input such that ``clients`` inputs at the maximum cannot overflow ``2^bits``."""
    if clients < 1:
        raise ValueError(f"need at least one client, got {clients}")
    ring_dtype(bits)
    return ((1 << bits) - 1) // clients


def auto_bits(clients: int) -> int:
    """The word-sized ring that gives every input at least ``2^24`` levels: 32 bits up to 255
    clients, 64 bits beyond (both cost the same numpy operations per word)."""
    for bits in (32, 64):
        if levels_for(bits, clients) >= 1 << PRECISION_BITS:
            return bits
    raise ValueError(f"{clients} clients are too many for a {MAX_BITS}-bit ring")


@dataclass(frozen=True)
class Quantizer:
    """The encoding every party of one round agrees on (all fields travel in the setup)."""

    clip: float
    bits: int
    clients: int
    rounding: Rounding = "stochastic"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive finite bound, got {self.clip}")
        if self.rounding not in ("stochastic", "deterministic"):
            raise ValueError(f"rounding must be stochastic or deterministic, not {self.rounding}")
        if self.levels < 1:
            raise OverflowError(
                f"a {self.bits}-bit ring cannot hold the sum of {self.clients} inputs: "
                f"{self.clients} x max value > 2^{self.bits} - 1; use at least "
                f"{self.clients.bit_length()} bits"
            )

    @property
    def levels(self) -> int:
        return levels_for(self.bits, self.clients)

    @property
    def step(self) -> float:
        """The real value of one quantisation level."""
        return 2.0 * self.clip / self.levels

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        return ring_dtype(self.bits)

    def error_bound(self, count: int) -> float:
        """Largest per-coordinate error of a decoded sum of ``count`` inputs."""
        rounding = 1.0 if self.rounding == "stochastic" else 0.5
        # float64 scaling and decoding add a few ulps of the clip per input on top
        return count * (rounding * self.step + 2.0**-48 * self.clip)

    def encode(
        self, vector: npt.ArrayLike, rng: np.random.Generator | None = None
    ) -> npt.NDArray[np.unsignedinteger]:
        """Clip, scale and round one input onto ``0 .. levels`` (a ring element)."""
        x = np.asarray(vector)
        if x.ndim != 1:
            raise ValueError(f"secure aggregation sums flat vectors, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise TypeError(f"expected a real vector, got dtype {x.dtype}")
        v = np.clip(x, -self.clip, self.clip, dtype=np.float64)
        if np.isnan(v).any():
            raise ValueError("cannot aggregate NaN values")
        v += self.clip
        v *= self.levels / (2.0 * self.clip)
        if self.rounding == "stochastic":
            v += (rng if rng is not None else np.random.default_rng()).random(v.shape[0])
            np.floor(v, out=v)
        else:
            np.rint(v, out=v)
        q: npt.NDArray[np.unsignedinteger] = v.astype(self.dtype)
        # v + u can round up to levels + 1 when u is within an ulp of 1
        np.minimum(q, self.dtype.type(self.levels), out=q)
        return q

    def decode_sum(
        self, total: npt.NDArray[np.unsignedinteger], count: int
    ) -> npt.NDArray[np.float64]:
        """The real sum of ``count`` encoded inputs from their ring sum."""
        if not 0 <= count <= self.clients:
            raise OverflowError(
                f"{count} inputs may have wrapped a ring sized for {self.clients} clients"
            )
        out = total.astype(np.float64)
        out *= self.step
        out -= count * self.clip
        return out
