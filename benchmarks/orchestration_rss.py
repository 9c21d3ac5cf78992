"""``orchestration.rss``: resident memory of an idle process running the orchestration service.

The child (:mod:`benchmarks._idle_orchestrator`) creates the orchestrator with its registry and
in-process bus, initializes the six services and idles; its ``VmRSS`` is read once it reports
ready. Baseline, same run: a bare interpreter (``python -c``) idling the same way. The child
reports which web-stack packages it imported; any is a warning on stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks._idle_orchestrator import HEAVY
from benchmarks._procs import ROOT, read_line, settled_rss_mb, stop
from benchmarks.harness import Figure, Unit, log

FIGURES = ("orchestration.rss",)
UNIT: Unit = "MB"
TARGET_MB = 50.0
READY_TIMEOUT_S = 30.0

BARE = "import json, sys; print(json.dumps({'ready': True}), flush=True); sys.stdin.readline()"


def idle_rss(args: list[str]) -> tuple[float, dict[str, object]]:
    """RSS (MB) of ``python <args>`` once it has printed its ready line, and that line."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(read_line(proc, READY_TIMEOUT_S))
        rss = settled_rss_mb(proc.pid)
    finally:
        err = stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{args!r} exited {proc.returncode}:\n{err.strip()[-2000:]}")
    return rss, ready


def run() -> list[Figure]:
    bare, _ = idle_rss(["-c", BARE])
    rss, ready = idle_rss(["-m", "benchmarks._idle_orchestrator"])
    heavy = ready.get("heavy_modules") or []
    if heavy:
        log(
            f"  WARNING: the orchestration process imported {heavy} "
            f"(none of {HEAVY} is needed); its RSS is inflated"
        )
    log(
        f"  services {ready.get('services')}, {ready.get('modules')} modules loaded; "
        f"bare interpreter {bare:.1f} MB"
    )
    return [Figure("orchestration.rss", rss, UNIT, baseline=bare, target=TARGET_MB, op="<")]
