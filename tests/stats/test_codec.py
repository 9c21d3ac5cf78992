"""Chunk codec: exact round trips (any int64 timestamps, any float bits) and realistic sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.stats.codec import CodecError, decimal_scale, decode_chunk, encode_chunk

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
FLOAT_XOR = 0x01


def same(blob: bytes, ts: np.ndarray, vs: np.ndarray) -> bool:
    got_ts, got_vs = decode_chunk(blob)
    return (
        got_ts.dtype == np.int64
        and got_vs.dtype == np.float64
        and np.array_equal(got_ts, ts)
        and np.array_equal(got_vs.view(np.uint64), vs.view(np.uint64))
    )


def regular(n: int, jitter_ms: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * 30_000
    return grid + rng.integers(0, jitter_ms + 1, n)


@given(
    st.lists(
        st.tuples(st.integers(I64_MIN, I64_MAX), st.integers(0, 2**64 - 1)),
        max_size=150,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_timestamps_and_float_bits_round_trip(samples: list[tuple[int, int]]) -> None:
    ts = np.array([t for t, _ in samples], np.int64)
    vs = np.array([b for _, b in samples], np.uint64).view(np.float64)
    assert same(encode_chunk(ts, vs), ts, vs)


@given(
    st.integers(0, 2**41),
    st.lists(st.integers(-5, 5), min_size=1, max_size=130),
    st.integers(0, 6),
    st.lists(st.integers(-(10**9), 10**9), min_size=130, max_size=130),
)
@settings(max_examples=200, deadline=None)
def test_decimal_values_round_trip(
    t0: int, jitter: list[int], digits: int, ints: list[int]
) -> None:
    n = len(jitter)
    ts = t0 + np.arange(n, dtype=np.int64) * 15_000 + np.array(jitter, np.int64)
    vs = np.array(ints[:n], np.float64) / 10.0**digits
    blob = encode_chunk(ts, vs)
    assert same(blob, ts, vs)
    assert not blob[0] & FLOAT_XOR  # kept as scaled integers


def test_special_floats_are_bit_exact() -> None:
    quiet_nan_payload = np.array([0x7FF8_0000_0000_1234], np.uint64).view(np.float64)[0]
    signalling = np.array([0xFFF0_0000_0000_0001], np.uint64).view(np.float64)[0]
    values = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, quiet_nan_payload, signalling, 5e-324, 1.8e308, 1.5]
    )
    ts = regular(values.size)
    assert same(encode_chunk(ts, values), ts, values)
    # -0.0 alone must not pass for the integer 0
    zeros = np.array([0.0, -0.0, 0.0])
    assert same(encode_chunk(ts[:3], zeros), ts[:3], zeros)


def test_decimal_detection_picks_the_fewest_places() -> None:
    assert decimal_scale(np.array([1.0, 2.0, 300.0]))[0] == 0  # type: ignore[index]
    assert decimal_scale(np.array([12.34, 0.5, 7.0]))[0] == 2  # type: ignore[index]
    assert decimal_scale(np.array([0.000001]))[0] == 6  # type: ignore[index]
    assert decimal_scale(np.array([0.1234567])) is None
    assert decimal_scale(np.array([1 / 3])) is None
    assert decimal_scale(np.array([2.0**60])) is None  # beyond exact doubles
    assert decimal_scale(np.array([1.0, np.nan])) is None


def test_empty_and_single_sample() -> None:
    empty_ts, empty_vs = decode_chunk(encode_chunk(np.empty(0, np.int64), np.empty(0)))
    assert empty_ts.size == 0
    assert empty_vs.size == 0
    one_ts, one_vs = np.array([1_700_000_000_123]), np.array([42.5])
    assert same(encode_chunk(one_ts, one_vs), one_ts, one_vs)


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError):
        encode_chunk(np.arange(3), np.zeros(2))


def test_sizes_on_typical_series() -> None:
    n = 120
    ts = regular(n)
    rng = np.random.default_rng(3)
    constant = encode_chunk(ts, np.full(n, 8.0))
    counter = encode_chunk(ts, np.cumsum(rng.poisson(5, n)).astype(np.float64))
    cpu_pct = encode_chunk(ts, np.round(20 + rng.normal(0, 1, n), 1))
    pages = encode_chunk(ts, (2_000_000 + np.cumsum(rng.integers(-200, 200, n))) * 4096.0)
    exact_grid = encode_chunk(ts - ts % 30_000, np.full(n, 1.0))
    assert len(exact_grid) <= 20  # a constant on a perfect grid is all header
    assert len(constant) / n < 0.6  # only the jitter is left
    assert len(counter) / n < 1.2
    assert len(cpu_pct) / n < 1.5
    assert len(pages) / n < 1.8  # the 4 KiB page size is divided out


def test_corrupt_blobs_are_refused() -> None:
    ts = regular(120)
    blob = encode_chunk(ts, np.round(np.linspace(0, 50, 120), 2))
    with pytest.raises(CodecError):
        decode_chunk(b"")
    with pytest.raises(CodecError):
        decode_chunk(bytes([0xF0]) + blob[1:])  # a future version
    with pytest.raises(CodecError):
        decode_chunk(blob[: len(blob) // 2])
    raw = encode_chunk(ts[:2], np.array([1.0, 2.0]))
    with pytest.raises(CodecError):
        decode_chunk(raw + b"\x00")


def test_long_constant_chunk_on_an_exact_grid() -> None:
    ts = 1_700_000_000_000 + np.arange(5_000, dtype=np.int64) * 10_000
    vs = np.full(5_000, 3.25)
    blob = encode_chunk(ts, vs)
    assert len(blob) < 32
    assert same(blob, ts, vs)


def test_wide_bit_widths_round_trip() -> None:
    rng = np.random.default_rng(9)
    for width in (1, 7, 8, 9, 31, 52, 53):
        ints = rng.integers(0, 2**width, 130, dtype=np.int64)
        ts = np.cumsum(rng.integers(1, 2 ** min(width, 40), 130, dtype=np.int64))
        vs = ints.astype(np.float64)
        assert same(encode_chunk(ts, vs), ts, vs)
