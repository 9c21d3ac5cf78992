"""The deterministic WebAssembly sandbox: one engine configuration, limits, and execution.

A task is a WASI command module: it reads its input from stdin and writes its result to stdout.
The sandbox guarantees that the same module, input and limits give the same output, the same
fuel count and the same outcome on every run, in every process, on every machine with the same
wasmtime version and architecture:

* fuel metering is on, so a task stops after exactly ``limits.fuel`` operators;
* NaN results are canonicalised and relaxed SIMD is off, so floating point has one answer;
* threads, shared memory and every proposal with host-dependent behaviour are disabled;
* the guest sees a fixed ``argv``, an empty environment, no files, no sockets, and the WASI
  clocks, randomness and ``poll_oneoff`` answer ``ENOSYS`` without asking the host;
* a module may import only the WASI functions in :data:`ALLOWED_WASI` (with their exact types);
  anything else is rejected when it is compiled, by name.

Every limit that stops a task raises its own error (see :mod:`fogcoord.compute.errors`);
:meth:`Sandbox.execute` turns any of them into a receipt instead.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import wasmtime

from fogcoord.compute.cache import CacheKey, CompiledModule, ModuleCache
from fogcoord.compute.errors import (
    ComputeError,
    ForbiddenImport,
    GuestExit,
    GuestTrap,
    InputTooLarge,
    MalformedModule,
    OutOfFuel,
    OutOfMemory,
    OutputTooLarge,
)
from fogcoord.compute.instrument import (
    GROW_REFUSED_EXPORT,
    INSTRUMENTATION_VERSION,
    PAGE_BYTES,
    InstrumentError,
    layout,
)
from fogcoord.compute.proof import ExecutionResult
from fogcoord.compute.stdio import Capture, Stdio
from fogcoord.contracts.compute import SandboxLimits, WorkReceipt, sha256_hex

WASI = "wasi_snapshot_preview1"
ENOSYS = 52
"""WASI errno "function not supported"."""
ARGV = ("task",)
_WASM_MAGIC = b"\x00asm"

_SIGNATURES: dict[str, tuple[str, str]] = {
    # name: (params, results), one letter per value: i = i32, I = i64
    "args_get": ("ii", "i"),
    "args_sizes_get": ("ii", "i"),
    "environ_get": ("ii", "i"),
    "environ_sizes_get": ("ii", "i"),
    "clock_res_get": ("ii", "i"),
    "clock_time_get": ("iIi", "i"),
    "fd_close": ("i", "i"),
    "fd_datasync": ("i", "i"),
    "fd_fdstat_get": ("ii", "i"),
    "fd_fdstat_set_flags": ("ii", "i"),
    "fd_filestat_get": ("ii", "i"),
    "fd_prestat_get": ("ii", "i"),
    "fd_prestat_dir_name": ("iii", "i"),
    "fd_read": ("iiii", "i"),
    "fd_seek": ("iIii", "i"),
    "fd_sync": ("i", "i"),
    "fd_tell": ("ii", "i"),
    "fd_write": ("iiii", "i"),
    "poll_oneoff": ("iiii", "i"),
    "proc_exit": ("i", ""),
    "random_get": ("ii", "i"),
    "sched_yield": ("", "i"),
}
ALLOWED_WASI: frozenset[str] = frozenset(_SIGNATURES)
"""The ``wasi_snapshot_preview1`` functions a module may import: stdio, args, environment (empty),
exit, and the calls below that the sandbox answers itself. No paths, sockets or preopened files
exist, so the descriptor calls reach only stdin, stdout and stderr."""

ENOSYS_WASI: frozenset[str] = frozenset(
    {"clock_res_get", "clock_time_get", "random_get", "poll_oneoff"}
)
"""Calls that would leak the host (its time, its entropy, its scheduler): they return ENOSYS."""


def _valtype(letter: str) -> wasmtime.ValType:
    return wasmtime.ValType.i64() if letter == "I" else wasmtime.ValType.i32()


def _functype(name: str) -> wasmtime.FuncType:
    params, results = _SIGNATURES[name]
    return wasmtime.FuncType([_valtype(c) for c in params], [_valtype(c) for c in results])


def _signature(ty: wasmtime.FuncType) -> tuple[str, str]:
    def letters(types: list[wasmtime.ValType]) -> str:
        return "".join({"i32": "i", "i64": "I"}.get(str(t), "?") for t in types)

    return letters(ty.params), letters(ty.results)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The engine settings a task's result depends on; all of them are in the cache key."""

    consume_fuel: bool = True
    """Off only to measure what metering costs; an unmetered sandbox reports zero fuel."""
    nan_canonicalization: bool = True
    max_wasm_stack: int = 512 * 1024
    """Deepest guest stack in bytes. Where recursion overflows depends on the compiled frame
    sizes, so stack overflows are reproducible only on the same wasmtime version and machine."""
    opt_level: str = "speed"

    def config(self) -> wasmtime.Config:
        config = wasmtime.Config()
        config.consume_fuel = self.consume_fuel
        config.cranelift_nan_canonicalization = self.nan_canonicalization
        config.cranelift_opt_level = self.opt_level
        config.max_wasm_stack = self.max_wasm_stack
        config.parallel_compilation = False
        for feature, enabled in _FEATURES.items():
            setattr(config, feature, enabled)
        return config

    def fingerprint(self) -> str:
        """16 hex digits naming everything compiled code depends on besides the module."""
        described = {
            "wasmtime": version("wasmtime"),
            "machine": platform.machine(),
            "instrumentation": INSTRUMENTATION_VERSION,
            "features": _FEATURES,
            **asdict(self),
        }
        text = json.dumps(described, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_FEATURES: Mapping[str, bool] = {
    # Non-deterministic or host-dependent: never.
    "wasm_threads": False,
    "shared_memory": False,
    "wasm_relaxed_simd": False,
    "wasm_relaxed_simd_deterministic": True,
    # Proposals whose opcodes the memory.grow instrumentation does not decode.
    "wasm_memory64": False,
    "wasm_multi_memory": False,
    "wasm_gc": False,
    "wasm_function_references": False,
    "wasm_exceptions": False,
    "wasm_stack_switching": False,
    "wasm_wide_arithmetic": False,
    "wasm_custom_page_sizes": False,
    "wasm_component_model": False,
    # WebAssembly 2.0, which compilers emit by default.
    "wasm_simd": True,
    "wasm_bulk_memory": True,
    "wasm_reference_types": True,
    "wasm_multi_value": True,
    "wasm_tail_call": True,
}


def _enosys(*_args: Any) -> int:
    return ENOSYS


class Sandbox:
    """Compiles and runs WASI modules deterministically under :class:`SandboxLimits`.

    Thread-safe: each run gets its own store; the engine, linker and cache are shared.
    """

    def __init__(
        self,
        settings: EngineSettings | None = None,
        *,
        cache: ModuleCache | None = None,
        cache_size: int = 64,
        cache_dir: Path | str | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self.engine = wasmtime.Engine(self.settings.config())
        self.fingerprint = self.settings.fingerprint()
        self.cache = cache if cache is not None else ModuleCache(cache_size, cache_dir)
        self.linker = self._linker()

    def _linker(self) -> wasmtime.Linker:
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        for name in sorted(ENOSYS_WASI):
            linker.define_func(WASI, name, _functype(name), _enosys)
        return linker

    # --- compiling ----------------------------------------------------------------------------

    def compile(self, wasm_or_wat: bytes | str) -> CompiledModule:
        """Validate, check imports, instrument and compile, or return the cached module.

        Binary modules and WebAssembly text are both accepted; the cache key and
        ``CompiledModule.sha256`` are the SHA-256 of exactly the bytes given (text as UTF-8).
        """
        raw = wasm_or_wat.encode() if isinstance(wasm_or_wat, str) else bytes(wasm_or_wat)
        key = CacheKey(sha256_hex(raw), self.fingerprint)
        cached = self.cache.get(key, self.engine)
        if cached is not None:
            return cached
        compiled = self._compile(raw, key.sha256)
        self.cache.put(key, compiled)
        return compiled

    def cached(self, sha256: str) -> CompiledModule | None:
        """The module compiled from bytes with this SHA-256, if the cache still holds it."""
        return self.cache.get(CacheKey(sha256, self.fingerprint), self.engine)

    def _compile(self, raw: bytes, sha256: str) -> CompiledModule:
        wasm = raw if raw.startswith(_WASM_MAGIC) else _wat_to_wasm(raw)
        try:
            wasmtime.Module.validate(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise MalformedModule(_reason(exc)) from None
        try:
            shape = layout(wasm)
        except InstrumentError as exc:
            raise MalformedModule(f"cannot instrument: {exc}") from None
        try:
            module = wasmtime.Module(self.engine, shape.wasm)
        except wasmtime.WasmtimeError as exc:
            raise MalformedModule(_reason(exc)) from None
        forbidden = [
            f"{imp.module}.{imp.name}"
            for imp in module.imports
            if not _allowed(imp.module, imp.name, imp.type)
        ]
        if forbidden:
            raise ForbiddenImport(forbidden)
        return CompiledModule(
            sha256=sha256,
            module=module,
            memory_min_pages=shape.memory_min_pages,
            table_min_elements=shape.table_min_elements,
            grow_sites=shape.grow_sites,
        )

    # --- running ------------------------------------------------------------------------------

    def run(
        self,
        module: CompiledModule | bytes | str,
        input: bytes,
        limits: SandboxLimits,
        entry: str = "_start",
    ) -> ExecutionResult:
        """Run ``entry`` (called with no arguments) with ``input`` on stdin; raise on any failure.

        Success is the entry returning, or the guest calling ``proc_exit(0)``.
        """
        compiled = module if isinstance(module, CompiledModule) else self.compile(module)
        if len(input) > limits.max_input_bytes:
            raise InputTooLarge(len(input), limits.max_input_bytes)
        if compiled.memory_min_pages * PAGE_BYTES > limits.memory_bytes:
            raise OutOfMemory(limits.memory_bytes)
        if compiled.table_min_elements > limits.table_elements:
            raise OutOfMemory(limits.table_elements, what="table")
        store = wasmtime.Store(self.engine)
        stdio = Stdio(input, limits.max_output_bytes)
        try:
            return self._run(store, compiled, stdio, limits, entry)
        finally:
            # a store holds the guest's memory (up to limits.memory_bytes): free it now
            store.close()
            stdio.settle()

    def execute(
        self,
        module: CompiledModule | bytes | str,
        input: bytes,
        limits: SandboxLimits,
        *,
        task_id: str,
        entry: str = "_start",
    ) -> tuple[WorkReceipt, bytes]:
        """:meth:`run`, reporting every failure as a receipt: what a device sends back.

        A failed task has an empty output; the receipt says why and how much fuel it spent.
        """
        if isinstance(module, CompiledModule):
            module_hash = module.sha256
        else:
            module_hash = sha256_hex(module.encode() if isinstance(module, str) else module)
        try:
            result = self.run(module, input, limits, entry)
        except ComputeError as exc:
            return exc.receipt(task_id, module_hash, sha256_hex(input)), b""
        return result.receipt(task_id), result.output

    def _run(
        self,
        store: wasmtime.Store,
        compiled: CompiledModule,
        stdio: Stdio,
        limits: SandboxLimits,
        entry: str,
    ) -> ExecutionResult:
        store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=limits.table_elements,
            instances=1,
            tables=100,
            memories=1,
        )
        metered = self.settings.consume_fuel
        if metered:
            store.set_fuel(limits.fuel)
        wasi = wasmtime.WasiConfig()
        wasi.argv = list(ARGV)
        stdio.configure(wasi)
        store.set_wasi(wasi)
        stdio.attached = True

        failure: Exception | None = None
        refused = False
        try:
            instance = self.linker.instantiate(store, compiled.module)
        except (wasmtime.Trap, wasmtime.ExitTrap) as exc:
            # the start function ran and failed
            failure, instance = exc, None
        except wasmtime.WasmtimeError as exc:
            raise MalformedModule(f"cannot instantiate: {_reason(exc)}") from None
        if instance is not None:
            try:
                _entry(instance, store, entry)(store)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                failure = exc
            if failure is not None and compiled.grow_sites:
                refused = _grow_refused(instance, store)
        fuel_used = limits.fuel - store.get_fuel() if metered else 0
        if isinstance(failure, wasmtime.ExitTrap) and failure.code == 0:
            failure = None
        error = _classify(failure, limits, fuel_used, stdio.stdout, stdio.stderr, refused)
        if error is not None:
            raise error
        return ExecutionResult(
            module_hash=compiled.sha256,
            input_hash=sha256_hex(stdio.stdin),
            output=stdio.stdout.value(),
            fuel_used=fuel_used,
            exit_code=0,
            stderr=stdio.stderr.value(),
        )


def _classify(
    failure: Exception | None,
    limits: SandboxLimits,
    fuel_used: int,
    stdout: Capture,
    stderr: Capture,
    grow_refused: bool,
) -> ComputeError | None:
    """The error for a run that failed, most fundamental cause first."""
    if isinstance(failure, wasmtime.Trap) and failure.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return OutOfFuel(limits.fuel)
    if stdout.overflowed:
        return OutputTooLarge(limits.max_output_bytes, fuel_used=fuel_used)
    if failure is None:
        return None
    if grow_refused:
        return OutOfMemory(limits.memory_bytes, fuel_used=fuel_used)
    text = stderr.value()[-1024:].decode("utf-8", errors="replace")
    if isinstance(failure, wasmtime.ExitTrap):
        return GuestExit(failure.code, fuel_used=fuel_used, stderr=text)
    if isinstance(failure, wasmtime.Trap):
        code = failure.trap_code
        name = code.name.lower() if code is not None else "unknown"
        return GuestTrap(name, fuel_used=fuel_used, stderr=text)
    # WASI refused the call: a misaligned pointer, I/O from a module that exports no memory
    return GuestTrap("wasi_error", fuel_used=fuel_used, stderr=text)


def _grow_refused(instance: wasmtime.Instance, store: wasmtime.Store) -> bool:
    flag = instance.exports(store).get(GROW_REFUSED_EXPORT)
    return isinstance(flag, wasmtime.Global) and bool(flag.value(store))


def _entry(instance: wasmtime.Instance, store: wasmtime.Store, name: str) -> wasmtime.Func:
    func = instance.exports(store).get(name)
    if not isinstance(func, wasmtime.Func):
        raise MalformedModule(f"no exported function {name!r}")
    if func.type(store).params:
        raise MalformedModule(f"entry {name!r} takes parameters")
    return func


def _allowed(module: str, name: str | None, ty: object) -> bool:
    if module != WASI or name not in _SIGNATURES or not isinstance(ty, wasmtime.FuncType):
        return False
    return _signature(ty) == _SIGNATURES[name]


def _wat_to_wasm(raw: bytes) -> bytes:
    try:
        return bytes(wasmtime.wat2wasm(raw.decode("utf-8")))
    except (UnicodeDecodeError, wasmtime.WasmtimeError) as exc:
        raise MalformedModule(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    """The error and, for text, its location: ``expected `)` --> <anon>:16:53``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:2]) if lines[1:2] and lines[1].startswith("-->") else lines[0]
