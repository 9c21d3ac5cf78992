"""Shamir t-of-n secret sharing (Shamir, "How to Share a Secret", CACM 1979) of 32-byte secrets.

A secret ``s`` becomes the constant term of a random polynomial ``f`` of degree ``t - 1`` over
the prime field GF(p); holder ``i`` gets the share ``(x_i, f(x_i))`` with a distinct non-zero
``x_i``. Any ``t`` shares determine ``f`` and hence ``s = f(0)`` by Lagrange interpolation at 0;
any ``t - 1`` shares are consistent with every possible secret (for each candidate there is
exactly one polynomial through it and the shares), so they reveal nothing.

Secure aggregation (Bonawitz et al., CCS 2017; Bell et al., CCS 2020) shares two secrets per
client: the self-mask seed and the pairwise-mask private key, both 32 bytes. The field is the
Mersenne prime ``p = 2^521 - 1``, so every 256-bit secret is a field element as is (a prime
just under 2^256, such as 2^255 - 19, would not hold all of them), and Python's integers do the
arithmetic. Shares are encoded as 66-byte big-endian integers.

This is hand-written because no well-kept Python library offers Shamir sharing over a large
prime field: the maintained ones share bytes over GF(2^8) or are abandoned. The random
coefficients come from :mod:`secrets` (the OS CSPRNG).

:func:`combine` interpolates from exactly ``threshold`` shares -- the first ``threshold`` it is
given -- so a caller never pays for, nor silently depends on, shares beyond the threshold.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = (PRIME.bit_length() + 7) // 8


@dataclass(frozen=True)
class Share:
    """One holder's share: the point ``(x, f(x))``."""

    x: int
    y: int

    def y_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, y: bytes) -> Share:
        if len(y) != SHARE_BYTES:
            raise ValueError(f"a share value is {SHARE_BYTES} bytes, got {len(y)}")
        value = int.from_bytes(y, "big")
        if value >= PRIME:
            raise ValueError("share value is not a field element")
        return cls(x, value)


def _check_x(x: int) -> None:
    if not 0 < x < PRIME:
        raise ValueError(f"share abscissa must be in 1..p-1, got {x}")


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` at the abscissae ``xs``; any ``threshold`` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    if len(xs) < threshold:
        raise ValueError(f"{len(xs)} shares cannot meet a threshold of {threshold}")
    if len(set(xs)) != len(xs):
        raise ValueError("share abscissae must be distinct")
    for x in xs:
        _check_x(x)
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """The secret from the first ``threshold`` of ``shares`` (Lagrange interpolation at 0).

    Raises ``ValueError`` when fewer than ``threshold`` shares are given, when two of the used
    shares have the same abscissa, or when the result is not a 32-byte secret. A share replaced
    by garbage almost surely shows this way; Shamir sharing itself authenticates nothing, so a
    small deliberate change yields a wrong secret silently -- callers that must know check the
    result against a commitment, as the secure-aggregation server does.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares are fewer than the threshold {threshold}")
    used = shares[:threshold]
    xs = [s.x for s in used]
    if len(set(xs)) != threshold:
        raise ValueError("shares with the same abscissa cannot be combined")
    for x in xs:
        _check_x(x)
    # l_i(0) = prod_{j != i} x_j / (x_j - x_i); the abscissae are small, so the numerators and
    # denominators are small integers until reduced
    numerators = []
    denominators = []
    for i, xi in enumerate(xs):
        num = 1
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num *= xj
                den *= xj - xi
        numerators.append(num)
        denominators.append(den % PRIME)
    # 1/den_i = (prod_{j != i} den_j) / prod_j den_j: prefix and suffix products give the
    # numerators, so one field inversion serves every share
    prefix = [1]
    for d in denominators:
        prefix.append(prefix[-1] * d % PRIME)
    suffix = [1]
    for d in reversed(denominators):
        suffix.append(suffix[-1] * d % PRIME)
    suffix.reverse()
    inverse_common = pow(prefix[-1], -1, PRIME)
    total = 0
    for i, (share, num) in enumerate(zip(used, numerators, strict=True)):
        total += share.y * num * (prefix[i] * suffix[i + 1] % PRIME)
    value = total % PRIME * inverse_common % PRIME
    if value >> (8 * SECRET_BYTES):
        raise ValueError("shares are inconsistent: they do not reconstruct a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")
