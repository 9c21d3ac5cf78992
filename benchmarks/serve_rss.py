"""``orchestration.serve_rss``: resident memory of an idle ``fogcoord serve`` (no target).

Starts ``python -m fogcoord serve --port <free> --data-dir <tmp>`` (the ``fogcoord`` script if
the package has no ``__main__``), polls ``/readyz`` until 200, lets it idle, reads the RSS of the
process and any children it started, then stops it with SIGINT as an operator would.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks._procs import MB, free_port, rss_bytes, settled_rss_mb
from benchmarks.harness import Figure, Unit, log

FIGURES = ("orchestration.serve_rss",)
UNIT: Unit = "MB"
TIMEOUT_S = 90.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def command(port: int, data_dir: Path) -> list[str]:
    args = ["serve", "--port", str(port), "--data-dir", str(data_dir)]
    if importlib.util.find_spec("fogcoord.__main__") is not None:
        return [sys.executable, "-m", "fogcoord", *args]
    script = Path(sys.executable).with_name("fogcoord")
    if script.exists():
        return [str(script), *args]
    raise RuntimeError("no fogcoord CLI: neither `python -m fogcoord` nor a fogcoord script")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen[bytes], url: str, output: Path) -> float:
    started = time.monotonic()
    deadline = started + READY_TIMEOUT_S
    last = "no answer"
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"`fogcoord serve` exited {proc.returncode} before ready:\n{_tail(output)}"
                )
            try:
                response = client.get(url)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return time.monotonic() - started
                last = f"HTTP {response.status_code}"
            time.sleep(0.1)
    raise RuntimeError(
        f"{url} not ready within {READY_TIMEOUT_S:g} s (last: {last}):\n{_tail(output)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT_S)
        return
    except subprocess.TimeoutExpired:
        log(f"  WARNING: `fogcoord serve` ignored SIGINT for {STOP_TIMEOUT_S:g} s; terminating")
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        output = Path(tmp) / "serve.log"
        port = free_port()
        cmd = command(port, data_dir)
        with output.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            took = _wait_ready(proc, f"http://127.0.0.1:{port}/readyz", output)
            main_mb = settled_rss_mb(proc.pid, settle_s=1.0)
            children = psutil.Process(proc.pid).children(recursive=True)
            child_mb = sum(rss_bytes(c.pid) for c in children) / MB
        finally:
            _stop(proc)
        if proc.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT):
            log(f"  WARNING: `fogcoord serve` exited {proc.returncode} on SIGINT:\n{_tail(output)}")
    log(
        f"  ready in {took:.1f} s; main process {main_mb:.1f} MB"
        + (f", {len(children)} child process(es) {child_mb:.1f} MB" if children else "")
    )
    return [Figure("orchestration.serve_rss", main_mb + child_mb, UNIT)]
