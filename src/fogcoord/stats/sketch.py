"""A mergeable quantile sketch with a relative-accuracy guarantee (DDSketch).

Each value ``v > 0`` falls in the log-spaced bucket ``k = ceil(log_gamma(v))`` with
``gamma = (1 + a) / (1 - a)``; every value in bucket ``k`` lies in ``(gamma**(k-1), gamma**k]``,
so reporting ``2 * gamma**k / (gamma + 1)`` for it is off by at most ``a`` relative to the value
itself. Negative values go to a second set of buckets by magnitude, and values too small to
index (below the smallest normal double) to a zero count. Because a sketch is only bucket
counts, merging two sketches adds their counts and gives exactly the sketch of the combined
data -- which is what lets the metrics store keep one sketch per chunk and per day and answer a
month's percentiles by merging them.

**Rank convention.** ``quantile(q)`` estimates the element at 0-based index ``floor(q * (n-1))``
of the sorted data -- numpy's ``np.quantile(x, q, method="lower")`` -- within relative accuracy
``a``: ``|estimate - exact| <= a * |exact|`` (an exact value below the zero threshold reads 0).
Non-finite values (NaN, infinities) are not counted.

**Encoding.** ``to_bytes`` writes only LEB128 varints: a header, the accuracy, the zero count,
then for each sign the buckets either sparse (first key, gaps, counts) or dense (first key,
counts including zeros), whichever is shorter -- about 1-2 bytes a bucket. Keeping everything a
varint lets :func:`merge_encoded` decode and merge many thousands of sketches in a few numpy
passes over their concatenated bytes, which is how a month-long summary stays fast. zstd over
the body is optional (worth it only for large sketches kept on their own).

Hand-written because no well-kept small library fits: ``ddsketch`` (the reference port) is
pure Python adding one value at a time, still depends on ``six`` and needs protobuf to
serialise; ``fastdigest``/``tdigest``/``pytdigest`` are t-digests, whose error is in rank, not a
relative error on the value; ``datasketches`` offers KLL/REQ, also rank-error sketches. None
merges thousands of serialised sketches in bulk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import zstandard

from fogcoord.stats.codec import (
    CodecError,
    unzigzag,
    varint_decode,
    varint_encode,
    zigzag,
)

__all__ = ["QuantileSketch", "merge_encoded"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

VERSION: Final = 1
_ZSTD_FLAG: Final = 1
_DENSE_FLAG: Final = 1
# below this the log index would reach subnormals, whose spacing breaks the accuracy bound
_TINY: Final = float(np.finfo(np.float64).tiny)
_MAX: Final = float(np.finfo(np.float64).max)
_PPM: Final = 1_000_000


class _Store:
    """Bucket counts for one sign: ``counts[i]`` is bucket ``offset + i``."""

    __slots__ = ("counts", "offset")

    def __init__(self, offset: int = 0, counts: I64 | None = None) -> None:
        self.offset = offset
        self.counts: I64 = np.zeros(0, np.int64) if counts is None else counts

    def total(self) -> int:
        return int(self.counts.sum())

    def copy(self) -> _Store:
        return _Store(self.offset, self.counts.copy())

    def add_keys(self, keys: I64, weights: I64 | None = None) -> None:
        if keys.size == 0:
            return
        lo, hi = int(keys.min()), int(keys.max())
        self._cover(lo, hi)
        binned = np.bincount(keys - self.offset, weights=weights, minlength=self.counts.size)
        self.counts += binned.astype(np.int64) if weights is not None else binned

    def add_store(self, other: _Store) -> None:
        if other.counts.size == 0:
            return
        self._cover(other.offset, other.offset + other.counts.size - 1)
        start = other.offset - self.offset
        self.counts[start : start + other.counts.size] += other.counts

    def _cover(self, lo: int, hi: int) -> None:
        if self.counts.size == 0:
            self.offset = lo
            self.counts = np.zeros(hi - lo + 1, np.int64)
            return
        new_lo = min(lo, self.offset)
        new_hi = max(hi, self.offset + self.counts.size - 1)
        if new_lo == self.offset and new_hi == self.offset + self.counts.size - 1:
            return
        grown = np.zeros(new_hi - new_lo + 1, np.int64)
        grown[self.offset - new_lo : self.offset - new_lo + self.counts.size] = self.counts
        self.offset, self.counts = new_lo, grown

    def nonzero(self) -> tuple[I64, I64]:
        idx = np.flatnonzero(self.counts)
        return idx.astype(np.int64) + self.offset, self.counts[idx]


class QuantileSketch:
    """DDSketch over positive, negative and (near-)zero values; see the module docstring."""

    __slots__ = ("_lg", "_mult", "_neg", "_offset_to_value", "_pos", "_zero", "relative_accuracy")

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError("relative_accuracy must be between 0 and 1")
        self.relative_accuracy = float(relative_accuracy)
        gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._lg = math.log(gamma)
        self._mult = 1.0 / self._lg
        self._offset_to_value = math.log(2.0 / (gamma + 1.0))
        self._pos = _Store()
        self._neg = _Store()
        self._zero = 0

    # --- adding ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._zero + self._pos.total() + self._neg.total()

    def __len__(self) -> int:
        return self.count

    def _keys(self, magnitudes: F64) -> I64:
        return np.ceil(np.log(magnitudes) * self._mult).astype(np.int64)

    def add(self, value: float) -> None:
        """Count one value (ignored when NaN or infinite)."""
        self.add_many(np.array([value], np.float64))

    def add_many(self, values: npt.ArrayLike) -> None:
        """Count every finite value of an array, vectorised."""
        v = np.asarray(values, np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        pos = v[v >= _TINY]
        neg = v[v <= -_TINY]
        self._zero += v.size - pos.size - neg.size
        self._pos.add_keys(self._keys(pos))
        self._neg.add_keys(self._keys(-neg))

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s counts: afterwards this is the sketch of both data sets."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches of different relative accuracy")
        self._zero += other._zero
        self._pos.add_store(other._pos)
        self._neg.add_store(other._neg)

    def copy(self) -> QuantileSketch:
        out = QuantileSketch(self.relative_accuracy)
        out._zero = self._zero
        out._pos = self._pos.copy()
        out._neg = self._neg.copy()
        return out

    # --- reading --------------------------------------------------------------------------

    def _value(self, key: int) -> float:
        return min(math.exp(key * self._lg + self._offset_to_value), _MAX)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 <= q <= 1) under the module's rank convention; NaN if empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be between 0 and 1")
        total = self.count
        if total == 0:
            return math.nan
        rank = q * (total - 1)
        neg = self._neg.counts
        neg_total = int(neg.sum())
        if rank < neg_total:
            # walking the negative buckets from the largest magnitude down
            cum = np.cumsum(neg[::-1])
            i = int(np.searchsorted(cum, rank, side="right"))
            return -self._value(self._neg.offset + neg.size - 1 - i)
        if rank < neg_total + self._zero:
            return 0.0
        cum = np.cumsum(self._pos.counts)
        i = int(np.searchsorted(cum, rank - neg_total - self._zero, side="right"))
        return self._value(self._pos.offset + min(i, cum.size - 1))

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        return [self.quantile(q) for q in qs]

    def buckets(self) -> tuple[int, tuple[I64, I64], tuple[I64, I64]]:
        """(zero count, (positive keys, counts), (negative keys, counts)) of non-empty buckets."""
        return self._zero, self._pos.nonzero(), self._neg.nonzero()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        if other.relative_accuracy != self.relative_accuracy or other._zero != self._zero:
            return False
        for a, b in ((self._pos, other._pos), (self._neg, other._neg)):
            (ka, ca), (kb, cb) = a.nonzero(), b.nonzero()
            if not (np.array_equal(ka, kb) and np.array_equal(ca, cb)):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QuantileSketch(relative_accuracy={self.relative_accuracy}, count={self.count})"

    # --- bytes ----------------------------------------------------------------------------

    def to_bytes(self, *, compress: bool = False) -> bytes:
        """The compact encoding (see the module docstring); ``compress`` adds zstd."""
        ppm = round(self.relative_accuracy * _PPM)
        words: list[int] = []
        if ppm / _PPM == self.relative_accuracy:
            words.append(ppm)
        else:
            bits = int(np.float64(self.relative_accuracy).view(np.uint64))
            words += [0, bits]
        words.append(self._zero)
        body = varint_encode(np.array(words, np.uint64))
        body += _encode_store(self._pos) + _encode_store(self._neg)
        if compress:
            return bytes([VERSION << 1 | _ZSTD_FLAG]) + zstandard.compress(body, 3)
        return bytes([VERSION << 1]) + body

    @classmethod
    def from_bytes(cls, blob: bytes) -> QuantileSketch:
        return merge_encoded([blob])[0]

    @classmethod
    def of(cls, values: npt.ArrayLike, relative_accuracy: float = 0.01) -> QuantileSketch:
        """A sketch of ``values``."""
        s = cls(relative_accuracy)
        s.add_many(values)
        return s


def _encode_store(store: _Store) -> bytes:
    keys, counts = store.nonzero()
    if keys.size == 0:
        return b"\x00"
    first = int(keys[0])
    span = int(keys[-1]) - first + 1
    gaps = np.diff(keys)
    # sparse costs a gap varint per bucket, dense a count varint per empty bucket in between
    sparse_cost = keys.size - 1 + int(np.count_nonzero(gaps >= 128))
    dense_cost = span - keys.size
    head = np.array([0, int(zigzag(np.array([first], np.int64))[0])], np.uint64)
    if dense_cost <= sparse_cost:
        head[0] = span << 1 | _DENSE_FLAG
        dense = np.zeros(span, np.uint64)
        dense[keys - first] = counts.astype(np.uint64)
        return varint_encode(np.concatenate([head, dense]))
    head[0] = keys.size << 1
    return varint_encode(np.concatenate([head, gaps.astype(np.uint64), counts.astype(np.uint64)]))


def _ranges(starts: I64, lengths: I64) -> I64:
    """Concatenated ``arange(s, s + n)`` for every (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    seg_starts = np.cumsum(lengths) - lengths
    return np.repeat(starts - seg_starts, lengths) + np.arange(total, dtype=np.int64)


def merge_encoded(
    blobs: Sequence[bytes],
    groups: npt.ArrayLike | None = None,
    n_groups: int | None = None,
) -> list[QuantileSketch]:
    """Decode many encoded sketches and merge them by group, in a few vectorised passes.

    ``groups[i]`` (default: all 0) is the output sketch ``blobs[i]`` merges into; the result
    has ``n_groups`` sketches (default ``max(groups) + 1``), empty where a group got no blob.
    Every blob must share one relative accuracy.
    """
    n = len(blobs)
    grp: I64 = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
    if grp.shape != (n,):
        raise ValueError("one group per blob")
    if n_groups is None:
        n_groups = int(grp.max()) + 1 if n else 1
    if n == 0:
        return [QuantileSketch() for _ in range(n_groups)]
    parts: list[bytes] = []
    for blob in blobs:
        if not blob or blob[0] >> 1 != VERSION:
            raise CodecError("not a quantile sketch of this version")
        if blob[0] & _ZSTD_FLAG:
            try:
                parts.append(zstandard.decompress(blob[1:]))
            except zstandard.ZstdError as exc:
                raise CodecError(f"corrupt sketch: {exc}") from exc
        else:
            parts.append(blob[1:])
    raw = np.frombuffer(b"".join(parts), np.uint8)
    words = varint_decode(raw).view(np.int64)
    term = (raw < 0x80).astype(np.int64)
    byte_lens = np.fromiter(map(len, parts), np.int64, n)
    if np.any(byte_lens == 0):
        raise CodecError("truncated sketch")
    byte_starts = np.cumsum(byte_lens) - byte_lens
    word_counts = np.add.reduceat(term, byte_starts)
    word_ends = np.cumsum(word_counts)
    p = word_ends - word_counts  # cursor into words, per blob

    def at(index: I64) -> I64:
        if np.any(index >= word_ends):
            raise CodecError("truncated sketch")
        out: I64 = words[index]
        return out

    ppm = at(p)
    accuracy = ppm / _PPM
    explicit = ppm == 0
    if explicit.any():
        accuracy[explicit] = at(p[explicit] + 1).view(np.float64)
    p = p + 1 + explicit
    if np.any(accuracy != accuracy[0]):
        raise ValueError("cannot merge sketches of different relative accuracy")
    sketches = [QuantileSketch(float(accuracy[0])) for _ in range(n_groups)]
    zero = at(p)
    p = p + 1
    zero_per_group = np.bincount(grp, weights=zero, minlength=n_groups)
    for sketch, z in zip(sketches, zero_per_group.tolist(), strict=True):
        sketch._zero = int(z)

    for store_name in ("_pos", "_neg"):
        head = at(p)
        size, dense = head >> 1, (head & _DENSE_FLAG).astype(bool)
        has = size > 0
        first_at = p + 1
        # sparse: first, gaps (size-1), counts (size); dense: first, counts (size)
        gap_len = np.where(has & ~dense, size - 1, 0)
        count_at = first_at + gap_len + has
        p = np.where(has, count_at + size, p + 1)
        if np.any(p > word_ends):
            raise CodecError("truncated sketch")
        if not has.any():
            continue
        first = unzigzag(words[first_at[has]].view(np.uint64))
        steps = np.ones(int(size.sum()), np.int64)
        seg_start = np.cumsum(size) - size
        steps[seg_start[has]] = 0
        sparse_rows = has & ~dense
        gap_pos = _ranges(first_at[sparse_rows] + 1, gap_len[sparse_rows])
        gap_dst = _ranges(seg_start[sparse_rows] + 1, gap_len[sparse_rows])
        steps[gap_dst] = words[gap_pos]
        # keys: the first key of each segment plus the running sum of steps within it
        run = np.cumsum(steps)
        keys = run - np.repeat(run[seg_start[has]], size[has]) + np.repeat(first, size[has])
        counts = words[_ranges(count_at[has], size[has])]
        owner = np.repeat(grp, size)
        _scatter(sketches, store_name, owner, keys, counts)
    if np.any(p != word_ends):
        raise CodecError("trailing bytes after a sketch")
    return sketches


def _scatter(
    sketches: list[QuantileSketch], store_name: str, owner: I64, keys: I64, counts: I64
) -> None:
    """Add (key, count) pairs to each owner's store, one dense bincount for all of them."""
    if owner.size == 0:
        return
    if np.any(owner[1:] < owner[:-1]):
        order = np.argsort(owner, kind="stable")
        owner, keys, counts = owner[order], keys[order], counts[order]
    starts = np.flatnonzero(np.diff(owner, prepend=-1))
    lengths = np.diff(starts, append=owner.size)
    lo = np.minimum.reduceat(keys, starts)
    width = np.maximum.reduceat(keys, starts) - lo + 1
    base = np.cumsum(width) - width
    slot = keys + np.repeat(base - lo, lengths)
    dense = np.bincount(slot, weights=counts, minlength=int(width.sum())).astype(np.int64)
    for g, k0, b, w in zip(
        owner[starts].tolist(), lo.tolist(), base.tolist(), width.tolist(), strict=True
    ):
        store: _Store = getattr(sketches[g], store_name)
        store.add_store(_Store(k0, dense[b : b + w]))
