"""The compiled-module cache: keyed by module hash and engine fingerprint, in memory and on disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fogcoord.compute import EngineSettings, ModuleCache, Sandbox
from fogcoord.compute.cache import CacheKey
from fogcoord.compute.examples import load_example, primes_input
from fogcoord.contracts.compute import SandboxLimits, sha256_hex

LIMITS = SandboxLimits(fuel=10**9)
RANGE = primes_input(1_000_000, 1_010_000)


def module(n: int) -> str:
    return f'(module (func (export "_start") (drop (i32.const {n}))))'


def test_compiling_twice_returns_the_cached_module() -> None:
    sb = Sandbox()
    first = sb.compile(load_example("primes"))
    again = sb.compile(load_example("primes"))
    assert again is first
    assert first.sha256 == sha256_hex(load_example("primes"))
    assert (sb.cache.misses, sb.cache.hits) == (1, 1)
    # running by bytes goes through the same cache
    sb.run(load_example("primes"), RANGE, LIMITS)
    assert (sb.cache.misses, sb.cache.hits) == (1, 2)


def test_text_and_binary_are_keyed_by_the_bytes_given() -> None:
    import wasmtime

    sb = Sandbox()
    text = module(1)
    binary = bytes(wasmtime.wat2wasm(text))
    assert sb.compile(text).sha256 == sha256_hex(text.encode())
    assert sb.compile(binary).sha256 == sha256_hex(binary)
    assert len(sb.cache) == 2


def test_least_recently_used_module_is_evicted() -> None:
    sb = Sandbox(cache_size=2)
    a, b = sb.compile(module(1)), sb.compile(module(2))
    assert sb.compile(module(1)) is a  # a is now the most recently used
    sb.compile(module(3))
    assert len(sb.cache) == 2
    assert sb.compile(module(1)) is a
    assert sb.compile(module(2)) is not b
    with pytest.raises(ValueError):
        ModuleCache(0)


def test_engine_configuration_is_part_of_the_key() -> None:
    metered, plain = Sandbox(), Sandbox(EngineSettings(consume_fuel=False))
    assert metered.fingerprint != plain.fingerprint
    assert Sandbox().fingerprint == metered.fingerprint
    assert Sandbox(EngineSettings(nan_canonicalization=False)).fingerprint != metered.fingerprint
    shared = ModuleCache()
    one = Sandbox(cache=shared).compile(module(1))
    other = Sandbox(EngineSettings(consume_fuel=False), cache=shared).compile(module(1))
    assert one is not other
    assert len(shared) == 2


def test_disk_cache_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "modules"
    first = Sandbox(cache_dir=directory)
    expected = first.run(load_example("primes"), RANGE, LIMITS)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert [f.name for f in files] == [
        CacheKey(sha256_hex(load_example("primes")), first.fingerprint).file_name
    ]

    restarted = Sandbox(cache_dir=directory)
    result = restarted.run(load_example("primes"), RANGE, LIMITS)
    assert (restarted.cache.disk_hits, restarted.cache.misses) == (1, 0)
    assert (result.output, result.fuel_used) == (expected.output, expected.fuel_used)

    # another engine configuration does not pick up this code
    plain = Sandbox(EngineSettings(consume_fuel=False), cache_dir=directory)
    plain.compile(load_example("primes"))
    assert (plain.cache.disk_hits, plain.cache.misses) == (0, 1)
    assert len(list(directory.iterdir())) == 2


def test_disk_cache_keeps_what_the_sandbox_learned_about_the_module(tmp_path: Path) -> None:
    grows = '(module (memory 3) (func (export "_start") (drop (memory.grow (i32.const 1)))))'
    compiled = Sandbox(cache_dir=tmp_path).compile(grows)
    loaded = Sandbox(cache_dir=tmp_path).compile(grows)
    assert loaded is not compiled
    assert (loaded.memory_min_pages, loaded.grow_sites) == (3, 1)


def test_a_damaged_file_is_dropped_and_the_module_compiled_again(tmp_path: Path) -> None:
    Sandbox(cache_dir=tmp_path).compile(load_example("primes"))
    (path,) = tmp_path.iterdir()
    path.write_bytes(b'{"sha256": "x"}\nnot a module')
    sb = Sandbox(cache_dir=tmp_path)
    assert sb.run(load_example("primes"), RANGE, LIMITS).output == b"753\n"
    assert (sb.cache.disk_hits, sb.cache.misses) == (0, 1)
    # and written again, intact
    assert Sandbox(cache_dir=tmp_path).compile(load_example("primes")).grow_sites == 0
    path.write_bytes(b"garbage")
    assert Sandbox(cache_dir=tmp_path).compile(load_example("primes"))
