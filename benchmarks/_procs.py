"""Child-process helpers for the memory figures: RSS readings, ready lines, free ports."""

from __future__ import annotations

import select
import socket
import statistics
import subprocess
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
"""The directory holding the ``benchmarks`` package (child scripts run with this as cwd)."""

MB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``: ``VmRSS`` from ``/proc/<pid>/status``, else psutil."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(psutil.Process(pid).memory_info().rss)


def settled_rss_mb(pid: int, settle_s: float = 0.5, readings: int = 3) -> float:
    """Median of a few RSS readings, taken after the process has been idle for ``settle_s``."""
    time.sleep(settle_s)
    values = []
    for _ in range(readings):
        values.append(rss_bytes(pid))
        time.sleep(0.1)
    return statistics.median(values) / MB


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or an error naming what the child said on stderr."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        tail = "\n".join((err or "").strip().splitlines()[-15:])
        raise RuntimeError(
            f"{proc.args!r} gave no ready line within {timeout:g} s "
            f"(exit {proc.returncode}):\n{tail}"
        )
    return line


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """Close the child's stdin (its signal to exit), wait, and return its stderr."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
