"""Two real tasks for the sandbox, their input encodings, and reference implementations.

``mandelbrot.wat`` renders one tile of a Mandelbrot image: floating-point heavy, with an output
as large as the tile, so a coordinator can split an image into tiles and assemble the bytes into
a picture. ``primes.wat`` counts the primes in a range by trial division: integer heavy, with a
tiny output. Both are WASI commands (input on stdin, result on stdout) written in WebAssembly
text, so they need no toolchain. The references compute the same bytes independently (numpy, a
sieve), which is how the tests show that the sandbox computes the real thing.
"""

from __future__ import annotations

import struct
from importlib.resources import files

import numpy as np

EXAMPLES = ("mandelbrot", "primes")

MANDELBROT_HEADER = struct.Struct("<ddddIIIII")
"""x0, y0, dx, dy (f64); px0, py0, width, height, max_iter (u32); little-endian, 52 bytes."""

PRIMES_INPUT = struct.Struct("<QQ")
"""lo, hi (u64, little-endian): count the primes p with lo <= p < hi."""

MAX_PRIMES_HI = 1 << 62


def load_example(name: str) -> bytes:
    """The WebAssembly text of example ``name`` (one of :data:`EXAMPLES`)."""
    if name not in EXAMPLES:
        raise ValueError(f"no example {name!r}; there are {', '.join(EXAMPLES)}")
    return files(__package__).joinpath(f"{name}.wat").read_bytes()


def mandelbrot_tile_input(
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    width: int,
    height: int,
    max_iter: int,
    tile_x: int,
    tile_y: int,
    tile_w: int,
    tile_h: int,
) -> bytes:
    """The input for the tile at pixel (tile_x, tile_y), tile_w x tile_h pixels in size, of a
    width x height image of the plane rectangle from (x0, y0) to (x1, y1)."""
    if width <= 0 or height <= 0:
        raise ValueError("the image needs at least one pixel")
    if not 0 < max_iter <= 1 << 23:
        raise ValueError("max_iter must be in 1..2**23")
    if tile_x < 0 or tile_y < 0 or tile_w < 0 or tile_h < 0:
        raise ValueError("tile coordinates and sizes are non-negative")
    if tile_x + tile_w > width or tile_y + tile_h > height:
        raise ValueError("the tile lies outside the image")
    dx = (x1 - x0) / width
    dy = (y1 - y0) / height
    return MANDELBROT_HEADER.pack(x0, y0, dx, dy, tile_x, tile_y, tile_w, tile_h, max_iter)


def mandelbrot_reference(tile_input: bytes) -> bytes:
    """What ``mandelbrot.wat`` writes for ``tile_input``, computed with numpy.

    The same IEEE double operations in the same order, so the bytes agree exactly.
    """
    x0, y0, dx, dy, px0, py0, width, height, max_iter = MANDELBROT_HEADER.unpack(
        tile_input[: MANDELBROT_HEADER.size]
    )
    cx = x0 + np.arange(px0, px0 + width, dtype=np.float64) * dx
    cy = y0 + np.arange(py0, py0 + height, dtype=np.float64) * dy
    c_re, c_im = np.meshgrid(cx, cy)
    zr = np.zeros_like(c_re)
    zi = np.zeros_like(c_re)
    count = np.zeros(c_re.shape, dtype=np.int64)
    active = np.ones(c_re.shape, dtype=bool)
    for _ in range(max_iter):
        zr2 = zr * zr
        zi2 = zi * zi
        active &= ~((zr2 + zi2) > 4.0)
        if not active.any():
            break
        # escaped points keep their last value, so nothing overflows
        zi = np.where(active, (zr * zi) * 2.0 + c_im, zi)
        zr = np.where(active, (zr2 - zi2) + c_re, zr)
        count += active
    return bytes(((count * 255) // max_iter).astype(np.uint8).tobytes())


def primes_input(lo: int, hi: int) -> bytes:
    if lo < 0 or not 0 <= hi <= MAX_PRIMES_HI:
        raise ValueError("lo and hi must be in 0..2**62")
    return PRIMES_INPUT.pack(lo, hi)


def primes_output(output: bytes) -> int:
    """The count ``primes.wat`` wrote (decimal text and a newline)."""
    if not output.endswith(b"\n"):
        raise ValueError(f"not a count: {output[:40]!r}")
    return int(output)


def primes_reference(lo: int, hi: int) -> int:
    """The number of primes in [lo, hi), by a sieve of Eratosthenes (hi up to about 10^8)."""
    if hi <= max(lo, 2):
        return 0
    sieve = np.ones(hi, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(hi**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    return int(np.count_nonzero(sieve[lo:]))
