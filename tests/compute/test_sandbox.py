"""The sandbox: determinism, each limit with its own error, the WASI surface and receipts."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import pytest

from fogcoord.compute import (
    ALLOWED_WASI,
    ENOSYS_WASI,
    EngineSettings,
    ForbiddenImport,
    GuestExit,
    GuestTrap,
    InputTooLarge,
    MalformedModule,
    OutOfFuel,
    OutOfMemory,
    OutputTooLarge,
    Sandbox,
    disagreements,
)
from fogcoord.compute.examples import (
    load_example,
    mandelbrot_tile_input,
    primes_input,
)
from fogcoord.contracts.compute import ExecutionOutcome, SandboxLimits, sha256_hex

LIMITS = SandboxLimits(fuel=10**9, memory_bytes=4 * 2**20)
TILE = mandelbrot_tile_input(-2.0, -1.5, 1.0, 1.5, 512, 512, 256, 192, 224, 64, 64)
RANGE = primes_input(1_000_000, 1_020_000)


def wasi(body: str, *, imports: str = "", funcs: str = "", memory: str = "1") -> str:
    """A WASI command: ``(call $out ptr len)`` writes to stdout, ``(call $exit code)`` exits."""
    return f"""
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      {imports}
      (memory (export "memory") {memory})
      (func $out (param $ptr i32) (param $len i32)
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
      {funcs}
      (func (export "_start") {body}))
    """


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox()


# --- determinism ------------------------------------------------------------------------------


def test_same_task_same_output_and_fuel_across_fresh_sandboxes() -> None:
    seen = set()
    for _ in range(3):
        sb = Sandbox()
        tile = sb.run(load_example("mandelbrot"), TILE, LIMITS)
        primes = sb.run(load_example("primes"), RANGE, LIMITS)
        seen.add((tile.fuel_used, tile.output_hash, primes.fuel_used, primes.output))
    assert len(seen) == 1
    tile_fuel, _, primes_fuel, count = seen.pop()
    assert tile_fuel > 10**7
    assert primes_fuel > 10**7
    assert count == b"1472\n"


def test_same_task_same_receipt_in_another_process(sandbox: Sandbox) -> None:
    script = textwrap.dedent(
        """
        import json
        from fogcoord.compute import Sandbox
        from fogcoord.compute.examples import load_example, mandelbrot_tile_input, primes_input
        from fogcoord.contracts.compute import SandboxLimits

        limits = SandboxLimits(fuel=10**9, memory_bytes=4 * 2**20)
        tile = mandelbrot_tile_input(-2.0, -1.5, 1.0, 1.5, 512, 512, 256, 192, 224, 64, 64)
        sb = Sandbox()
        out = []
        for name, data in (("mandelbrot", tile), ("primes", primes_input(1_000_000, 1_020_000))):
            receipt, _ = sb.execute(load_example(name), data, limits, task_id=name)
            out.append(receipt.model_dump(mode="json"))
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    theirs = json.loads(done.stdout)
    for row, (name, data) in zip(theirs, (("mandelbrot", TILE), ("primes", RANGE)), strict=True):
        ours, _ = sandbox.execute(load_example(name), data, LIMITS, task_id=name)
        assert row == ours.model_dump(mode="json")


def test_fuel_is_limit_minus_remaining_and_counts_operators(sandbox: Sandbox) -> None:
    one = sandbox.run('(module (func (export "_start") (drop (i32.const 1))))', b"", LIMITS)
    two = sandbox.run(
        '(module (func (export "_start") (drop (i32.const 1)) (drop (i32.const 2))))', b"", LIMITS
    )
    # fuel grows with the operators executed; the exact unit cost is wasmtime's
    assert 0 < one.fuel_used < two.fuel_used


def test_unmetered_engine_computes_the_same_output_and_reports_no_fuel() -> None:
    plain = Sandbox(EngineSettings(consume_fuel=False))
    metered = Sandbox()
    a = plain.run(load_example("primes"), RANGE, LIMITS)
    b = metered.run(load_example("primes"), RANGE, LIMITS)
    assert a.output == b.output
    assert a.fuel_used == 0 < b.fuel_used
    assert plain.fingerprint != metered.fingerprint


def test_a_verifier_reproduces_a_receipt(sandbox: Sandbox) -> None:
    claimed, _ = sandbox.execute(load_example("primes"), RANGE, LIMITS, task_id="t")
    reproduced, _ = Sandbox().execute(load_example("primes"), RANGE, LIMITS, task_id="t")
    assert disagreements(claimed, reproduced) == []
    inflated = claimed.model_copy(update={"fuel_used": claimed.fuel_used * 2})
    assert disagreements(inflated, reproduced) == ["fuel_used"]
    timed_out = claimed.model_copy(update={"outcome": ExecutionOutcome.TIMEOUT})
    assert disagreements(timed_out, reproduced) == ["outcome"]


