"""``stats.bytes_per_sample`` and ``stats.query_30d``: the metrics store's size and summary speed.

**The mix.** What one coordinator node exports every 30 s, per 200 series: 6 request-latency
histograms (9 cumulative ``le`` buckets in ms, ``+Inf``, ``_count`` and ``_sum`` in ms with 2
decimals; 0.2-30 requests a scrape, lognormal latencies with medians of 5-200 ms), 48 counters
(bytes, tasks, rare errors, CPU seconds with 2 decimals), 60 gauges with noise (CPU % with 1
decimal, memory in 4 KiB pages, temperatures, queue depths, devices online, load averages at
full double precision, free disk) and 20 constants (limits, ``up``). Timestamps sit on a 30 s
grid plus the scraper's lateness, ``|N(0, 1.5 ms)|`` rounded to the millisecond.

**stats.bytes_per_sample** (B): 200 series x 2 days (1.15 M samples) appended through
``append_many`` one scrape at a time, sealed into 120-sample chunks and flushed; the value is
the encoded chunk data over the samples. Baseline, same run and chunks: zstd (same level, no
frame magic) over each chunk's raw 16-byte samples (int64 timestamp + float64 value). The
rollup columns (chunk and daily sketches) are logged on top.

**stats.query_30d** (ms): 1,000 series of the mix x 30 days at 30 s (86,400 samples each, 86.4 M
in all). All but the newest 40 samples of each series are cut and encoded by the store's own
:func:`~fogcoord.stats.tsdb.build_chunks` (in two worker processes) and bulk-loaded with
``SeriesStore.insert_chunks`` -- appending 86 M samples one by one (about 0.45 M a second, as
the first figure logs) would add three minutes and measure nothing more here; the newest 40 go
through ``append_many`` and stay in the heads, as in the live service. The value: the median of
three runs of a ``get_performance_stats``-like query -- ``summaries()`` of all 1,000 series over
the 30 days up to 15 minutes after the last sample (so the window cuts each series' first
chunk, which is decoded, and starts and ends mid-day, so partial days come from chunk rollups),
then count, mean, p50/p95/p99, min and max of each. Baseline, same run: the same statistics
(exact percentiles) from every sample, each chunk decoded (``query``), for 100 of the series,
times 10 -- decoding all 720,000 chunks would add another 20 s and tell nothing more. The
rollup answers are checked against the exact ones (counts, min and max equal; quantiles
within the sketch's 1 %).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
import zstandard

from benchmarks.harness import Figure, Unit, log
from fogcoord.stats.codec import ZSTD_LEVEL, decode_chunk
from fogcoord.stats.tsdb import Chunk, SeriesStore, build_chunks, chunks_t
from fogcoord.storage.engine import create_engine

FIGURES = ("stats.bytes_per_sample", "stats.query_30d")
UNITS: dict[str, Unit] = {"stats.bytes_per_sample": "B", "stats.query_30d": "ms"}
TIMEOUT_S = 900.0

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

START_MS = 1_700_000_000_000  # mid-day (UTC), so a 30-day window cuts two days
INTERVAL_MS = 30_000
SIZE_SERIES = 200
SIZE_SAMPLES = 2 * 2_880
QUERY_SERIES = 1_000
QUERY_SAMPLES = 30 * 2_880
BASELINE_SERIES = 100
HEAD_SAMPLES = 40
BYTES_TARGET = 1.6
QUERY_TARGET_MS = 1_000.0
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500)


# --- the mix ---------------------------------------------------------------------------------


def _f(x: npt.ArrayLike) -> F64:
    return np.asarray(x, np.float64)


def _timestamps(rng: np.random.Generator, n: int) -> I64:
    offset = int(rng.integers(0, INTERVAL_MS))
    late = np.rint(np.abs(rng.normal(0.0, 1.5, n))).astype(np.int64)
    return START_MS + offset + np.arange(n, dtype=np.int64) * INTERVAL_MS + late


def _histogram(rng: np.random.Generator, n: int, name: str) -> list[tuple[str, str, F64]]:
    rate = 10 ** rng.uniform(-0.7, 1.5)
    median = 10 ** rng.uniform(0.7, 2.3)
    per_scrape = rng.poisson(rate, n)
    centi_ms = np.rint(rng.lognormal(np.log(median), 0.6, int(per_scrape.sum())) * 100)
    scrape = np.repeat(np.arange(n), per_scrape)
    out: list[tuple[str, str, F64]] = []
    for le in BUCKETS_MS:
        hits = np.bincount(scrape, weights=centi_ms <= le * 100, minlength=n)
        out.append((f"{name}_bucket_le_{le}", "counter", _f(np.cumsum(hits))))
    total = np.cumsum(per_scrape).astype(np.float64)
    out.append((f"{name}_bucket_le_inf", "counter", total))
    out.append((f"{name}_count", "counter", total.copy()))
    sums = np.bincount(scrape, weights=centi_ms, minlength=n)
    out.append((f"{name}_sum", "counter", _f(np.cumsum(sums) / 100)))
    return out


def _counter(rng: np.random.Generator, n: int, kind: int) -> F64:
    if kind == 0:  # bytes
        return np.cumsum(rng.poisson(10 ** rng.uniform(3, 6), n)).astype(np.float64)
    if kind == 1:  # tasks
        return np.cumsum(rng.poisson(10 ** rng.uniform(-1, 1), n)).astype(np.float64)
    if kind == 2:  # errors
        return np.cumsum(rng.poisson(10 ** rng.uniform(-3, -1), n)).astype(np.float64)
    busy = rng.uniform(0.02, 0.6)  # CPU seconds, 2 decimals
    return _f(np.cumsum(np.rint(np.abs(rng.normal(busy * 30, busy * 5, n)) * 100)) / 100)


def _gauge(rng: np.random.Generator, n: int, kind: int) -> F64:
    if kind == 0:  # CPU %
        noisy = rng.uniform(2, 60) + rng.normal(0, rng.uniform(0.5, 5), n)
        return _f(np.round(np.clip(noisy, 0, 100), 1))
    if kind == 1:  # memory in pages
        pages = rng.uniform(1e8, 8e9) // 4096 + np.cumsum(np.rint(rng.normal(0, 250, n)))
        return _f(pages * 4096)
    if kind == 2:  # temperature
        return _f(np.round(rng.uniform(35, 70) + rng.normal(0, 0.3, n), 1))
    if kind == 3:  # queue depth
        return rng.poisson(rng.uniform(0, 20), n).astype(np.float64)
    if kind == 4:  # devices online
        steps = rng.choice(np.array([-1, 0, 0, 0, 0, 0, 0, 0, 0, 1]), n)
        return np.maximum(0, rng.integers(5, 500) + np.cumsum(steps)).astype(np.float64)
    if kind == 5:  # load average: an exponentially weighted mean of run-queue lengths
        alpha = 1 - np.exp(-30 / 60)
        weights = alpha * (1 - alpha) ** np.arange(64)
        runnable = np.maximum(0, rng.uniform(0.2, 4) + rng.normal(0, 0.5, n + 63)).round()
        return _f(np.convolve(runnable, weights, mode="valid")[:n])
    blocks = rng.uniform(1e10, 1e12) // 4096 - np.cumsum(rng.poisson(2, n))  # free disk
    return _f(blocks * 4096)


def realistic_mix(
    n_series: int, n_samples: int, seed: int = 7
) -> Iterator[tuple[str, str, I64, F64]]:
    """(name, kind, timestamps, values) of the mix in the module docstring, one at a time."""
    rng = np.random.default_rng(seed)
    made = 0
    node = 0
    while made < n_series:
        items: list[tuple[str, str, F64]] = []
        for h in range(6):
            items += _histogram(rng, n_samples, f"n{node}_latency_ms_{h}")
        items += [
            (f"n{node}_counter_{i}", "counter", _counter(rng, n_samples, i % 4)) for i in range(48)
        ]
        items += [(f"n{node}_gauge_{i}", "gauge", _gauge(rng, n_samples, i % 7)) for i in range(60)]
        for i in range(20):
            level = float(rng.choice(np.array([1, 4, 8, 16, 1024, 65536])))
            items.append((f"n{node}_const_{i}", "gauge", np.full(n_samples, level)))
        for name, kind, values in items:
            if made == n_series:
                return
            yield name, kind, _timestamps(rng, n_samples), np.asarray(values, np.float64)
            made += 1
        node += 1


# --- stats.bytes_per_sample ------------------------------------------------------------------


def _zstd_raw(chunks: list[Chunk]) -> int:
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_dict_id=0
    )
    comp = zstandard.ZstdCompressor(compression_params=params)
    total = 0
    for chunk in chunks:
        ts, vs = decode_chunk(chunk.data)
        total += len(comp.compress(ts.tobytes() + vs.tobytes()))
    return total


def measure_size(tmp: Path) -> Figure:
    series = list(realistic_mix(SIZE_SERIES, SIZE_SAMPLES))
    engine = create_engine(f"sqlite:///{tmp / 'size.db'}", synchronous="NORMAL")
    try:
        store = SeriesStore(engine)
        for name, kind, _, _ in series:
            store.register(name, kind)
        names = [s[0] for s in series]
        ts_rows = np.stack([s[2] for s in series]).T.tolist()
        vs_rows = np.stack([s[3] for s in series]).T.tolist()
        started = perf_counter()
        for ts, vs in zip(ts_rows, vs_rows, strict=True):
            store.append_many(zip(names, ts, vs, strict=True))
            store.flush()
        store.close()
        elapsed = perf_counter() - started
        st = store.stats()
        with engine.connect() as conn:
            rows = conn.execute(sa.select(chunks_t.c.data)).scalars().all()
        chunks = [Chunk("", 0, 0, 0, 0.0, None, None, b"", bytes(d)) for d in rows]
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        file_bytes = (tmp / "size.db").stat().st_size
    finally:
        engine.dispose()
    samples = st["samples"]
    raw_zstd = _zstd_raw(chunks) / samples
    per = st["data_bytes"] / samples
    log(
        f"  {SIZE_SERIES} series x {SIZE_SAMPLES} samples = {samples:,} samples in "
        f"{st['chunks']:,} chunks, appended, sealed and flushed in {elapsed:.1f} s "
        f"({samples / elapsed / 1e6:.2f} M samples/s)"
    )
    log(
        f"  data {st['data_bytes']:,} B = {per:.3f} B/sample; raw 16 B/sample, zstd per chunk "
        f"{raw_zstd:.3f} B/sample"
    )
    rollup_b = st["sketch_bytes"] + st["rollup_sketch_bytes"]
    fixed = st["chunks"] * (5 * 8 + 4)  # start, end, sum, min, max and count of each chunk
    log(
        f"  with rollups: chunk sketches {st['sketch_bytes'] / samples:.3f} + daily sketches "
        f"{st['rollup_sketch_bytes'] / samples:.3f} + numeric columns {fixed / samples:.3f} "
        f"-> {(st['data_bytes'] + rollup_b + fixed) / samples:.3f} B/sample; the SQLite file "
        f"(names, indexes, free space) {file_bytes / samples:.3f} B/sample"
    )
    return Figure(
        "stats.bytes_per_sample",
        per,
        "B",
        baseline=raw_zstd,
        target=BYTES_TARGET,
        op="<=",
    )


# --- stats.query_30d -------------------------------------------------------------------------


Tail = list[tuple[str, int, float]]


def _load(store: SeriesStore) -> tuple[int, float]:
    # the mix is generated node by node (200 series), so workers take whole nodes
    per_node = SIZE_SERIES
    started = perf_counter()
    loaded = 0
    # spawned, not forked: this runs in a worker thread, and forking a threaded process can
    # copy a lock another thread holds
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        jobs = [
            pool.submit(_build_node, first, min(per_node, QUERY_SERIES - first))
            for first in range(0, QUERY_SERIES, per_node)
        ]
        for job in jobs:
            batches, tail = job.result()
            for batch in batches:
                loaded += store.insert_chunks(batch)
            store.append_many(tail)
            log(f"  loaded {loaded:,} chunks, {perf_counter() - started:.0f} s")
    return loaded, perf_counter() - started


def _build_node(first: int, count: int) -> tuple[list[list[Chunk]], Tail]:
    """One node's chunks, in batches of 20 series (one insert transaction each), and the
    newest samples of each series, which stay in the heads as the live service's would."""
    rng_seed = 11 + first // SIZE_SERIES
    out: list[list[Chunk]] = []
    batch: list[Chunk] = []
    tail: Tail = []
    cut = QUERY_SAMPLES - HEAD_SAMPLES
    for i, (name, _, ts, vs) in enumerate(realistic_mix(count, QUERY_SAMPLES, seed=rng_seed)):
        series = f"q{first + i:04d}_{name}"
        batch += build_chunks(series, ts[:cut], vs[:cut])
        tail += [(series, int(t), float(v)) for t, v in zip(ts[cut:], vs[cut:], strict=True)]
        if len(batch) >= 20 * 720:
            out.append(batch)
            batch = []
    if batch:
        out.append(batch)
    return out, tail


