"""The metrics store: compressed chunks with rollups, over SQLite or PostgreSQL.

Samples of a series collect in an in-memory **head** until it is sealed into a **chunk** --
when it holds ``chunk_samples`` samples, when the next sample would stretch it over
``chunk_seconds``, or when :meth:`SeriesStore.seal_due` finds it that old. Sealing encodes the
samples (:mod:`fogcoord.stats.codec`, about 1.4 bytes a sample) and computes the chunk's
**rollup**: count, sum, min, max and a quantile sketch (:mod:`fogcoord.stats.sketch`) of its
finite values. Sealed chunks wait in memory until :meth:`SeriesStore.flush` writes them, all in
one transaction, to ``stats_chunks``.

Rollups come in two levels. Each chunk row carries its own, and ``stats_rollups`` keeps one row
per series and period (a day by default) merging the rollups of every chunk that starts in it,
updated in the same transaction as the chunks. A summary over a window takes whole periods from
``stats_rollups``, the chunks of partial periods from their chunk rollups, and decodes only the
(at most two) chunks the window cuts, plus the head. A month of 30-second samples for a
thousand series is thus about 30,000 period rows instead of 720,000 chunks or 86 million
samples, and their sketches merge in a few vectorised passes
(:func:`fogcoord.stats.sketch.merge_encoded`).

**Durability.** Heads and sealed-but-unflushed chunks live only in memory: a crash loses at most
the unsealed heads (up to ``chunk_seconds`` of samples) and whatever was sealed since the last
flush. :meth:`SeriesStore.close` seals every head and flushes. A restarted store sees every
flushed chunk and refuses samples at or before a series' last stored timestamp (out-of-order
and duplicate samples are dropped and counted, as in Prometheus), so chunks never overlap.

**Non-finite values.** NaN and infinities are stored and returned by :meth:`SeriesStore.query`
bit for bit, but rollups (count included) describe the finite values only.

**Concurrency.** One lock guards the heads, the pending chunks and the database work, so a
reader never sees a chunk twice or not at all while it moves from memory to the database; the
service calls the store from worker threads. One process writes a store's tables.

The store is hand-written because the Python time-series options either are servers of their
own (Prometheus, InfluxDB, TimescaleDB needs a PostgreSQL extension) or keep raw rows; this
store has to run embedded on SQLite and on plain PostgreSQL.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fogcoord.stats.codec import decode_chunk, encode_chunk
from fogcoord.stats.sketch import QuantileSketch, merge_encoded

__all__ = ["Chunk", "SeriesStore", "Summary", "build_chunk", "build_chunks"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

metadata = sa.MetaData()

series_t = sa.Table(
    "stats_series",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("help", sa.Text, nullable=False, default=""),
)

chunks_t = sa.Table(
    "stats_chunks",
    metadata,
    sa.Column("series", sa.Text, primary_key=True),
    sa.Column("start_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("end_ms", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("sum", sa.Float, nullable=False),
    sa.Column("min", sa.Float),
    sa.Column("max", sa.Float),
    sa.Column("sketch", sa.LargeBinary, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    # retention deletes by end, and a window finds the chunks that reach into it
    sa.Index("ix_stats_chunks_end", "series", "end_ms"),
)

rollups_t = sa.Table(
    "stats_rollups",
    metadata,
    sa.Column("series", sa.Text, primary_key=True),
    sa.Column("period_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("start_ms", sa.BigInteger, nullable=False),
    sa.Column("end_ms", sa.BigInteger, nullable=False),
    sa.Column("chunks", sa.Integer, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("sum", sa.Float, nullable=False),
    sa.Column("min", sa.Float),
    sa.Column("max", sa.Float),
    sa.Column("sketch", sa.LargeBinary, nullable=False),
)

# bound parameters per statement, under SQLite's and psycopg's limits
_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class Chunk:
    """One sealed chunk: its encoded samples and the rollup of its finite values."""

    series: str
    start_ms: int
    end_ms: int
    count: int
    sum: float
    min: float | None
    max: float | None
    sketch: bytes
    data: bytes

    def row(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "sketch": self.sketch,
            "data": self.data,
        }


@dataclass(frozen=True)
class Summary:
    """Statistics of a series' finite values over a window."""

    count: int
    sum: float
    min: float
    max: float
    sketch: QuantileSketch

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        return self.sketch.quantile(q)

    @classmethod
    def empty(cls, relative_accuracy: float = 0.01) -> Summary:
        return cls(0, 0.0, math.nan, math.nan, QuantileSketch(relative_accuracy))


