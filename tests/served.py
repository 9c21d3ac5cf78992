"""A real `fogcoord serve` process for integration tests, and running the CLI against it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    key: str


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``fogcoord ARGS`` to completion, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "fogcoord", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def start(data_dir: Path) -> Served:
    """Start `fogcoord serve` on a free port; its URL and the operator key it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogcoord", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    url = key = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (url and key):
        line = proc.stdout.readline()
        if not line:
            break
        if found := re.search(r"serving on (http://\S+)", line):
            url = found.group(1)
        if found := re.search(r"(fc_[0-9a-f]{16}_\S{43})", line):
            key = found.group(1)
    if not (url and key):
        finish(proc)
        pytest.fail("fogcoord serve did not start")
    return Served(proc, url, key)


def finish(proc: subprocess.Popen[str]) -> None:
    """Make sure the process is gone and its pipe closed."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