def _performance_stats(
    store: SeriesStore, names: list[str], start: int, end: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, s in store.summaries(names, start, end).items():
        if s.count:
            q = s.sketch
            out[name] = (
                s.count,
                s.mean,
                q.quantile(0.5),
                q.quantile(0.95),
                q.quantile(0.99),
                s.min,
                s.max,
            )
    return out


def _decoded_stats(store: SeriesStore, names: list[str], start: int, end: int) -> dict[str, Any]:
    """The same statistics, exact, from every sample: each chunk decoded (``query``)."""
    out: dict[str, Any] = {}
    for name in names:
        _, vs = store.query(name, start, end)
        vs = vs[np.isfinite(vs)]
        p50, p95, p99 = np.quantile(vs, [0.5, 0.95, 0.99], method="lower")
        out[name] = (vs.size, vs.mean(), p50, p95, p99, vs.min(), vs.max())
    return out


def measure_query(tmp: Path) -> Figure:
    engine = create_engine(f"sqlite:///{tmp / 'query.db'}", synchronous="NORMAL")
    try:
        store = SeriesStore(engine)
        chunks, load_s = _load(store)
        st = store.stats()
        log(
            f"  {QUERY_SERIES} series x {QUERY_SAMPLES} samples: {st['samples']:,} samples, "
            f"{chunks:,} chunks, {st['rollups']:,} daily rollups, built and loaded in "
            f"{load_s:.0f} s; data {st['bytes_per_sample']:.3f} B/sample"
        )
        names = store.series_names()
        # the 30 days up to a moment 15 minutes after the last sample
        end = START_MS + QUERY_SAMPLES * INTERVAL_MS + 15 * 60_000
        start = end - 30 * 86_400_000
        runs = []
        for _ in range(3):
            t0 = perf_counter()
            result = _performance_stats(store, names, start, end)
            runs.append((perf_counter() - t0) * 1000)
        query_ms = statistics.median(runs)
        log(f"  summaries() of {len(result)} series: {', '.join(f'{r:.0f}' for r in runs)} ms")
        t0 = perf_counter()
        for name in names[:BASELINE_SERIES]:
            store.summary(name, start, end)
        one_by_one = (perf_counter() - t0) * 1000 * len(names) / BASELINE_SERIES
        log(f"  summary() one series at a time: {one_by_one:.0f} ms for all (from 100)")
        t0 = perf_counter()
        exact = _decoded_stats(store, names[:BASELINE_SERIES], start, end)
        decode_ms = (perf_counter() - t0) * 1000 * len(names) / BASELINE_SERIES
        log(
            f"  decoding every chunk: {decode_ms / 1000:.1f} s for all "
            f"(measured on {BASELINE_SERIES} series, times {len(names) // BASELINE_SERIES})"
        )
        worst = 0.0
        for name, want in exact.items():
            got = result[name]
            if got[0] != want[0] or got[5] != want[5] or got[6] != want[6]:
                raise RuntimeError(f"{name}: rollups disagree with the data: {got} vs {want}")
            for g, w in zip(got[2:5], want[2:5], strict=True):
                if w:
                    worst = max(worst, abs(g - w) / abs(w))
        log(f"  worst relative quantile error against exact: {worst:.4f}")
        if worst > store.relative_accuracy * 1.000001:
            raise RuntimeError(f"quantile error {worst} beyond the sketch's accuracy")
    finally:
        engine.dispose()
    return Figure(
        "stats.query_30d",
        query_ms,
        "ms",
        baseline=decode_ms,
        target=QUERY_TARGET_MS,
        op="<",
    )


async def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-stats-") as tmp:
        size = await asyncio.to_thread(measure_size, Path(tmp))
        query = await asyncio.to_thread(measure_query, Path(tmp))
    return [size, query]
