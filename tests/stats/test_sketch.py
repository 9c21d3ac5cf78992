"""Quantile sketch: the relative-accuracy guarantee, exact merging and the compact encoding.

Rank convention: ``quantile(q)`` estimates ``np.quantile(x, q, method="lower")``, the element at
0-based index ``floor(q * (n - 1))`` of the sorted data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.stats.codec import CodecError
from fogcoord.stats.sketch import QuantileSketch, merge_encoded

ACCURACY = 0.01
QS = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
# the guarantee holds up to rounding in the log of the bucket index
SLACK = 1 + 1e-9

values_st = st.lists(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False),
        st.floats(-1e6, 1e6, allow_subnormal=False),
        st.just(0.0),
    ),
    min_size=1,
    max_size=300,
)


def within(estimate: float, exact: float, accuracy: float = ACCURACY) -> bool:
    return abs(estimate - exact) <= accuracy * abs(exact) * SLACK


@given(values_st)
@settings(max_examples=300, deadline=None)
def test_quantiles_within_relative_accuracy(values: list[float]) -> None:
    x = np.array(values)
    sketch = QuantileSketch.of(x, ACCURACY)
    assert sketch.count == x.size
    for q in QS:
        exact = float(np.quantile(x, q, method="lower"))
        assert within(sketch.quantile(q), exact), (q, exact, sketch.quantile(q))


@given(values_st, values_st, st.sampled_from([0.001, 0.01, 0.05]))
@settings(max_examples=200, deadline=None)
def test_merge_equals_sketch_of_concatenation(a: list[float], b: list[float], acc: float) -> None:
    left = QuantileSketch.of(a, acc)
    left.merge(QuantileSketch.of(b, acc))
    assert left == QuantileSketch.of(a + b, acc)


@given(values_st, st.booleans())
@settings(max_examples=200, deadline=None)
def test_bytes_round_trip(values: list[float], compress: bool) -> None:
    sketch = QuantileSketch.of(values)
    again = QuantileSketch.from_bytes(sketch.to_bytes(compress=compress))
    assert again == sketch
    assert again.quantiles(QS) == sketch.quantiles(QS)


@given(st.lists(values_st, min_size=1, max_size=12), st.data())
@settings(max_examples=100, deadline=None)
def test_merge_encoded_by_group(parts: list[list[float]], data: st.DataObject) -> None:
    groups = data.draw(st.lists(st.integers(0, 3), min_size=len(parts), max_size=len(parts)))
    merged = merge_encoded([QuantileSketch.of(p).to_bytes() for p in parts], groups, 4)
    for g in range(4):
        mine = [v for p, pg in zip(parts, groups, strict=True) if pg == g for v in p]
        assert merged[g] == QuantileSketch.of(mine)


def test_empty_and_non_finite() -> None:
    sketch = QuantileSketch()
    assert sketch.count == 0
    assert math.isnan(sketch.quantile(0.5))
    sketch.add(math.nan)
    sketch.add(math.inf)
    sketch.add_many(np.array([-math.inf, math.nan]))
    assert sketch.count == 0
    sketch.add(3.0)
    assert sketch.count == 1
    assert within(sketch.quantile(0.0), 3.0)
    assert QuantileSketch.from_bytes(QuantileSketch().to_bytes()) == QuantileSketch()


def test_signs_and_zero_order() -> None:
    x = np.array([-1000.0, -1.0, 0.0, 0.0, 1e-300, 2.0, 1e300])
    sketch = QuantileSketch.of(x)
    for i in range(x.size):
        q = i / (x.size - 1)
        assert within(sketch.quantile(q), float(np.sort(x)[i]))


def test_accuracy_not_in_parts_per_million_round_trips() -> None:
    sketch = QuantileSketch.of([1.0, 2.0, 3.0], relative_accuracy=0.0123456789)
    again = QuantileSketch.from_bytes(sketch.to_bytes())
    assert again.relative_accuracy == 0.0123456789
    assert again == sketch


def test_mismatched_accuracy_and_bad_input() -> None:
    with pytest.raises(ValueError):
        QuantileSketch(0.0)
    with pytest.raises(ValueError):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))
    with pytest.raises(ValueError):
        merge_encoded([QuantileSketch(0.01).to_bytes(), QuantileSketch(0.02).to_bytes()])
    with pytest.raises(ValueError):
        QuantileSketch().quantile(1.5)
    with pytest.raises(CodecError):
        QuantileSketch.from_bytes(b"\x7f")
    blob = QuantileSketch.of(np.arange(1, 200.0)).to_bytes()
    with pytest.raises(CodecError):
        QuantileSketch.from_bytes(blob[:-3])


def test_encoding_is_compact() -> None:
    rng = np.random.default_rng(1)
    latencies = rng.lognormal(np.log(20), 0.3, 120)
    sketch = QuantileSketch.of(latencies)
    n_buckets = len(sketch.buckets()[1][0])
    assert len(sketch.to_bytes()) <= 2 * n_buckets + 8


def test_add_many_is_vectorised() -> None:
    x = np.random.default_rng(2).lognormal(0, 2, 1_000_000)
    sketch = QuantileSketch()
    sketch.add_many(x)  # one call: a million values in well under the test timeout
    assert sketch.count == x.size
    assert within(sketch.quantile(0.99), float(np.quantile(x, 0.99, method="lower")))
