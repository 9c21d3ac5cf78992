"""The example tasks compute the real thing: outputs equal independent references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fogcoord.compute import GuestExit, OutOfMemory, Sandbox
from fogcoord.compute.examples import (
    EXAMPLES,
    PRIMES_INPUT,
    load_example,
    mandelbrot_reference,
    mandelbrot_tile_input,
    primes_input,
    primes_output,
    primes_reference,
)
from fogcoord.contracts.compute import SandboxLimits

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(fuel=10**10, memory_bytes=4 * 2**20)
IMAGE = (-2.0, -1.5, 1.0, 1.5)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox()


@pytest.mark.parametrize("name", EXAMPLES)
def test_repository_examples_are_the_packaged_sources(name: str) -> None:
    assert (REPO / "examples" / f"{name}.wat").read_bytes() == load_example(name)


def test_unknown_example() -> None:
    with pytest.raises(ValueError, match="no example"):
        load_example("../secrets")


@pytest.mark.parametrize(
    "tile",
    [
        (*IMAGE, 512, 512, 256, 192, 224, 64, 64),  # on the set's boundary
        (*IMAGE, 512, 512, 256, 0, 0, 64, 64),  # outside: every point escapes at once
        (*IMAGE, 64, 48, 50, 0, 0, 64, 48),  # a whole small image
        (-0.75, 0.05, -0.73, 0.07, 300, 200, 1000, 17, 33, 101, 77),  # deep, odd sizes
        (*IMAGE, 256, 256, 64, 0, 0, 256, 256),  # needs a second page: memory.grow
        (*IMAGE, 10, 10, 5, 3, 3, 0, 4),  # an empty tile
    ],
)
def test_mandelbrot_matches_numpy(sandbox: Sandbox, tile: tuple[float | int, ...]) -> None:
    data = mandelbrot_tile_input(*tile)  # type: ignore[arg-type]
    result = sandbox.run(load_example("mandelbrot"), data, LIMITS)
    assert result.output == mandelbrot_reference(data)
    assert len(result.output) == int(tile[-1]) * int(tile[-2])


def test_tiles_assemble_into_the_whole_image(sandbox: Sandbox) -> None:
    size, step = 96, 32
    whole = sandbox.run(
        load_example("mandelbrot"),
        mandelbrot_tile_input(*IMAGE, size, size, 128, 0, 0, size, size),
        LIMITS,
    ).output
    image = np.zeros((size, size), dtype=np.uint8)
    for ty in range(0, size, step):
        for tx in range(0, size, step):
            data = mandelbrot_tile_input(*IMAGE, size, size, 128, tx, ty, step, step)
            tile = sandbox.run(load_example("mandelbrot"), data, LIMITS).output
            image[ty : ty + step, tx : tx + step] = np.frombuffer(tile, np.uint8).reshape(
                step, step
            )
    assert image.tobytes() == whole
    assert len(set(whole)) > 10  # a picture, not a flat field


def test_mandelbrot_rejects_bad_headers_and_hits_the_memory_limit(sandbox: Sandbox) -> None:
    with pytest.raises(GuestExit) as caught:
        sandbox.run(load_example("mandelbrot"), b"\x00" * 51, LIMITS)
    assert caught.value.exit_code == 3
    zero_iterations = mandelbrot_tile_input(*IMAGE, 8, 8, 1, 0, 0, 8, 8)[:-4] + bytes(4)
    with pytest.raises(GuestExit):
        sandbox.run(load_example("mandelbrot"), zero_iterations, LIMITS)
    huge = mandelbrot_tile_input(*IMAGE, 4096, 4096, 8, 0, 0, 4096, 4096)
    with pytest.raises(OutOfMemory):
        sandbox.run(load_example("mandelbrot"), huge, LIMITS)


def test_mandelbrot_input_checks() -> None:
    with pytest.raises(ValueError, match="outside"):
        mandelbrot_tile_input(*IMAGE, 64, 64, 10, 32, 0, 64, 64)
    with pytest.raises(ValueError, match="max_iter"):
        mandelbrot_tile_input(*IMAGE, 64, 64, 0, 0, 0, 64, 64)
    with pytest.raises(ValueError, match="pixel"):
        mandelbrot_tile_input(*IMAGE, 0, 64, 10, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(0, 0), (0, 2), (0, 3), (2, 3), (0, 100), (10, 5), (999_983, 999_984), (1_000_000, 1_050_000)],
)
def test_primes_match_a_sieve(sandbox: Sandbox, lo: int, hi: int) -> None:
    result = sandbox.run(load_example("primes"), primes_input(lo, hi), LIMITS)
    assert primes_output(result.output) == primes_reference(lo, hi)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lo=st.integers(0, 200_000), width=st.integers(0, 2_000))
def test_primes_match_a_sieve_on_random_ranges(sandbox: Sandbox, lo: int, width: int) -> None:
    result = sandbox.run(load_example("primes"), primes_input(lo, lo + width), LIMITS)
    assert primes_output(result.output) == primes_reference(lo, lo + width)


def test_primes_rejects_bad_input(sandbox: Sandbox) -> None:
    with pytest.raises(GuestExit) as caught:
        sandbox.run(load_example("primes"), b"\x01" * 15, LIMITS)
    assert caught.value.exit_code == 3
    with pytest.raises(GuestExit):
        sandbox.run(load_example("primes"), PRIMES_INPUT.pack(0, 2**63), LIMITS)
    with pytest.raises(ValueError):
        primes_input(0, 2**63)
    with pytest.raises(ValueError):
        primes_output(b"12")


def test_fuel_grows_with_the_work(sandbox: Sandbox) -> None:
    small = sandbox.run(load_example("primes"), primes_input(1_000_000, 1_010_000), LIMITS)
    large = sandbox.run(load_example("primes"), primes_input(1_000_000, 1_050_000), LIMITS)
    assert 4 * small.fuel_used < large.fuel_used < 6 * small.fuel_used
