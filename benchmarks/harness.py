"""The benchmark harness: figures, targets, module running and the table/JSON output.

A figure module (listed in :mod:`benchmarks.registry`) declares

* ``FIGURES: tuple[str, ...]`` -- every figure name it produces (percentiles as ``.p50``/``.p99``),
* ``UNIT: Unit`` -- the unit of all of them, or ``UNITS: Mapping[str, Unit]`` per name,
* ``TIMEOUT_S: float`` (optional) -- bound on an async ``run()``, default 120 s,
* ``run()`` -- sync or async, returning ``list[Figure]``.

``--only PREFIX`` skips, without running it, a module none of whose figures starts with PREFIX.
A module that raises reports each of its figures with value null and ok false, its traceback on
stderr, and makes the exit status 1. Missed targets are reported, not failures: exit 0 when every
module ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import inspect
import json
import math
import operator
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, get_args

Unit = Literal["s", "ms", "us", "/s", "B", "KB", "MB", "MB/s", "%"]
Op = Literal["<", "<=", ">", ">="]

UNITS: frozenset[str] = frozenset(get_args(Unit))
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
ROW_KEYS = ("name", "value", "unit", "baseline", "ratio", "target", "ok")
DEFAULT_TIMEOUT_S = 120.0


def meets(value: float, op: Op, bound: float) -> bool:
    """Whether ``value op bound`` holds, e.g. ``meets(150, "<", 200)``."""
    return _OPS[op](value, bound)


@dataclass(frozen=True)
class Figure:
    """One reported number.

    ``ratio`` is ``value / baseline`` (both measured in the same run). ``ok`` is null when there
    is no target; otherwise every condition must hold: ``value op target`` and, when given,
    ``ratio ratio_op ratio_target``. A figure with an ``error`` (or no value) is never ok.
    """

    name: str
    value: float | None
    unit: Unit
    baseline: float | None = None
    target: float | None = None
    op: Op | None = None
    ratio_target: float | None = None
    ratio_op: Op | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a figure needs a name")
        if self.unit not in UNITS:
            raise ValueError(f"{self.name}: unit {self.unit!r} is not one of {sorted(UNITS)}")
        for bound, op, what in (
            (self.target, self.op, "target"),
            (self.ratio_target, self.ratio_op, "ratio_target"),
        ):
            if (bound is None) != (op is None):
                raise ValueError(f"{self.name}: {what} and its comparison go together")
            if op is not None and op not in _OPS:
                raise ValueError(f"{self.name}: comparison {op!r} is not one of {sorted(_OPS)}")

    @classmethod
    def failed(cls, name: str, unit: Unit, error: str) -> Figure:
        return cls(name=name, value=None, unit=unit, error=error)

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def ok(self) -> bool | None:
        if self.error is not None:
            return False
        if self.target is None and self.ratio_target is None:
            return None
        if self.value is None or not math.isfinite(self.value):
            return False
        if (
            self.target is not None
            and self.op is not None
            and not meets(self.value, self.op, self.target)
        ):
            return False
        if self.ratio_target is not None and self.ratio_op is not None:
            ratio = self.ratio
            if ratio is None or not meets(ratio, self.ratio_op, self.ratio_target):
                return False
        return True

    @property
    def target_text(self) -> str | None:
        """The target as reported: ``"< 200"``, ``">= 200000"``, ``"< 200; ratio <= 3"``."""
        parts = []
        if self.target is not None:
            parts.append(f"{self.op} {self.target:g}")
        if self.ratio_target is not None:
            parts.append(f"ratio {self.ratio_op} {self.ratio_target:g}")
        return "; ".join(parts) or None

    def as_row(self) -> dict[str, Any]:
        """The JSON row: exactly the keys in :data:`ROW_KEYS`."""
        return {
            "name": self.name,
            "value": _num(self.value),
            "unit": self.unit,
            "baseline": _num(self.baseline),
            "ratio": _num(self.ratio),
            "target": self.target_text,
            "ok": self.ok,
        }


def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


# --- statistics helpers shared by figure modules ---------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def percentile_figures(
    name: str,
    samples: Sequence[float],
    baseline: Sequence[float],
    unit: Unit,
    *,
    p99_target: float | None = None,
    p99_ratio_target: float | None = None,
) -> list[Figure]:
    """``name.p50`` and ``name.p99`` rows, each with the baseline's same percentile."""
    p50 = Figure(f"{name}.p50", percentile(samples, 50), unit, baseline=percentile(baseline, 50))
    p99 = Figure(
        f"{name}.p99",
        percentile(samples, 99),
        unit,
        baseline=percentile(baseline, 99),
        target=p99_target,
        op="<" if p99_target is not None else None,
        ratio_target=p99_ratio_target,
        ratio_op="<=" if p99_ratio_target is not None else None,
    )
    return [p50, p99]


