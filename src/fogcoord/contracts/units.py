"""Units shared by every service.

Money inside the ledger is integer micro-tokens; ``Decimal`` only at the edges, never float
arithmetic on balances. Work is measured in GFLOP-equivalents derived from wasmtime fuel.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICRO_PER_TOKEN = 1_000_000
"""One token is 1,000,000 micro-tokens."""

FUEL_PER_GFLOP = 1_000_000_000
"""wasmtime fuel units per GFLOP-equivalent.

wasmtime charges one unit of fuel per executed WebAssembly operator (most cost exactly one), so one
unit is one abstract operation; a billion of them is counted as one GFLOP of work. The compute
module measures how this relates to wall time on a given machine; billing uses only this constant,
which any verifier can reproduce exactly.
"""

GFLOP_PER_GFLOP_HOUR = 3_600
"""A GFLOP-hour is one GFLOPS sustained for an hour: 3,600 GFLOP of verified work."""

MAX_MICRO = 2**63 - 1
"""Largest amount any ledger field can hold (a signed 64-bit column)."""


def to_micro(tokens: Decimal | int | str | float) -> int:
    """Tokens to micro-tokens, exact to the micro-token (half-even beyond that)."""
    try:
        value = Decimal(str(tokens)) if isinstance(tokens, float) else Decimal(tokens)
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a number of tokens: {tokens!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite number of tokens: {tokens!r}")
    return int((value * MICRO_PER_TOKEN).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def to_tokens(micro: int) -> Decimal:
    return Decimal(micro) / MICRO_PER_TOKEN


def fuel_to_gflop(fuel: int) -> float:
    return fuel / FUEL_PER_GFLOP
