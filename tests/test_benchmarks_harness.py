"""The benchmark harness itself, with fake figure modules: it never runs the real benchmarks."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from benchmarks import harness, registry
from benchmarks.harness import ROW_KEYS, Figure, Op, load, main, meets, percentile

ISSUE_FIGURES = {
    "bus.route_latency.p50",
    "bus.route_latency.p99",
    "bus.throughput",
    "bus.nats_route_latency.p50",
    "bus.nats_route_latency.p99",
    "orchestration.startup",
    "orchestration.health_cycle",
    "orchestration.rss",
    "orchestration.serve_rss",
    "ledger.throughput",
    "ledger.payment_latency.p50",
    "ledger.payment_latency.p95",
    "ledger.payment_latency.p99",
    "ledger.throughput_pg",
    "ledger.verify_balance.p50",
    "ledger.verify_balance.p99",
    "ledger.reward_calc",
    "harvesting.select_100k",
    "harvesting.allocate_10k",
    "harvesting.discovery_cycle",
    "harvesting.rss_per_device",
    "harvesting.fleet_10k.p50",
    "harvesting.fleet_10k.p99",
    "market.price_quote",
    "market.settle_10k",
    "market.revenue_settlement.p50",
    "market.revenue_settlement.p99",
    "compute.fuel_overhead",
    "jobs.pipeline",
    "jobs.pipeline.submitted",
    "jobs.pipeline.auctioned",
    "jobs.pipeline.allocated",
    "jobs.pipeline.running",
    "jobs.pipeline.verified",
    "jobs.audit_overhead",
    "stats.bytes_per_sample",
    "stats.query_30d",
    "stats.dashboard_latency.p50",
    "stats.dashboard_latency.p95",
    "stats.collect_cycle",
    "privacy.dp_noise_1m",
    "privacy.accounting",
    "privacy.secagg_100x100k.server",
    "privacy.secagg_100x100k.client",
    "privacy.krum_100x1m",
    "onion.circuit_build.p50",
    "onion.stream_throughput",
    "onion.hidden_service_ready",
}


def fake_module(
    name: str,
    figures: tuple[str, ...],
    run: Callable[[], Any],
    *,
    unit: str = "ms",
    **extra: Any,
) -> ModuleType:
    mod = ModuleType(name)
    mod.__dict__.update(FIGURES=figures, UNIT=unit, run=run, **extra)
    return mod


def run_json(
    capsys: pytest.CaptureFixture[str], argv: list[str], modules: list[ModuleType]
) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["--json", *argv], modules=modules)
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert isinstance(rows, list)
    return code, rows, err


class Calls:
    def __init__(self) -> None:
        self.count = 0


def module_a(calls: Calls) -> ModuleType:
    def run() -> list[Figure]:
        calls.count += 1
        return [
            Figure("fake.a.lat.p50", 1.0, "us", baseline=0.5),
            Figure(
                "fake.a.lat.p99",
                3.0,
                "us",
                baseline=2.0,
                target=200,
                op="<",
                ratio_target=3,
                ratio_op="<=",
            ),
        ]

    return fake_module("fake_bench_a", ("fake.a.lat.p50", "fake.a.lat.p99"), run, unit="us")


def module_b(calls: Calls) -> ModuleType:
    async def run() -> list[Figure]:
        calls.count += 1
        await asyncio.sleep(0)
        return [Figure("fake.b.rate", 150_000.0, "/s", baseline=300_000.0, target=2e5, op=">=")]

    return fake_module("fake_bench_b", ("fake.b.rate",), run, unit="/s")


# --- ok computation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "bound", "expected"),
    [
        ("<", 1.0, 2.0, True),
        ("<", 2.0, 2.0, False),
        ("<=", 2.0, 2.0, True),
        ("<=", 2.1, 2.0, False),
        (">", 3.0, 2.0, True),
        (">", 2.0, 2.0, False),
        (">=", 2.0, 2.0, True),
        (">=", 1.9, 2.0, False),
    ],
)
def test_ok_follows_each_comparison(op: Op, value: float, bound: float, expected: bool) -> None:
    assert meets(value, op, bound) is expected
    assert Figure("x", value, "ms", target=bound, op=op).ok is expected


@pytest.mark.parametrize(
    ("op", "ratio_bound", "expected"),
    [("<", 2.0, False), ("<=", 2.0, True), (">", 1.5, True), (">=", 2.5, False)],
)
def test_ratio_target_uses_its_own_comparison(op: Op, ratio_bound: float, expected: bool) -> None:
    fig = Figure("x", 2.0, "us", baseline=1.0, ratio_target=ratio_bound, ratio_op=op)
    assert fig.ratio == 2.0
    assert fig.ok is expected


def test_both_targets_must_hold() -> None:
    def fig(value: float, baseline: float) -> Figure:
        return Figure(
            "x",
            value,
            "us",
            baseline=baseline,
            target=200,
            op="<",
            ratio_target=3,
            ratio_op="<=",
        )

    assert fig(150, 60).ok is True
    assert fig(150, 40).ok is False  # ratio 3.75
    assert fig(250, 100).ok is False  # value misses, ratio fine
    assert fig(150, 60).target_text == "< 200; ratio <= 3"


def test_ok_is_null_without_target_and_false_without_value() -> None:
    assert Figure("x", 5.0, "MB").ok is None
    assert Figure("x", None, "MB", target=50, op="<").ok is False
    assert Figure("x", float("nan"), "MB", target=50, op="<").ok is False
    assert Figure.failed("x", "MB", "boom").ok is False
    no_baseline = Figure("x", 1.0, "us", ratio_target=3, ratio_op="<=")
    assert no_baseline.ratio is None
    assert no_baseline.ok is False


def test_figure_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="unit"):
        Figure("x", 1.0, "furlongs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="go together"):
        Figure("x", 1.0, "ms", target=1.0)
    with pytest.raises(ValueError, match="comparison"):
        Figure("x", 1.0, "ms", target=1.0, op="==")  # type: ignore[arg-type]


def test_row_has_exactly_the_contract_keys() -> None:
    row = Figure("x", 3.0, "us", baseline=2.0, target=200, op="<").as_row()
    assert tuple(row) == ROW_KEYS == ("name", "value", "unit", "baseline", "ratio", "target", "ok")
    assert row == {
        "name": "x",
        "value": 3.0,
        "unit": "us",
        "baseline": 2.0,
        "ratio": 1.5,
        "target": "< 200",
        "ok": True,
    }


def test_percentile_is_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


# --- running modules --------------------------------------------------------------------------


def test_json_lists_every_figure_with_the_contract_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = Calls(), Calls()
    code, rows, err = run_json(capsys, [], [module_a(a), module_b(b)])
    assert code == 0
    assert (a.count, b.count) == (1, 1)
    assert [r["name"] for r in rows] == ["fake.a.lat.p50", "fake.a.lat.p99", "fake.b.rate"]
    for row in rows:
        assert set(row) == set(ROW_KEYS)
    p50, p99, rate = rows
    assert p50 == {
        "name": "fake.a.lat.p50",
        "value": 1.0,
        "unit": "us",
        "baseline": 0.5,
        "ratio": 2.0,
        "target": None,
        "ok": None,
    }
    assert p99["ok"] is True
    assert p99["target"] == "< 200; ratio <= 3"
    assert rate["ok"] is False  # a missed target is reported, not a failure
    assert rate["ratio"] == 0.5
    assert "fake_bench_a" in err


def test_only_skips_modules_that_cannot_match(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = Calls(), Calls()
    code, rows, _ = run_json(capsys, ["--only", "fake.b."], [module_a(a), module_b(b)])
    assert code == 0
    assert (a.count, b.count) == (0, 1)
    assert [r["name"] for r in rows] == ["fake.b.rate"]


def test_only_filters_rows_within_a_module(capsys: pytest.CaptureFixture[str]) -> None:
    a = Calls()
    code, rows, _ = run_json(capsys, ["--only", "fake.a.lat.p99"], [module_a(a)])
    assert code == 0
    assert [r["name"] for r in rows] == ["fake.a.lat.p99"]


def test_only_is_repeatable(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = Calls(), Calls()
    argv = ["--only", "fake.a.lat.p50", "--only", "fake.b"]
    _, rows, _ = run_json(capsys, argv, [module_a(a), module_b(b)])
    assert [r["name"] for r in rows] == ["fake.a.lat.p50", "fake.b.rate"]


def test_nothing_matching_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    a = Calls()
    code, rows, err = run_json(capsys, ["--only", "nope."], [module_a(a)])
    assert (code, rows, a.count) == (2, [], 0)
    assert "no figure matches" in err


def test_a_crashing_module_yields_error_rows(capsys: pytest.CaptureFixture[str]) -> None:
    def run() -> list[Figure]:
        raise RuntimeError("server unreachable")

    broken = fake_module("fake_bench_broken", ("fake.c.x", "fake.c.y"), run, unit="MB")
    b = Calls()
    code, rows, err = run_json(capsys, [], [broken, module_b(b)])
    assert code == 1
    assert b.count == 1  # the other module still ran
    assert rows[:2] == [
        {
            "name": n,
            "value": None,
            "unit": "MB",
            "baseline": None,
            "ratio": None,
            "target": None,
            "ok": False,
        }
        for n in ("fake.c.x", "fake.c.y")
    ]
    assert rows[2]["name"] == "fake.b.rate"
    assert "RuntimeError: server unreachable" in err
    assert "Traceback" in err


def test_async_module_past_its_timeout_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    async def run() -> list[Figure]:
        await asyncio.sleep(5)
        return []

    slow = fake_module("fake_bench_slow", ("fake.slow",), run, TIMEOUT_S=0.05)
    code, rows, err = run_json(capsys, [], [slow])
    assert code == 1
    assert rows[0]["value"] is None
    assert rows[0]["ok"] is False
    assert "TimeoutError" in err


def test_missing_and_undeclared_figures_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    partial = fake_module(
        "fake_bench_partial", ("fake.p.x", "fake.p.y"), lambda: [Figure("fake.p.x", 1.0, "ms")]
    )
    code, rows, err = run_json(capsys, [], [partial])
    assert code == 1
    assert [(r["name"], r["ok"]) for r in rows] == [("fake.p.x", None), ("fake.p.y", False)]
    assert "did not report" in err

    stray = fake_module("fake_bench_stray", ("fake.s.x",), lambda: [Figure("fake.s.z", 1.0, "ms")])
    code, rows, err = run_json(capsys, [], [stray])
    assert code == 1
    assert rows == [{**dict.fromkeys(ROW_KEYS), "name": "fake.s.x", "unit": "ms", "ok": False}]
    assert "does not declare" in err


def test_stray_prints_do_not_corrupt_json(capsys: pytest.CaptureFixture[str]) -> None:
    def run() -> list[Figure]:
        print("chatty module")
        return [Figure("fake.chatty", 1.0, "s")]

    code, rows, err = run_json(
        capsys, [], [fake_module("fake_bench_chatty", ("fake.chatty",), run, unit="s")]
    )
    assert code == 0
    assert rows[0]["name"] == "fake.chatty"
    assert "chatty module" in err


def test_bad_declarations_are_reported() -> None:
    with pytest.raises(harness.HarnessError, match="FIGURES"):
        load(fake_module("fake_bench_empty", (), list))
    with pytest.raises(harness.HarnessError, match="unit"):
        load(fake_module("fake_bench_unit", ("fake.u",), list, unit="parsecs"))


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    a = Calls()
    assert main([], modules=[module_a(a)]) == 0
    out = capsys.readouterr().out
    for column in ROW_KEYS:
        assert column in out
    assert "fake.a.lat.p99" in out
    assert "< 200; ratio <= 3" in out


def test_modules_registered_in_the_registry_are_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    b = Calls()
    monkeypatch.setitem(sys.modules, "fake_bench_b", module_b(b))
    monkeypatch.setattr(registry, "MODULES", ("fake_bench_b",))
    assert main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["fake.b.rate"]
    assert b.count == 1


def test_real_registry_declares_the_issue_figures() -> None:
    """Loads (does not run) every registered module."""
    specs = [load(name) for name in registry.MODULES]
    declared = [f for spec in specs for f in spec.figures]
    assert len(declared) == len(set(declared))
    assert set(declared) == ISSUE_FIGURES