# --- each limit, its own error ----------------------------------------------------------------


def test_out_of_fuel(sandbox: Sandbox) -> None:
    limits = SandboxLimits(fuel=50_000)
    with pytest.raises(OutOfFuel) as caught:
        sandbox.run('(module (func (export "_start") (loop br 0)))', b"", limits)
    assert caught.value.code == "out_of_fuel"
    assert caught.value.fuel_used == 50_000
    receipt, output = sandbox.execute(load_example("primes"), RANGE, limits, task_id="t")
    assert receipt.outcome == ExecutionOutcome.OUT_OF_FUEL
    assert receipt.fuel_used == 50_000
    assert output == b""
    assert receipt.output_hash == sha256_hex(b"")


GROW_FOREVER = wasi(
    "(loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"
)


def test_out_of_memory_when_growing_page_by_page(sandbox: Sandbox) -> None:
    with pytest.raises(OutOfMemory) as caught:
        sandbox.run(GROW_FOREVER, b"", SandboxLimits(fuel=10**7, memory_bytes=2**20))
    assert caught.value.code == "out_of_memory"
    assert caught.value.memory_bytes == 2**20
    assert caught.value.fuel_used > 0


def test_out_of_memory_for_one_large_grow_far_below_the_limit(sandbox: Sandbox) -> None:
    """The guest's memory stays tiny, but the sandbox saw it refuse the grow."""
    big = wasi(
        "(if (i32.eq (memory.grow (i32.const 1000)) (i32.const -1))"
        " (then (call $exit (i32.const 9))))"
    )
    with pytest.raises(OutOfMemory):
        sandbox.run(big, b"", SandboxLimits(fuel=10**6, memory_bytes=2**20))
    # the same module succeeds with room for the grow
    assert sandbox.run(big, b"", SandboxLimits(fuel=10**6, memory_bytes=128 * 2**20))


def test_a_guest_that_copes_with_a_refused_grow_succeeds(sandbox: Sandbox) -> None:
    coping = wasi(
        "(i32.store8 (i32.const 100) (i32.add (i32.const 48)"
        " (i32.eq (memory.grow (i32.const 1000)) (i32.const -1))))"
        "(call $out (i32.const 100) (i32.const 1))"
    )
    result = sandbox.run(coping, b"", SandboxLimits(fuel=10**6, memory_bytes=2**20))
    assert result.output == b"1"


def test_initial_memory_above_the_limit(sandbox: Sandbox) -> None:
    with pytest.raises(OutOfMemory) as caught:
        sandbox.run(wasi("", memory="100"), b"", SandboxLimits(fuel=10**6, memory_bytes=2**20))
    assert caught.value.fuel_used == 0
    assert sandbox.run(wasi("", memory="16"), b"", SandboxLimits(fuel=10**6, memory_bytes=2**20))


def test_initial_table_above_the_limit(sandbox: Sandbox) -> None:
    module = '(module (table 20000 funcref) (func (export "_start")))'
    with pytest.raises(OutOfMemory, match="table"):
        sandbox.run(module, b"", SandboxLimits(fuel=10**6))
    assert sandbox.run(module, b"", SandboxLimits(fuel=10**6, table_elements=20_000))


def test_a_trap_without_a_refused_grow_is_a_trap(sandbox: Sandbox) -> None:
    module = wasi("(drop (memory.grow (i32.const 1))) unreachable")
    with pytest.raises(GuestTrap):
        sandbox.run(module, b"", SandboxLimits(fuel=10**6, memory_bytes=2**20))


@pytest.mark.parametrize(
    ("body", "trap_code"),
    [
        ("unreachable", "unreachable"),
        ("(drop (i32.div_s (i32.const 1) (i32.const 0)))", "integer_division_by_zero"),
        ("(drop (i32.load (i32.const 70000)))", "memory_out_of_bounds"),
    ],
)
def test_traps(sandbox: Sandbox, body: str, trap_code: str) -> None:
    with pytest.raises(GuestTrap) as caught:
        sandbox.run(wasi(body), b"", LIMITS)
    assert caught.value.code == "guest_trap"
    assert caught.value.trap_code == trap_code
    receipt, _ = sandbox.execute(wasi(body), b"", LIMITS, task_id="t")
    assert receipt.outcome == ExecutionOutcome.TRAP
    assert receipt.detail == f"trap: {trap_code}"
    assert receipt.fuel_used == caught.value.fuel_used


