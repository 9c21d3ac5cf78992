"""``compute.fuel_overhead``: what fuel metering costs on the path a device runs, ``Sandbox.run``.

Workload, one round: a 512 x 512 Mandelbrot image at 256 iterations rendered as its 64 tiles of
64 x 64 pixels, plus the primes in [1,000,000, 1,050,000) -- about 0.51 G fuel in all. Value: the
median round time with a metered sandbox (the production configuration). Baseline, same run: the
median round time with an otherwise identical sandbox whose engine has ``consume_fuel`` off.
Rounds alternate between the two so that drift in the machine's speed hits both alike; modules
are compiled (and cached) before timing, as a worker's warm cache would have them. The ratio is
the overhead of metering; the target is at most 2x.
"""

from __future__ import annotations

import statistics
from time import perf_counter

from benchmarks.harness import Figure, Unit, log
from fogcoord.compute import EngineSettings, Sandbox
from fogcoord.compute.examples import load_example, mandelbrot_tile_input, primes_input
from fogcoord.contracts.compute import SandboxLimits
from fogcoord.contracts.units import fuel_to_gflop

FIGURES = ("compute.fuel_overhead",)
UNIT: Unit = "ms"
TIMEOUT_S = 120.0

ROUNDS = 7
IMAGE, TILE, MAX_ITER = 512, 64, 256
PRIMES = (1_000_000, 1_050_000)
RATIO_TARGET = 2.0
LIMITS = SandboxLimits(fuel=10**10)


def workload() -> list[tuple[str, bytes]]:
    tiles = [
        (
            "mandelbrot",
            mandelbrot_tile_input(-2.0, -1.5, 1.0, 1.5, IMAGE, IMAGE, MAX_ITER, x, y, TILE, TILE),
        )
        for y in range(0, IMAGE, TILE)
        for x in range(0, IMAGE, TILE)
    ]
    return [*tiles, ("primes", primes_input(*PRIMES))]


def one_round(sandbox: Sandbox, tasks: list[tuple[str, bytes]]) -> tuple[float, int]:
    """Seconds for one round and the fuel it used."""
    modules = {name: sandbox.compile(load_example(name)) for name in ("mandelbrot", "primes")}
    fuel = 0
    started = perf_counter()
    for name, data in tasks:
        fuel += sandbox.run(modules[name], data, LIMITS).fuel_used
    return perf_counter() - started, fuel


async def run() -> list[Figure]:
    tasks = workload()
    metered = Sandbox()
    plain = Sandbox(EngineSettings(consume_fuel=False))
    _, fuel = one_round(metered, tasks)  # warm-up: compile, fault in code and memory
    one_round(plain, tasks)
    metered_s: list[float] = []
    plain_s: list[float] = []
    for _ in range(ROUNDS):
        seconds, used = one_round(metered, tasks)
        if used != fuel:
            raise RuntimeError(f"fuel is not repeatable: {used} after {fuel}")
        metered_s.append(seconds)
        plain_s.append(one_round(plain, tasks)[0])
    value = statistics.median(metered_s)
    baseline = statistics.median(plain_s)
    log(
        f"  {len(tasks)} tasks, {fuel:,} fuel ({fuel_to_gflop(fuel):.3f} GFLOP-eq) per round; "
        f"metered {fuel / value / 1e9:.2f} G fuel/s; overhead {value / baseline:.2f}x"
    )
    return [
        Figure(
            "compute.fuel_overhead",
            value * 1e3,
            UNIT,
            baseline=baseline * 1e3,
            ratio_target=RATIO_TARGET,
            ratio_op="<=",
        )
    ]