def build_chunk(series: str, ts: I64, values: F64, relative_accuracy: float = 0.01) -> Chunk:
    """Encode one chunk and compute its rollup."""
    finite = values[np.isfinite(values)]
    sketch = QuantileSketch(relative_accuracy)
    sketch.add_many(finite)
    return Chunk(
        series=series,
        start_ms=int(ts[0]),
        end_ms=int(ts[-1]),
        count=int(finite.size),
        sum=float(finite.sum()),
        min=float(finite.min()) if finite.size else None,
        max=float(finite.max()) if finite.size else None,
        sketch=sketch.to_bytes(),
        data=encode_chunk(ts, values),
    )


def build_chunks(
    series: str,
    timestamps_ms: npt.ArrayLike,
    values: npt.ArrayLike,
    *,
    chunk_samples: int = 120,
    chunk_seconds: float = 3600,
    relative_accuracy: float = 0.01,
) -> list[Chunk]:
    """Cut strictly increasing samples into chunks exactly as appending them would."""
    ts = np.ascontiguousarray(timestamps_ms, np.int64)
    vs = np.ascontiguousarray(values, np.float64)
    if ts.ndim != 1 or ts.shape != vs.shape:
        raise ValueError("timestamps and values must be 1-d arrays of the same length")
    if ts.size > 1 and not np.all(ts[1:] > ts[:-1]):
        raise ValueError("timestamps must be strictly increasing")
    chunk_ms = int(chunk_seconds * 1000)
    out = []
    start = 0
    while start < ts.size:
        by_span = int(np.searchsorted(ts, ts[start] + chunk_ms, side="left"))
        end = min(start + chunk_samples, by_span, ts.size)
        out.append(build_chunk(series, ts[start:end], vs[start:end], relative_accuracy))
        start = end
    return out


@dataclass
class _Head:
    ts: list[int] = field(default_factory=list)
    vs: list[float] = field(default_factory=list)
    last: int | None = None  # newest timestamp accepted, sealed or not


@dataclass
class _Part:
    """Rollup of one piece of a summary: a period row, a chunk, or raw values."""

    count: int
    sum: float
    min: float | None
    max: float | None