def test_stack_overflow_is_a_trap(sandbox: Sandbox) -> None:
    with pytest.raises(GuestTrap) as caught:
        sandbox.run('(module (func $f (call $f)) (func (export "_start") (call $f)))', b"", LIMITS)
    assert caught.value.trap_code == "stack_overflow"


def test_exit_nonzero_and_exit_zero(sandbox: Sandbox) -> None:
    with pytest.raises(GuestExit) as caught:
        sandbox.run(wasi("(call $exit (i32.const 7))"), b"", LIMITS)
    assert caught.value.exit_code == 7
    receipt, _ = sandbox.execute(wasi("(call $exit (i32.const 7))"), b"", LIMITS, task_id="t")
    assert (receipt.outcome, receipt.exit_code) == (ExecutionOutcome.EXIT_NONZERO, 7)

    said = wasi(
        "(i32.store8 (i32.const 100) (i32.const 65)) (call $out (i32.const 100) (i32.const 1))"
        "(call $exit (i32.const 0)) unreachable"
    )
    result = sandbox.run(said, b"", LIMITS)
    assert (result.output, result.exit_code) == (b"A", 0)


def test_output_too_large(sandbox: Sandbox) -> None:
    module = wasi("(call $out (i32.const 0) (i32.const 100))")
    with pytest.raises(OutputTooLarge):
        sandbox.run(module, b"", LIMITS.model_copy(update={"max_output_bytes": 99}))
    assert len(sandbox.run(module, b"", LIMITS.model_copy(update={"max_output_bytes": 100})).output)


def test_input_too_large(sandbox: Sandbox) -> None:
    limits = LIMITS.model_copy(update={"max_input_bytes": 15})
    with pytest.raises(InputTooLarge) as caught:
        sandbox.run(load_example("primes"), RANGE, limits)
    assert caught.value.http_status == 413
    receipt, _ = sandbox.execute(load_example("primes"), RANGE, limits, task_id="t")
    assert (receipt.outcome, receipt.fuel_used) == (ExecutionOutcome.INPUT_TOO_LARGE, 0)


@pytest.mark.parametrize(
    "source",
    [
        b"\x00asm\x01\x00\x00\x00garbage",
        b"not a module",
        '(module (func (export "_start") (i32.add)))',
        "(module (memory 1 1 shared))",
        b"\xff\xfe",
    ],
)
def test_malformed_modules(sandbox: Sandbox, source: bytes | str) -> None:
    with pytest.raises(MalformedModule) as caught:
        sandbox.compile(source)
    assert caught.value.http_status == 422
    receipt, _ = sandbox.execute(source, b"", LIMITS, task_id="t")
    assert receipt.outcome == ExecutionOutcome.MALFORMED_MODULE
    assert receipt.module_hash == sha256_hex(source.encode() if isinstance(source, str) else source)


def test_missing_or_unusable_entry_is_malformed(sandbox: Sandbox) -> None:
    with pytest.raises(MalformedModule, match="no exported function"):
        sandbox.run('(module (func (export "main")))', b"", LIMITS)
    with pytest.raises(MalformedModule, match="parameters"):
        sandbox.run('(module (func (export "f") (param i32)))', b"", LIMITS, entry="f")


def test_other_entry_points_are_called_without_arguments(sandbox: Sandbox) -> None:
    module = wasi(
        "unreachable",
        funcs='(func (export "answer") (result i32) (i32.store8 (i32.const 100) (i32.const 42))'
        " (call $out (i32.const 100) (i32.const 1)) (i32.const 5))",
    )
    assert sandbox.run(module, b"", LIMITS, entry="answer").output == b"*"


@pytest.mark.parametrize(
    ("imports", "forbidden"),
    [
        ('(import "env" "foo" (func))', ["env.foo"]),
        (
            '(import "wasi_snapshot_preview1" "sock_accept"'
            " (func (param i32 i32 i32) (result i32)))",
            ["wasi_snapshot_preview1.sock_accept"],
        ),
        (
            '(import "wasi_snapshot_preview1" "path_open"'
            " (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))",
            ["wasi_snapshot_preview1.path_open"],
        ),
        # an allowed name with the wrong type
        (
            '(import "wasi_snapshot_preview1" "random_get" (func (param i64) (result i32)))',
            ["wasi_snapshot_preview1.random_get"],
        ),
        ('(import "env" "table" (table 1 funcref)) (import "env" "g" (global i32))', None),
    ],
)
def test_forbidden_imports(sandbox: Sandbox, imports: str, forbidden: list[str] | None) -> None:
    with pytest.raises(ForbiddenImport) as caught:
        sandbox.compile(wasi("", imports=imports))
    assert caught.value.code == "forbidden_import"
    if forbidden is not None:
        assert caught.value.imports == forbidden
    else:
        assert caught.value.imports == ["env.g", "env.table"]
    receipt, _ = sandbox.execute(wasi("", imports=imports), b"", LIMITS, task_id="t")
    assert receipt.outcome == ExecutionOutcome.MALFORMED_MODULE
    assert receipt.detail.startswith("forbidden imports: ")


