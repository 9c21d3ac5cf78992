"""`fogcoord demo --exit --small` as a real process: it ends well, verifies the ledger and writes
the Mandelbrot image as a PNG in its data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fogcoord.demo import SMALL

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_small_demo_runs_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogcoord",
            "demo",
            "--exit",
            "--small",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ledger verified" in output
    assert f"{SMALL.devices} of {SMALL.devices} agents online" in output
    assert "all equal" in output
    assert "all correct" in output
    assert "cheaters:" in output
    assert "honest devices flagged" not in output

    image = data_dir / "mandelbrot.png"
    assert image.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(image) as png:
        png.verify()
    with Image.open(image) as png:
        assert png.format == "PNG"
        assert png.size == (SMALL.width, SMALL.height)
        assert png.mode == "RGB"
        pixels = np.asarray(png)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2  # a picture, not a blank