def log(message: str) -> None:
    """Progress output: always stderr, so ``--json`` keeps stdout clean."""
    print(message, file=sys.stderr, flush=True)


# --- modules ---------------------------------------------------------------------------------


class HarnessError(Exception):
    pass


@dataclass(frozen=True)
class Spec:
    """A figure module and what it declares."""

    name: str
    module: ModuleType
    figures: tuple[str, ...]
    units: Mapping[str, Unit]
    timeout_s: float

    def selected(self, prefixes: Sequence[str]) -> tuple[str, ...]:
        return tuple(f for f in self.figures if matches(f, prefixes))


def matches(name: str, prefixes: Sequence[str]) -> bool:
    return not prefixes or any(name.startswith(p) for p in prefixes)


def load(module: str | ModuleType) -> Spec:
    """Import a figure module and validate its declarations."""
    mod = importlib.import_module(module) if isinstance(module, str) else module
    name = mod.__name__
    figures = getattr(mod, "FIGURES", None)
    if (
        not isinstance(figures, tuple)
        or not figures
        or not all(isinstance(f, str) and f for f in figures)
    ):
        raise HarnessError(f"{name}: FIGURES must be a non-empty tuple of figure names")
    if len(set(figures)) != len(figures):
        raise HarnessError(f"{name}: FIGURES names a figure twice")
    per_name = getattr(mod, "UNITS", None)
    default = getattr(mod, "UNIT", None)
    units: dict[str, Unit] = {}
    for fig in figures:
        unit = per_name.get(fig, default) if isinstance(per_name, Mapping) else default
        if unit not in UNITS:
            raise HarnessError(f"{name}: no valid unit declared for {fig} (got {unit!r})")
        units[fig] = unit
    if not callable(getattr(mod, "run", None)):
        raise HarnessError(f"{name}: has no run()")
    timeout = getattr(mod, "TIMEOUT_S", DEFAULT_TIMEOUT_S)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise HarnessError(f"{name}: TIMEOUT_S must be a positive number")
    return Spec(name, mod, figures, units, float(timeout))


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> Any:
    async with asyncio.timeout(timeout):
        return await awaitable


def _call(spec: Spec) -> Any:
    result = spec.module.run()
    if inspect.isawaitable(result):
        return asyncio.run(_bounded(result, spec.timeout_s))
    return result


def run_spec(spec: Spec, prefixes: Sequence[str]) -> tuple[list[Figure], bool]:
    """Run one module; its selected figures, and whether it crashed."""
    wanted = spec.selected(prefixes)
    log(f"[{spec.name}] running: {', '.join(wanted)}")
    # each module starts from a clean heap: garbage left by the previous one is not its cost
    gc.collect()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = _call(spec)
        figures = _check(spec, result)
    except Exception as exc:
        if isinstance(exc, TimeoutError) and not str(exc):
            message = f"TimeoutError: run() took over {spec.timeout_s:g} s"
        else:
            message = f"{type(exc).__name__}: {exc}"
        log(f"[{spec.name}] ERROR {message}")
        log(traceback.format_exc().rstrip())
        return [Figure.failed(f, spec.units[f], message) for f in wanted], True
    log(f"[{spec.name}] done in {time.perf_counter() - started:.1f} s")
    crashed = False
    out: list[Figure] = []
    for fig in wanted:
        got = figures.get(fig)
        if got is None:
            message = "the module did not report this figure"
            log(f"[{spec.name}] ERROR {fig}: {message}")
            out.append(Figure.failed(fig, spec.units[fig], message))
            crashed = True
        else:
            out.append(got)
    return out, crashed


