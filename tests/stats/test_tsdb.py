"""The metrics store: round trips, summaries against numpy, retention, restart and threads.

Small chunks (10 samples or 10 minutes) and 30-minute rollup periods make a few hundred samples
cross many chunks and periods.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from fogcoord.stats.sketch import QuantileSketch
from fogcoord.stats.tsdb import SeriesStore, Summary, build_chunks
from fogcoord.storage.engine import create_engine

T0 = 1_700_000_000_000
STEP = 30_000
SMALL = {"chunk_samples": 10, "chunk_seconds": 600, "rollup_seconds": 1800}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'stats.db'}")
    try:
        yield eng
    finally:
        eng.dispose()


def samples(n: int, seed: int = 0, start: int = T0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = start + np.arange(n, dtype=np.int64) * STEP + rng.integers(0, 5, n)
    vs = np.round(rng.lognormal(3, 0.5, n), 2)
    vs[rng.random(n) < 0.05] *= -1  # some negatives for the sketch's other side
    return ts, vs


def fill(store: SeriesStore, name: str, ts: np.ndarray, vs: np.ndarray) -> None:
    store.append_many((name, int(t), float(v)) for t, v in zip(ts, vs, strict=True))


def check_summary(s: Summary, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    assert s.count == finite.size
    if not finite.size:
        assert math.isnan(s.min)
        assert math.isnan(s.max)
        assert math.isnan(s.mean)
        return
    assert s.min == finite.min()
    assert s.max == finite.max()
    assert s.sum == pytest.approx(finite.sum(), rel=1e-12, abs=1e-9)
    # rollups merge to exactly the sketch of the window's values
    assert s.sketch == QuantileSketch.of(finite)
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        exact = float(np.quantile(finite, q, method="lower"))
        assert abs(s.quantile(q) - exact) <= 0.01 * abs(exact) * (1 + 1e-9)


WINDOWS = [
    (0, 2**62),  # everything
    (T0 + 5 * STEP + 1, T0 + 777 * STEP),  # cuts chunks at both ends
    (T0, T0 + 3 * 1_800_000),  # whole periods from the first sample
    (T0 + 123 * STEP, T0 + 124 * STEP),  # inside one chunk
    (T0 - 10**9, T0 - 1),  # before everything
    (T0 + 500 * STEP, T0 + 500 * STEP),  # empty
]


@pytest.mark.parametrize(("start", "end"), WINDOWS)
def test_query_and_summary_match_numpy(engine: Engine, start: int, end: int) -> None:
    store = SeriesStore(engine, **SMALL)
    ts, vs = samples(1_000)
    fill(store, "a", ts[:700], vs[:700])
    store.flush()  # 70 chunks in the database
    fill(store, "a", ts[700:], vs[700:])  # 30 pending chunks, none in the head
    fill(store, "a", *samples(5, seed=1, start=int(ts[-1]) + STEP))
    all_ts = np.concatenate([ts, store.query("a", int(ts[-1]) + 1, 2**62)[0]])
    all_vs = np.concatenate([vs, store.query("a", int(ts[-1]) + 1, 2**62)[1]])
    assert all_ts.size == 1_005
    keep = (all_ts >= start) & (all_ts < end)
    got_ts, got_vs = store.query("a", start, end)
    assert np.array_equal(got_ts, all_ts[keep])
    assert np.array_equal(got_vs, all_vs[keep])
    check_summary(store.summary("a", start, end), all_vs[keep])
    store.flush()
    check_summary(store.summary("a", start, end), all_vs[keep])


def test_summaries_of_many_series_with_gaps(engine: Engine) -> None:
    store = SeriesStore(engine, **SMALL)
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, (n, gap_at) in enumerate([(600, None), (300, 100), (50, None), (900, 450)]):
        ts, vs = samples(n, seed=i)
        if gap_at is not None:  # two hours without samples: periods with no rollup in between
            ts[gap_at:] += 4 * 1_800_000
        data[f"s{i}"] = (ts, vs)
        fill(store, f"s{i}", ts, vs)
        store.flush()
    windows = [(T0 + 7 * STEP, T0 + 800 * STEP), (0, 2**62), (T0 + 3_600_000, T0 + 9_000_000)]
    for start, end in windows:
        got = store.summaries([*data, "missing"], start, end)
        assert got["missing"].count == 0
        for name, (ts, vs) in data.items():
            check_summary(got[name], vs[(ts >= start) & (ts < end)])


def test_chunks_seal_by_count_and_by_span(engine: Engine) -> None:
    store = SeriesStore(engine, chunk_samples=4, chunk_seconds=60)
    for t in (0, 10_000, 20_000, 30_000, 40_000):  # the fourth sample seals a full chunk
        store.append("x", t, 1.0)
    assert store.stats()["pending_chunks"] == 1
    store.append("x", 200_000, 2.0)  # over 60 s after the head's first sample
    assert store.stats()["pending_chunks"] == 2
    assert store.seal_due(200_000 + 59_999) == 0
    assert store.seal_due(200_000 + 60_000) == 1
    assert store.flush() == 3
    assert store.stats()["chunks"] == 3
    assert store.flush() == 0


def test_out_of_order_and_duplicates_are_dropped(engine: Engine) -> None:
    store = SeriesStore(engine, **SMALL)
    assert store.append("x", 1_000, 1.0)
    assert not store.append("x", 1_000, 2.0)
    assert not store.append("x", 999, 3.0)
    assert store.append_many([("x", 2_000, 4.0), ("x", 1_500, 5.0), ("y", 1, 6.0)]) == 2
    assert store.stats()["dropped"] == 3
    ts, vs = store.query("x", 0, 10_000)
    assert ts.tolist() == [1_000, 2_000]
    assert vs.tolist() == [1.0, 4.0]


def test_non_finite_values_are_kept_but_not_summarised(engine: Engine) -> None:
    store = SeriesStore(engine, **SMALL)
    vs = np.array([1.0, np.nan, 3.0, np.inf, -np.inf, -0.0] * 5)
    ts = T0 + np.arange(vs.size) * STEP
    fill(store, "x", ts, vs)
    store.close()
    got_ts, got_vs = store.query("x", 0, 2**62)
    assert np.array_equal(got_ts, ts)
    assert np.array_equal(got_vs.view(np.uint64), vs.view(np.uint64))
    check_summary(store.summary("x", 0, 2**62), vs)
    check_summary(store.summary("x", T0 + 3 * STEP, T0 + 4 * STEP), np.array([np.inf]))


def test_retention_compaction(engine: Engine) -> None:
    store = SeriesStore(engine, **SMALL)
    ts, vs = samples(1_000)
    fill(store, "a", ts, vs)
    fill(store, "b", ts[:300], vs[:300])
    store.close()
    cut = int(ts[555])  # mid-chunk and mid-period
    # chunks of 10: those ending before the cut go, the one holding it stays whole
    deleted = store.compact(cut)
    assert deleted == 55 + 30
    left_ts, _left_vs = store.query("a", 0, 2**62)
    assert np.array_equal(left_ts, ts[550:])
    assert store.query("b", 0, 2**62)[0].size == 0
    check_summary(store.summary("a", 0, 2**62), vs[550:])
    check_summary(store.summary("a", cut, 2**62), vs[555:])
    assert store.compact(cut) == 0
    assert store.stats()["chunks"] == 45


def test_restart_sees_sealed_data(engine: Engine) -> None:
    store = SeriesStore(engine, **SMALL)
    store.register("a", "gauge", "a gauge")
    ts, vs = samples(333)
    fill(store, "a", ts, vs)
    store.close()  # seals the 3-sample head too
    again = SeriesStore(engine, **SMALL)
    got_ts, got_vs = again.query("a", 0, 2**62)
    assert np.array_equal(got_ts, ts)
    assert np.array_equal(got_vs, vs)
    check_summary(again.summary("a", 0, 2**62), vs)
    assert again.series_names() == ["a"]
    assert again.describe("a") == ("gauge", "a gauge")
    assert not again.append("a", int(ts[-1]), 1.0)  # already stored
    assert again.append("a", int(ts[-1]) + 1, 1.0)


def test_unflushed_heads_are_lost_on_crash(engine: Engine) -> None:
    store = SeriesStore(engine, **SMALL)
    ts, vs = samples(25)
    fill(store, "a", ts, vs)
    store.flush()  # two chunks written, five samples only in the head
    crashed = SeriesStore(engine, **SMALL)
    assert crashed.query("a", 0, 2**62)[0].size == 20


def test_insert_chunks_matches_appending(engine: Engine, tmp_path: Path) -> None:
    ts, vs = samples(345)
    appended = SeriesStore(engine, **SMALL)
    fill(appended, "a", ts, vs)
    appended.close()
    other = create_engine(f"sqlite:///{tmp_path / 'bulk.db'}")
    try:
        bulk = SeriesStore(other, **SMALL)
        chunks = build_chunks("a", ts, vs, chunk_samples=10, chunk_seconds=600)
        assert bulk.insert_chunks(chunks) == len(chunks)
        assert bulk.stats() == appended.stats()
        a, b = appended.summary("a", 0, 2**62), bulk.summary("a", 0, 2**62)
        assert (a.count, a.sum, a.min, a.max) == (b.count, b.sum, b.min, b.max)
        assert a.sketch == b.sketch
        with pytest.raises(ValueError):
            bulk.insert_chunks(chunks[:1])  # not after what the store holds
    finally:
        other.dispose()


def test_store_contract(backend_engine: Engine) -> None:
    store = SeriesStore(backend_engine, **SMALL)
    store.register("node.cpu", "gauge", "CPU %")
    store.register("node.cpu", "gauge", "CPU percent")
    store.register("node.tasks", "counter")
    cpu_ts, cpu = samples(250, seed=4)
    tasks = np.cumsum(np.arange(250) % 3).astype(np.float64)
    rows = [("node.cpu", int(t), float(v)) for t, v in zip(cpu_ts, cpu, strict=True)]
    rows += [("node.tasks", int(t), float(v)) for t, v in zip(cpu_ts, tasks, strict=True)]
    assert store.append_many(rows) == 500
    assert store.flush() == 50
    assert store.describe("node.cpu") == ("gauge", "CPU percent")
    assert store.series_names("node.t") == ["node.tasks"]
    got_ts, got_vs = store.query("node.cpu", int(cpu_ts[17]), int(cpu_ts[201]))
    assert np.array_equal(got_ts, cpu_ts[17:201])
    assert np.array_equal(got_vs, cpu[17:201])
    window = (int(cpu_ts[3]) + 1, int(cpu_ts[240]))
    both = store.summaries(["node.cpu", "node.tasks"], *window)
    check_summary(both["node.cpu"], cpu[4:240])
    check_summary(both["node.tasks"], tasks[4:240])
    stats = store.stats()
    assert stats["chunks"] == 50
    assert stats["samples"] == 500
    assert 0 < stats["bytes_per_sample"] < 4
    assert store.compact(int(cpu_ts[100])) == 20
    check_summary(store.summary("node.cpu", 0, 2**62), cpu[100:])
    store.close()
    again = SeriesStore(backend_engine, **SMALL)
    check_summary(again.summary("node.tasks", 0, 2**62), tasks[100:])
    assert again.series_names() == ["node.cpu", "node.tasks"]


def test_threads_append_flush_and_read_together(engine: Engine) -> None:
    store = SeriesStore(engine, **SMALL)
    errors: list[BaseException] = []
    per_thread = 600
    done = threading.Event()

    def writer(i: int) -> None:
        try:
            ts, vs = samples(per_thread, seed=i)
            for k in range(0, per_thread, 25):
                fill(store, f"t{i}", ts[k : k + 25], vs[k : k + 25])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set():
                store.flush()
                for s in store.summaries([f"t{i}" for i in range(4)], 0, 2**62).values():
                    assert s.count == s.sketch.count
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert not errors
    store.close()
    for i in range(4):
        check_summary(store.summary(f"t{i}", 0, 2**62), samples(per_thread, seed=i)[1])
