"""The coordinator's sandbox: validates submitted modules and re-executes tasks for audits.

Validation compiles in a thread (compiling is milliseconds and keeps the module cache warm);
audits run in a worker process started on the first audit, so a runaway module can never stall
the coordinator's event loop and is killed at its timeout.
"""

from __future__ import annotations

import asyncio

import wasmtime

from fogcoord.compute.errors import MalformedModule
from fogcoord.compute.sandbox import Sandbox
from fogcoord.compute.worker import WorkerPool
from fogcoord.contracts.compute import SandboxLimits, WorkReceipt


class SandboxExecutor:
    def __init__(self, *, timeout_s: float = 60.0) -> None:
        self.sandbox = Sandbox()
        self.timeout_s = timeout_s
        self._pool: WorkerPool | None = None

    async def validate(self, module: bytes, entry: str) -> str:
        """Compile and check the imports and that ``entry`` is an exported function."""
        compiled = await asyncio.to_thread(self.sandbox.compile, module)
        if not any(
            e.name == entry and isinstance(e.type, wasmtime.FuncType)
            for e in compiled.module.exports
        ):
            raise MalformedModule(f"the module exports no function {entry!r}")
        return compiled.sha256

    async def run(
        self, module: bytes, data: bytes, limits: SandboxLimits, task_id: str, entry: str
    ) -> tuple[WorkReceipt, bytes]:
        if self._pool is None:
            self._pool = WorkerPool(1, timeout_s=self.timeout_s)
        return await self._pool.run(module, data, limits, task_id, entry)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
