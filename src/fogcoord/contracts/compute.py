"""Compute contract: what a sandboxed task is, the limits it runs under, and what a device reports.

A task is a WebAssembly module plus an input, both named by their SHA-256, run under
:class:`SandboxLimits`. The device that ran it answers with a :class:`WorkReceipt` and signs the
receipt's :meth:`~WorkReceipt.canonical_bytes` with its Ed25519 key. Fuel (one unit per executed
WebAssembly operator) is exactly repeatable, so a verifier that runs the same module on the same
input under the same limits gets the same ``fuel_used``, ``output_hash`` and ``outcome``; work is
billed through :func:`fogcoord.contracts.units.fuel_to_gflop`.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

SHA256_PATTERN = r"^[0-9a-f]{64}$"
"""A SHA-256 digest as 64 lowercase hex digits."""

RECEIPT_VERSION = "fogcoord-receipt-v1"
"""First line of a receipt's canonical bytes; changes whenever the encoding does."""

MIB = 1 << 20


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex digits: how modules, inputs and outputs are named."""
    return hashlib.sha256(data).hexdigest()


class SandboxLimits(BaseModel):
    """Everything a task may consume. Each limit has its own error and outcome when exceeded."""

    model_config = ConfigDict(frozen=True)

    fuel: int = Field(gt=0, description="WebAssembly operators the task may execute")
    memory_bytes: int = Field(default=64 * MIB, gt=0, description="linear memory ceiling")
    table_elements: int = Field(default=10_000, gt=0, description="elements across all tables")
    max_output_bytes: int = Field(default=16 * MIB, ge=0, description="stdout ceiling")
    max_input_bytes: int = Field(default=16 * MIB, ge=0, description="stdin ceiling")


class TaskSpec(BaseModel):
    """One unit of work as the coordinator hands it out: content hashes, entry point, limits."""

    model_config = ConfigDict(frozen=True)

    task_id: str = Field(min_length=1, max_length=128)
    module_hash: str = Field(pattern=SHA256_PATTERN)
    input_hash: str = Field(pattern=SHA256_PATTERN)
    entry: str = Field(default="_start", min_length=1)
    limits: SandboxLimits


class ExecutionOutcome(StrEnum):
    """How a task ended. Every outcome except ``timeout`` and ``crashed`` is deterministic."""

    OK = "ok"
    OUT_OF_FUEL = "out_of_fuel"
    OUT_OF_MEMORY = "out_of_memory"
    TRAP = "trap"
    MALFORMED_MODULE = "malformed_module"
    EXIT_NONZERO = "exit_nonzero"
    OUTPUT_TOO_LARGE = "output_too_large"
    INPUT_TOO_LARGE = "input_too_large"
    TIMEOUT = "timeout"
    CRASHED = "crashed"


class WorkReceipt(BaseModel):
    """What a device reports for one task, failed or not; it signs :meth:`canonical_bytes`."""

    model_config = ConfigDict(frozen=True)

    task_id: str = Field(min_length=1, max_length=128)
    module_hash: str = Field(pattern=SHA256_PATTERN)
    input_hash: str = Field(pattern=SHA256_PATTERN)
    fuel_used: int = Field(ge=0)
    output_hash: str = Field(pattern=SHA256_PATTERN)
    outcome: ExecutionOutcome
    exit_code: int | None = None
    detail: str = Field(default="", max_length=4096)

    def canonical_bytes(self) -> bytes:
        """The exact bytes a device signs, stable across Python and pydantic versions.

        UTF-8 of :data:`RECEIPT_VERSION`, then one line per field in declaration order,
        ``name=value``, where ``value`` is the JSON encoding with ASCII escapes (a string in
        quotes, an integer in decimal, a missing exit code as ``null``), joined by ``\\n`` with no
        trailing newline. JSON escaping keeps a newline inside ``detail`` from forging a field.
        """
        values: tuple[tuple[str, str | int | None], ...] = (
            ("task_id", self.task_id),
            ("module_hash", self.module_hash),
            ("input_hash", self.input_hash),
            ("fuel_used", self.fuel_used),
            ("output_hash", self.output_hash),
            ("outcome", self.outcome.value),
            ("exit_code", self.exit_code),
            ("detail", self.detail),
        )
        lines = [RECEIPT_VERSION, *(f"{name}={json.dumps(value)}" for name, value in values)]
        return "\n".join(lines).encode("utf-8")
