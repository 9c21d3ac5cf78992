"""A real `fogcoord serve` process for integration tests, and running the CLI against it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    key: str

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with the operator key; the decoded body (raises on an error status)."""
        response = httpx.get(
            f"{self.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()


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


def start(data_dir: Path, env: dict[str, str] | None = None) -> Served:
    """Start `fogcoord serve` on a free port; its URL and the operator key it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogcoord", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env if env is not None else {**os.environ, "COLUMNS": "200"},
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
