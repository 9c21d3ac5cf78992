"""Deterministic WebAssembly execution under fuel metering: how work is done and measured.

A task is a WASI module plus an input. :class:`Sandbox` compiles the module once (cached by its
SHA-256 and the engine configuration), runs it under :class:`~fogcoord.contracts.compute.
SandboxLimits` and reports the exact fuel it used: one unit per WebAssembly operator, identical on
every run, so any verifier can reproduce the count and the output. :class:`WorkerPool` runs tasks
in persistent worker processes with a wall-clock timeout; it is what a device agent uses. Work is
billed in GFLOP-equivalents through :func:`fogcoord.contracts.units.fuel_to_gflop`.

This package imports only :mod:`fogcoord.contracts` from the rest of the system.
"""

from fogcoord.compute.cache import CompiledModule, ModuleCache
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
    TaskTimeout,
    WorkerCrashed,
)
from fogcoord.compute.proof import (
    ExecutionResult,
    disagreements,
    sign_receipt,
    verify_receipt,
)
from fogcoord.compute.sandbox import ALLOWED_WASI, ENOSYS_WASI, EngineSettings, Sandbox
from fogcoord.compute.worker import WorkerPool

__all__ = [
    "ALLOWED_WASI",
    "ENOSYS_WASI",
    "CompiledModule",
    "ComputeError",
    "EngineSettings",
    "ExecutionResult",
    "ForbiddenImport",
    "GuestExit",
    "GuestTrap",
    "InputTooLarge",
    "MalformedModule",
    "ModuleCache",
    "OutOfFuel",
    "OutOfMemory",
    "OutputTooLarge",
    "Sandbox",
    "TaskTimeout",
    "WorkerCrashed",
    "WorkerPool",
    "disagreements",
    "sign_receipt",
    "verify_receipt",
]
