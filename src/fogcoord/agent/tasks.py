"""Running pushed tasks: the agent's ``task`` handler.

A task arrives over the channel with its input, limits and (the first time) the module. It runs in
a worker process under fuel metering (``fogcoord.compute.WorkerPool``), so the agent keeps
heartbeating while it computes and a runaway module is killed at its timeout. The answer is a
``task_result`` frame: the work receipt (module hash, input hash, fuel used, output hash, outcome)
signed with the device's Ed25519 key, and the output.

``Cheat`` exists for demonstrations and tests of verification only: it makes an agent return
wrong outputs or inflated fuel, with a correctly signed receipt, exactly as a dishonest device
would, so the coordinator's quorum, audits and payouts can be seen to catch it.
"""

from __future__ import annotations

import base64
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from fogcoord.agent.identity import DeviceIdentity
from fogcoord.compute.errors import ComputeError
from fogcoord.compute.worker import WorkerPool
from fogcoord.contracts.compute import SandboxLimits, WorkReceipt, sha256_hex

log = logging.getLogger(__name__)


class CheatMode(StrEnum):
    WRONG_OUTPUT = "wrong_output"
    INFLATED_FUEL = "inflated_fuel"


@dataclass(frozen=True)
class Cheat:
    mode: CheatMode
    rate: float = 1.0
    """Share of tasks cheated on (the rest are answered honestly)."""
    salt: int = 1
    """Makes this cheater's lies its own: independent cheaters do not agree by accident."""


class TaskExecutor:
    """The ``task`` handler: run, sign, answer."""

    def __init__(
        self,
        identity: Callable[[], DeviceIdentity | None],
        pool: WorkerPool,
        *,
        cheat: Cheat | None = None,
        rng: Callable[[], float] | None = None,
        modules: int = 16,
    ) -> None:
        self._identity = identity
        self.pool = pool
        self.cheat = cheat
        self._rng = rng
        self._modules: OrderedDict[str, bytes] = OrderedDict()
        self._capacity = modules
        self.completed = 0
        self.failed = 0

    async def __call__(self, message: dict[str, Any]) -> dict[str, Any] | None:
        replica_id = str(message.get("replica_id", ""))
        identity = self._identity()
        if identity is None:
            return None
        try:
            module = self._module(message)
            if module is None:
                return {"type": "task_result", "replica_id": replica_id, "error": "module_missing"}
            data = base64.b64decode(str(message.get("input_b64", "")), validate=True)
            limits = SandboxLimits.model_validate(message.get("limits"))
            task_id = str(message["task_id"])
            entry = str(message.get("entry", "_start"))
            timeout = float(message.get("timeout_seconds", self.pool.timeout_s))
        except (KeyError, ValueError, ValidationError) as exc:
            self.failed += 1
            return {"type": "task_result", "replica_id": replica_id, "error": f"bad task: {exc}"}
        try:
            receipt, output = await self.pool.run(
                module, data, limits, task_id, entry, timeout_s=max(0.1, timeout * 0.9)
            )
        except ComputeError as exc:  # timeout or a crashed worker: the coordinator reassigns
            self.failed += 1
            receipt, output = exc.receipt(task_id, sha256_hex(module), sha256_hex(data)), b""
        receipt, output = self._maybe_cheat(receipt, output)
        self.completed += 1
        return {
            "type": "task_result",
            "replica_id": replica_id,
            "receipt": receipt.model_dump(mode="json"),
            "signature": identity.sign(receipt.canonical_bytes()),
            "output_b64": base64.b64encode(output).decode(),
        }

    def _module(self, message: dict[str, Any]) -> bytes | None:
        module_hash = str(message.get("module_hash", ""))
        raw = message.get("module_b64")
        if raw is not None:
            module = base64.b64decode(str(raw), validate=True)
            if sha256_hex(module) != module_hash:
                raise ValueError("the module does not match its hash")
            self._modules[module_hash] = module
            while len(self._modules) > self._capacity:
                self._modules.popitem(last=False)
            return module
        cached = self._modules.get(module_hash)
        if cached is not None:
            self._modules.move_to_end(module_hash)
        return cached

    def _maybe_cheat(self, receipt: WorkReceipt, output: bytes) -> tuple[WorkReceipt, bytes]:
        cheat = self.cheat
        if cheat is None or receipt.outcome.value != "ok":
            return receipt, output
        if self._rng is not None and self._rng() >= cheat.rate:
            return receipt, output
        if cheat.mode is CheatMode.INFLATED_FUEL:
            extra = receipt.fuel_used * (10 + cheat.salt % 90) // 100 + 1
            return receipt.model_copy(update={"fuel_used": receipt.fuel_used + extra}), output
        key = 1 + cheat.salt % 255
        forged = bytes(b ^ key for b in output) or bytes([key])
        return receipt.model_copy(update={"output_hash": sha256_hex(forged)}), forged