class SeriesStore:
    """Time series of ``(timestamp ms, float)`` samples; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        *,
        chunk_samples: int = 120,
        chunk_seconds: float = 3600,
        rollup_seconds: float = 86400,
        relative_accuracy: float = 0.01,
    ) -> None:
        if chunk_samples < 1 or chunk_seconds <= 0 or rollup_seconds <= 0:
            raise ValueError("chunk and rollup sizes must be positive")
        self.engine = engine
        self.chunk_samples = chunk_samples
        self.chunk_seconds = chunk_seconds
        self.chunk_ms = int(chunk_seconds * 1000)
        self.period_ms = int(rollup_seconds * 1000)
        self.relative_accuracy = relative_accuracy
        self.dropped = 0
        self._lock = threading.RLock()
        self._heads: dict[str, _Head] = {}
        self._pending: list[Chunk] = []
        metadata.create_all(engine)
        with engine.connect() as conn:
            last = conn.execute(
                sa.select(chunks_t.c.series, sa.func.max(chunks_t.c.end_ms)).group_by(
                    chunks_t.c.series
                )
            ).all()
        for name, end_ms in last:
            self._heads[name] = _Head(last=int(end_ms))

    # --- writing ----------------------------------------------------------------------------

    def register(self, name: str, kind: str, help: str = "") -> None:
        """Record (or update) a series' kind (gauge, counter...) and help text."""
        with self._lock, self.engine.begin() as conn:
            updated = conn.execute(
                series_t.update().where(series_t.c.name == name).values(kind=kind, help=help)
            ).rowcount
            if not updated:
                conn.execute(series_t.insert().values(name=name, kind=kind, help=help))

    def describe(self, name: str) -> tuple[str, str] | None:
        """The registered (kind, help) of a series, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(series_t.c.kind, series_t.c.help).where(series_t.c.name == name)
            ).first()
        return (row[0], row[1]) if row is not None else None

    def append(self, series: str, ts_ms: int, value: float) -> bool:
        """Add one sample; False (and counted in ``dropped``) when not after the last one."""
        with self._lock:
            return self._append(series, int(ts_ms), float(value))

    def append_many(self, rows: Iterable[tuple[str, int, float]]) -> int:
        """Add a batch of samples under one lock; the number accepted."""
        accepted = 0
        with self._lock:
            for series, ts_ms, value in rows:
                accepted += self._append(series, int(ts_ms), float(value))
        return accepted

    def _append(self, series: str, ts: int, value: float) -> bool:
        head = self._heads.get(series)
        if head is None:
            head = self._heads[series] = _Head()
        elif head.last is not None and ts <= head.last:
            self.dropped += 1
            return False
        if head.ts and ts - head.ts[0] >= self.chunk_ms:
            self._seal(series, head)
        head.ts.append(ts)
        head.vs.append(value)
        head.last = ts
        if len(head.ts) >= self.chunk_samples:
            self._seal(series, head)
        return True

    def _seal(self, series: str, head: _Head) -> None:
        ts = np.array(head.ts, np.int64)
        vs = np.array(head.vs, np.float64)
        self._pending.append(build_chunk(series, ts, vs, self.relative_accuracy))
        head.ts, head.vs = [], []

    def seal_due(self, now_ms: int) -> int:
        """Seal every head whose first sample is ``chunk_seconds`` old; how many were sealed."""
        sealed = 0
        with self._lock:
            for series, head in self._heads.items():
                if head.ts and now_ms - head.ts[0] >= self.chunk_ms:
                    self._seal(series, head)
                    sealed += 1
        return sealed

    def seal_all(self) -> int:
        """Seal every non-empty head now."""
        sealed = 0
        with self._lock:
            for series, head in self._heads.items():
                if head.ts:
                    self._seal(series, head)
                    sealed += 1
        return sealed

    def flush(self) -> int:
        """Write every sealed chunk, with its period rollups, in one transaction; how many."""
        with self._lock:
            batch = self._pending
            if not batch:
                return 0
            with self.engine.begin() as conn:
                self._write(conn, batch)
            # only once committed: a failed write leaves the chunks pending for the next flush
            self._pending = []
            return len(batch)

    def insert_chunks(self, chunks: Sequence[Chunk]) -> int:
        """Bulk-load chunks built by :func:`build_chunks`, in one transaction with the pending.

        For back-filling and benchmarks: the chunks of each series must be in time order and
        start after everything the store holds for it (heads are sealed first).
        """
        with self._lock:
            for chunk in chunks:
                head = self._heads.get(chunk.series)
                if head is None:
                    head = self._heads[chunk.series] = _Head()
                if head.ts:
                    self._seal(chunk.series, head)
                if head.last is not None and chunk.start_ms <= head.last:
                    raise ValueError(f"{chunk.series}: chunk at {chunk.start_ms} is not new")
                head.last = chunk.end_ms
            batch = [*self._pending, *chunks]
            with self.engine.begin() as conn:
                self._write(conn, batch)
            self._pending = []
            return len(chunks)

    def _write(self, conn: Connection, batch: Sequence[Chunk]) -> None:
        conn.execute(chunks_t.insert(), [c.row() for c in batch])
        self._update_rollups(conn, batch)

    def _period(self, ts: int) -> int:
        return ts - ts % self.period_ms

    def _update_rollups(self, conn: Connection, batch: Sequence[Chunk]) -> None:
        by_key: dict[tuple[str, int], list[Chunk]] = defaultdict(list)
        for c in batch:
            by_key[(c.series, self._period(c.start_ms))].append(c)
        keys = list(by_key)
        existing: dict[tuple[str, int], tuple[Any, ...]] = {}
        r = rollups_t.c
        key_col = sa.tuple_(r.series, r.period_ms)
        old_cols = (r.series, r.period_ms, r.start_ms, r.end_ms, r.chunks, r.count, r.sum, r.min)
        for part in _batches(keys, _BATCH):
            found = conn.execute(sa.select(*old_cols, r.max, r.sketch).where(key_col.in_(part)))
            for row in found:
                existing[(row[0], row[1])] = tuple(row[2:])
            if existing:
                conn.execute(rollups_t.delete().where(key_col.in_(part)))
        blobs: list[bytes] = []
        groups: list[int] = []
        rows: list[dict[str, Any]] = []
        for g, key in enumerate(keys):
            chunks = by_key[key]
            parts = [_Part(c.count, c.sum, c.min, c.max) for c in chunks]
            blobs += [c.sketch for c in chunks]
            groups += [g] * len(chunks)
            start = min(c.start_ms for c in chunks)
            end = max(c.end_ms for c in chunks)
            n_chunks = len(chunks)
            old = existing.get(key)
            if old is not None:
                o_start, o_end, o_chunks, o_count, o_sum, o_min, o_max, o_sketch = old
                parts.append(_Part(o_count, o_sum, o_min, o_max))
                blobs.append(bytes(o_sketch))
                groups.append(g)
                start, end = min(start, o_start), max(end, o_end)
                n_chunks += o_chunks
            total = _combine(parts)
            rows.append(
                {
                    "series": key[0],
                    "period_ms": key[1],
                    "start_ms": start,
                    "end_ms": end,
                    "chunks": n_chunks,
                    "count": total.count,
                    "sum": total.sum,
                    "min": total.min,
                    "max": total.max,
                }
            )
        sketches = merge_encoded(blobs, groups, len(keys))
        for new, sketch in zip(rows, sketches, strict=True):
            new["sketch"] = sketch.to_bytes()
        if rows:
            conn.execute(rollups_t.insert(), rows)

    def compact(self, older_than_ms: int) -> int:
        """Delete every chunk that ends before ``older_than_ms`` (retention); how many.

        Period rollups that held a deleted chunk are rebuilt from the chunks left in them.
        """
        with self._lock:
            self._pending = [c for c in self._pending if c.end_ms >= older_than_ms]
            r, c = rollups_t.c, chunks_t.c
            with self.engine.begin() as conn:
                affected = {
                    (row[0], row[1])
                    for row in conn.execute(
                        sa.select(r.series, r.period_ms).where(r.start_ms < older_than_ms)
                    )
                }
                deleted = conn.execute(chunks_t.delete().where(c.end_ms < older_than_ms)).rowcount
                conn.execute(rollups_t.delete().where(r.start_ms < older_than_ms))
                if affected:
                    lo = min(p for _, p in affected)
                    hi = max(p for _, p in affected) + self.period_ms
                    cols = (c.series, c.start_ms, c.end_ms, c.count, c.sum, c.min, c.max)
                    survivors: list[Chunk] = []
                    for part in _batches(sorted({s for s, _ in affected}), _BATCH):
                        rows = conn.execute(
                            sa.select(*cols, c.sketch)
                            .where(c.series.in_(part), c.start_ms >= lo, c.start_ms < hi)
                            .order_by(c.series, c.start_ms)
                        )
                        survivors += [
                            Chunk(*row[:7], sketch=bytes(row[7]), data=b"")
                            for row in rows
                            if (row[0], self._period(row[1])) in affected
                        ]
                    if survivors:
                        self._update_rollups(conn, survivors)
            return int(deleted)

    def close(self) -> None:
        """Seal every head and flush: nothing appended is lost."""
        with self._lock:
            self.seal_all()
            self.flush()

    def __enter__(self) -> SeriesStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------

    def series_names(self, prefix: str = "") -> list[str]:
        """Every series registered or holding samples, sorted."""
        with self._lock:
            names = set(self._heads)
            with self.engine.connect() as conn:
                names.update(conn.execute(sa.select(series_t.c.name)).scalars())
        return sorted(n for n in names if n.startswith(prefix))

    def query(self, series: str, start_ms: int, end_ms: int) -> tuple[I64, F64]:
        """Raw samples with ``start_ms <= t < end_ms``, in time order."""
        with self._lock:
            c = chunks_t.c
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(c.data)
                    .where(c.series == series, c.end_ms >= start_ms, c.start_ms < end_ms)
                    .order_by(c.start_ms)
                ).all()
            blobs = [bytes(r[0]) for r in rows]
            blobs += [
                p.data
                for p in self._pending
                if p.series == series and p.end_ms >= start_ms and p.start_ms < end_ms
            ]
            parts = [decode_chunk(b) for b in blobs]
            head = self._heads.get(series)
            if head is not None and head.ts:
                parts.append((np.array(head.ts, np.int64), np.array(head.vs, np.float64)))
        if not parts:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        ts = np.concatenate([p[0] for p in parts])
        vs = np.concatenate([p[1] for p in parts])
        keep = (ts >= start_ms) & (ts < end_ms)
        return ts[keep], vs[keep]

    def summary(self, series: str, start_ms: int, end_ms: int) -> Summary:
        """Count, sum, min, max and sketch of the finite values with ``start_ms <= t < end_ms``."""
        return self.summaries([series], start_ms, end_ms)[series]

    def summaries(self, names: Sequence[str], start_ms: int, end_ms: int) -> dict[str, Summary]:
        """:meth:`summary` of many series at once: a few queries and one sketch merge for all.

        Whole periods inside the window come from ``stats_rollups``, the other chunks inside
        it from their own rollups; only chunks the window cuts are decoded.
        """
        names = list(dict.fromkeys(names))
        index = {n: i for i, n in enumerate(names)}
        acc = _Accumulator(len(names))
        with self._lock, self.engine.connect() as conn:
            covered = self._period_rollups(conn, names, index, start_ms, end_ms, acc)
            rows = self._window_chunks(conn, names, covered, start_ms, end_ms)
            for name, start, count, total, lo, hi, sketch, data in rows:
                if self._period(start) in covered.get(name, ()):
                    continue
                if data is None:
                    acc.add_rollup(index[name], count, total, lo, hi, bytes(sketch))
                else:
                    ts, vs = decode_chunk(bytes(data))
                    acc.add_raw(index[name], vs[(ts >= start_ms) & (ts < end_ms)])
            for p in self._pending:
                g_or_none = index.get(p.series)
                if g_or_none is None or p.end_ms < start_ms or p.start_ms >= end_ms:
                    continue
                if p.start_ms >= start_ms and p.end_ms < end_ms:
                    acc.add_rollup(g_or_none, p.count, p.sum, p.min, p.max, p.sketch)
                else:
                    ts, vs = decode_chunk(p.data)
                    acc.add_raw(g_or_none, vs[(ts >= start_ms) & (ts < end_ms)])
            for name, g in index.items():
                head = self._heads.get(name)
                if head is not None and head.ts:
                    ts, vs = np.array(head.ts, np.int64), np.array(head.vs, np.float64)
                    acc.add_raw(g, vs[(ts >= start_ms) & (ts < end_ms)])
        return dict(zip(names, acc.finish(self.relative_accuracy), strict=True))

    def _period_rollups(
        self,
        conn: Connection,
        names: list[str],
        index: dict[str, int],
        start_ms: int,
        end_ms: int,
        acc: _Accumulator,
    ) -> dict[str, set[int]]:
        """Add the period rows wholly inside the window; the periods used, per series."""
        covered: dict[str, set[int]] = defaultdict(set)
        if end_ms <= start_ms:
            return covered
        r = rollups_t.c
        for part in _batches(names, _BATCH):
            rows = conn.execute(
                sa.select(r.series, r.period_ms, r.count, r.sum, r.min, r.max, r.sketch).where(
                    r.series.in_(part),
                    r.period_ms >= self._period(start_ms),
                    r.period_ms < end_ms,
                    r.start_ms >= start_ms,
                    r.end_ms < end_ms,
                )
            )
            for name, period, count, total, lo, hi, sketch in rows:
                covered[name].add(period)
                acc.add_rollup(index[name], count, total, lo, hi, bytes(sketch))
        return covered

    def _window_chunks(
        self,
        conn: Connection,
        names: list[str],
        covered: dict[str, set[int]],
        start_ms: int,
        end_ms: int,
    ) -> Iterator[Any]:
        """Chunk rollups (and data of the chunks the window cuts) outside covered periods."""
        if end_ms <= start_ms:
            return
        c = chunks_t.c
        cut = sa.or_(c.start_ms < start_ms, c.end_ms >= end_ms)
        cols = (c.series, c.start_ms, c.count, c.sum, c.min, c.max, c.sketch)
        select = sa.select(*cols, sa.case((cut, c.data), else_=sa.null()).label("data"))
        in_window = sa.and_(c.end_ms >= start_ms, c.start_ms < end_ms)
        # series whose covered periods are one contiguous run need only the chunks around it;
        # the others (gaps, none covered) are read across the window and filtered by period
        by_run: dict[tuple[int, int], list[str]] = defaultdict(list)
        whole: list[str] = []
        for name in names:
            periods = covered.get(name)
            if periods:
                lo, hi = min(periods), max(periods)
                if (hi - lo) // self.period_ms + 1 == len(periods):
                    by_run[(lo, hi + self.period_ms)].append(name)
                    continue
            whole.append(name)
        for (lo, hi), run_names in by_run.items():
            for part in _batches(run_names, _BATCH):
                outside = sa.or_(c.start_ms < lo, c.start_ms >= hi)
                yield from conn.execute(select.where(c.series.in_(part), in_window, outside))
        for part in _batches(whole, _BATCH):
            yield from conn.execute(select.where(c.series.in_(part), in_window))

    def stats(self) -> dict[str, Any]:
        """Chunks, samples (finite), bytes of encoded data and sketches, and per sample."""
        with self._lock, self.engine.connect() as conn:
            c = chunks_t.c
            n, samples, data_bytes, sketch_bytes = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(c.count), 0),
                    sa.func.coalesce(sa.func.sum(sa.func.length(c.data)), 0),
                    sa.func.coalesce(sa.func.sum(sa.func.length(c.sketch)), 0),
                )
            ).one()
            rollups, rollup_bytes = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(sa.func.length(rollups_t.c.sketch)), 0),
                )
            ).one()
            head_samples = sum(len(h.ts) for h in self._heads.values())
            pending = len(self._pending)
        samples = int(samples)
        return {
            "chunks": int(n),
            "samples": samples,
            "data_bytes": int(data_bytes),
            "sketch_bytes": int(sketch_bytes),
            "bytes_per_sample": int(data_bytes) / samples if samples else 0.0,
            "rollups": int(rollups),
            "rollup_sketch_bytes": int(rollup_bytes),
            "pending_chunks": pending,
            "head_samples": head_samples,
            "dropped": self.dropped,
        }


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _combine(parts: Iterable[_Part]) -> _Part:
    count, total = 0, 0.0
    lo: float | None = None
    hi: float | None = None
    for p in parts:
        count += p.count
        total += p.sum
        if p.min is not None:
            lo = p.min if lo is None else min(lo, p.min)
        if p.max is not None:
            hi = p.max if hi is None else max(hi, p.max)
    return _Part(count, total, lo, hi)


class _Accumulator:
    """Per-series totals of a summary, with the sketches merged in one pass at the end."""

    def __init__(self, n: int) -> None:
        self.count = [0] * n
        self.sum = [0.0] * n
        self.min = [math.inf] * n
        self.max = [-math.inf] * n
        self.blobs: list[bytes] = []
        self.groups: list[int] = []
        self.raw: list[tuple[int, F64]] = []

    def add_rollup(
        self, g: int, count: int, total: float, lo: float | None, hi: float | None, sketch: bytes
    ) -> None:
        if not count:
            return
        self.count[g] += count
        self.sum[g] += total
        if lo is not None and lo < self.min[g]:
            self.min[g] = lo
        if hi is not None and hi > self.max[g]:
            self.max[g] = hi
        self.blobs.append(sketch)
        self.groups.append(g)

    def add_raw(self, g: int, values: F64) -> None:
        finite = values[np.isfinite(values)]
        if not finite.size:
            return
        self.count[g] += int(finite.size)
        self.sum[g] += float(finite.sum())
        self.min[g] = min(self.min[g], float(finite.min()))
        self.max[g] = max(self.max[g], float(finite.max()))
        self.raw.append((g, finite))

    def finish(self, relative_accuracy: float) -> list[Summary]:
        n = len(self.count)
        if self.blobs:
            sketches = merge_encoded(self.blobs, self.groups, n)
        else:
            sketches = [QuantileSketch(relative_accuracy) for _ in range(n)]
        for g, values in self.raw:
            sketches[g].add_many(values)
        return [
            Summary(
                count=self.count[g],
                sum=self.sum[g],
                min=self.min[g] if self.count[g] else math.nan,
                max=self.max[g] if self.count[g] else math.nan,
                sketch=sketches[g],
            )
            for g in range(n)
        ]