def _check(spec: Spec, result: Any) -> dict[str, Figure]:
    if not isinstance(result, list | tuple) or not all(isinstance(f, Figure) for f in result):
        raise HarnessError(f"run() must return a list of Figure, not {type(result).__name__}")
    out: dict[str, Figure] = {}
    for fig in result:
        if fig.name not in spec.units:
            raise HarnessError(f"run() reported {fig.name!r}, which FIGURES does not declare")
        if fig.unit != spec.units[fig.name]:
            raise HarnessError(
                f"{fig.name}: reported in {fig.unit}, declared {spec.units[fig.name]}"
            )
        if fig.name in out:
            raise HarnessError(f"run() reported {fig.name!r} twice")
        out[fig.name] = fig
    return out


def run_all(
    modules: Iterable[str | ModuleType], prefixes: Sequence[str]
) -> tuple[list[Figure], bool, int]:
    """Run every selected module: (figures, any module crashed, modules run)."""
    figures: list[Figure] = []
    crashed = False
    ran = 0
    seen: dict[str, str] = {}
    for module in modules:
        label = module if isinstance(module, str) else module.__name__
        try:
            spec = load(module)
            for fig in spec.figures:
                if fig in seen:
                    raise HarnessError(f"{fig} is declared by both {seen[fig]} and {spec.name}")
                seen[fig] = spec.name
        except Exception as exc:
            log(f"[{label}] cannot load: {type(exc).__name__}: {exc}")
            crashed = True
            continue
        if not spec.selected(prefixes):
            continue
        ran += 1
        rows, failed = run_spec(spec, prefixes)
        figures.extend(rows)
        crashed = crashed or failed
    return figures, crashed, ran


# --- output ----------------------------------------------------------------------------------


def to_json(figures: Sequence[Figure]) -> str:
    return json.dumps([f.as_row() for f in figures], indent=2)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def print_table(figures: Sequence[Figure]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fogcoord benchmarks")
    for column in ROW_KEYS:
        table.add_column(column, justify="left" if column in ("name", "unit") else "right")
    for fig in figures:
        ok = fig.ok
        ok_text = "-" if ok is None else ("[green]yes[/]" if ok else "[red]no[/]")
        value = "[red]error[/]" if fig.error is not None else _fmt(fig.value)
        ratio = fig.ratio
        table.add_row(
            fig.name,
            value,
            fig.unit,
            _fmt(fig.baseline),
            "-" if ratio is None else f"{ratio:.3g}",
            fig.target_text or "-",
            ok_text,
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print only a JSON list on stdout")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PREFIX",
        help="run only figures whose name starts with PREFIX (repeatable)",
    )
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None, modules: Sequence[str | ModuleType] | None = None
) -> int:
    """Exit status: 0 every module ran, 1 a module crashed, 2 nothing matched ``--only``."""
    args = parse_args(argv)
    prefixes: list[str] = args.only
    if modules is None:
        from benchmarks import registry

        modules = registry.MODULES
    started = time.perf_counter()
    figures, crashed, ran = run_all(modules, prefixes)
    log(f"{ran} module(s), {len(figures)} figure(s) in {time.perf_counter() - started:.1f} s")
    if ran == 0 and not crashed:
        log(f"no figure matches --only {' '.join(prefixes)}")
        if args.json:
            print("[]")
        return 2
    if args.json:
        print(to_json(figures))
    else:
        print_table(figures)
    return 1 if crashed else 0