def test_allowed_set_is_the_documented_one() -> None:
    assert {"fd_read", "fd_write", "proc_exit", "args_get"} <= ALLOWED_WASI
    assert sorted(ENOSYS_WASI) == ["clock_res_get", "clock_time_get", "poll_oneoff", "random_get"]
    assert ENOSYS_WASI <= ALLOWED_WASI
    assert not any(name.startswith(("sock_", "path_")) for name in ALLOWED_WASI)


# --- the host is invisible --------------------------------------------------------------------

HOST_PROBE = wasi(
    """
    ;; each call's errno as 4 bytes, then the 16 bytes its output buffer at 200 held afterwards
    (i32.store (i32.const 100) (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 200)))
    (i32.store (i32.const 104) (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 200)))
    (i32.store (i32.const 108) (call $clock_res_get (i32.const 0) (i32.const 200)))
    (i32.store (i32.const 112) (call $random_get (i32.const 200) (i32.const 16)))
    (i32.store (i32.const 116) (call $poll_oneoff (i32.const 300) (i32.const 400) (i32.const 1)
                                                 (i32.const 208)))
    (i32.store (i32.const 120) (call $environ_sizes_get (i32.const 220) (i32.const 224)))
    (i32.store (i32.const 124) (call $args_sizes_get (i32.const 228) (i32.const 232)))
    (call $out (i32.const 100) (i32.const 28))
    (call $out (i32.const 200) (i32.const 36))
    """,
    imports="""
    (import "wasi_snapshot_preview1" "clock_time_get"
      (func $clock_time_get (param i32 i64 i32) (result i32)))
    (import "wasi_snapshot_preview1" "clock_res_get"
      (func $clock_res_get (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "poll_oneoff"
      (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "environ_sizes_get"
      (func $environ_sizes_get (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "args_sizes_get"
      (func $args_sizes_get (param i32 i32) (result i32)))
    """,
)


def test_clocks_randomness_and_polling_answer_enosys(sandbox: Sandbox) -> None:
    first = sandbox.run(HOST_PROBE, b"", LIMITS)
    errnos = struct.unpack("<7i", first.output[:28])
    assert errnos[:5] == (52, 52, 52, 52, 52)
    assert errnos[5:] == (0, 0)
    scratch = first.output[28:]
    assert scratch[:16] == bytes(16)  # no time, no random bytes written
    env_count, env_size, argc, argv_size = struct.unpack("<4I", scratch[20:36])
    assert (env_count, env_size) == (0, 0)
    assert (argc, argv_size) == (1, len(b"task\0"))
    again = Sandbox().run(HOST_PROBE, b"", LIMITS)
    assert (again.output, again.fuel_used) == (first.output, first.fuel_used)


def test_stdin_is_the_input_and_stderr_is_kept_apart(sandbox: Sandbox) -> None:
    echo = wasi(
        """
        (i32.store (i32.const 16) (i32.const 1024)) (i32.store (i32.const 20) (i32.const 4096))
        (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
        (i32.store (i32.const 20) (i32.load (i32.const 24)))
        (drop (call $fd_write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))
        (call $out (i32.const 1024) (i32.load (i32.const 24)))
        """,
        imports='(import "wasi_snapshot_preview1" "fd_read"'
        " (func $fd_read (param i32 i32 i32 i32) (result i32)))",
    )
    result = sandbox.run(echo, b"hello sandbox", LIMITS)
    assert result.output == b"hello sandbox"
    assert result.stderr == b"hello sandbox"
    assert result.input_hash == sha256_hex(b"hello sandbox")
    assert sandbox.run(echo, b"", LIMITS).output == b""


def test_receipt_of_a_success(sandbox: Sandbox) -> None:
    receipt, output = sandbox.execute(load_example("primes"), RANGE, LIMITS, task_id="job-7")
    assert output == b"1472\n"
    assert receipt.task_id == "job-7"
    assert receipt.outcome == ExecutionOutcome.OK
    assert receipt.exit_code == 0
    assert receipt.module_hash == sha256_hex(load_example("primes"))
    assert receipt.input_hash == sha256_hex(RANGE)
    assert receipt.output_hash == sha256_hex(output)
    compiled = sandbox.compile(load_example("primes"))
    again, _ = sandbox.execute(compiled, RANGE, LIMITS, task_id="job-7")
    assert again == receipt
