"""Why a task did not produce a result: one error per limit or failure, each with its outcome.

Every error carries the stable ``code`` of :class:`~fogcoord.contracts.errors.FogError` and the
:class:`~fogcoord.contracts.compute.ExecutionOutcome` a receipt reports for it, plus the fuel the
task had consumed when it stopped, so that a failed task still yields a signed, reproducible
receipt (:meth:`ComputeError.receipt`). Messages are built from the limit and the WebAssembly trap
code only, never from engine text, so that the receipt's ``detail`` is the same for every
verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fogcoord.contracts.compute import ExecutionOutcome, WorkReceipt, sha256_hex
from fogcoord.contracts.errors import FogError

_EMPTY_HASH = sha256_hex(b"")


class ComputeError(FogError):
    """Base of every sandbox failure."""

    code = "compute_error"
    http_status = 422
    outcome: ClassVar[ExecutionOutcome] = ExecutionOutcome.CRASHED

    def __init__(self, message: str, *, fuel_used: int = 0, **fields: Any) -> None:
        super().__init__(message, fuel_used=fuel_used, **fields)
        self.fuel_used = fuel_used

    @property
    def exit_code(self) -> int | None:
        return None

    def receipt(self, task_id: str, module_hash: str, input_hash: str) -> WorkReceipt:
        """The receipt a device reports for this failure: no output, the fuel spent so far."""
        return WorkReceipt(
            task_id=task_id,
            module_hash=module_hash,
            input_hash=input_hash,
            fuel_used=self.fuel_used,
            output_hash=_EMPTY_HASH,
            outcome=self.outcome,
            exit_code=self.exit_code,
            detail=self.message[:4096],
        )


class MalformedModule(ComputeError):
    """The bytes are not a valid module for this engine, or the entry point is missing."""

    code = "malformed_module"
    outcome = ExecutionOutcome.MALFORMED_MODULE

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed module: {reason}", reason=reason)


class ForbiddenImport(ComputeError):
    """The module imports something the sandbox does not provide; ``imports`` names each one."""

    code = "forbidden_import"
    outcome = ExecutionOutcome.MALFORMED_MODULE

    def __init__(self, imports: Sequence[str]) -> None:
        names = sorted(imports)
        super().__init__(f"forbidden imports: {', '.join(names)}", imports=names)
        self.imports = names


class OutOfFuel(ComputeError):
    code = "out_of_fuel"
    outcome = ExecutionOutcome.OUT_OF_FUEL

    def __init__(self, fuel_limit: int) -> None:
        super().__init__(
            f"all {fuel_limit} fuel consumed", fuel_used=fuel_limit, fuel_limit=fuel_limit
        )
        self.fuel_limit = fuel_limit


class OutOfMemory(ComputeError):
    """The guest needed more than ``memory_bytes`` of linear memory (or its tables more elements).

    Raised when the module's initial memory or tables exceed the limit, and when the guest failed
    after the sandbox refused one of its ``memory.grow`` requests. A guest that copes with the
    refusal and exits 0 has succeeded.
    """

    code = "out_of_memory"
    outcome = ExecutionOutcome.OUT_OF_MEMORY

    def __init__(self, memory_bytes: int, *, fuel_used: int = 0, what: str = "memory") -> None:
        super().__init__(
            f"{what} limit of {memory_bytes} reached",
            fuel_used=fuel_used,
            memory_bytes=memory_bytes,
            what=what,
        )
        self.memory_bytes = memory_bytes


class GuestTrap(ComputeError):
    """The guest trapped; ``trap_code`` is the WebAssembly trap, e.g. ``unreachable``."""

    code = "guest_trap"
    outcome = ExecutionOutcome.TRAP

    def __init__(self, trap_code: str, *, fuel_used: int = 0, stderr: str = "") -> None:
        super().__init__(
            f"trap: {trap_code}", fuel_used=fuel_used, trap_code=trap_code, stderr=stderr
        )
        self.trap_code = trap_code
        self.stderr = stderr


class GuestExit(ComputeError):
    """The guest called ``proc_exit`` with a non-zero code."""

    code = "guest_exit"
    outcome = ExecutionOutcome.EXIT_NONZERO

    def __init__(self, exit_code: int, *, fuel_used: int = 0, stderr: str = "") -> None:
        if exit_code == 0:
            raise ValueError("exit code 0 is success, not an error")
        super().__init__(
            f"exited with code {exit_code}",
            fuel_used=fuel_used,
            exit_code=exit_code,
            stderr=stderr,
        )
        self._exit_code = exit_code
        self.stderr = stderr

    @property
    def exit_code(self) -> int | None:
        return self._exit_code


class OutputTooLarge(ComputeError):
    code = "output_too_large"
    outcome = ExecutionOutcome.OUTPUT_TOO_LARGE

    def __init__(self, max_output_bytes: int, *, fuel_used: int = 0) -> None:
        super().__init__(
            f"output exceeds {max_output_bytes} bytes",
            fuel_used=fuel_used,
            max_output_bytes=max_output_bytes,
        )


class InputTooLarge(ComputeError):
    code = "input_too_large"
    http_status = 413
    outcome = ExecutionOutcome.INPUT_TOO_LARGE

    def __init__(self, size: int, max_input_bytes: int) -> None:
        super().__init__(
            f"input of {size} bytes exceeds {max_input_bytes} bytes",
            size=size,
            max_input_bytes=max_input_bytes,
        )


class TaskTimeout(ComputeError):
    """The worker did not answer within the wall-clock timeout; it was killed and replaced."""

    code = "task_timeout"
    http_status = 504
    outcome = ExecutionOutcome.TIMEOUT

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no result within {timeout_s:g} s", timeout_s=timeout_s)
        self.timeout_s = timeout_s


class WorkerCrashed(ComputeError):
    """The worker process died while running a task; it is replaced on the next task."""

    code = "worker_crashed"
    http_status = 500
    outcome = ExecutionOutcome.CRASHED

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"worker process died (exit code {exitcode})", exitcode=exitcode)
        self.exitcode = exitcode
