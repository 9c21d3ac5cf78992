"""Federated training on the device: the agent's ``study`` handler.

The coordinator sends the current model; the device trains it on its own data with the study's
trainer plugin (``fogcoord.trainers``), clips the update to the study's L2 bound and answers.
Training runs in a thread so the agent keeps heartbeating. The device's data never leaves it.

``Poison`` exists for demonstrations and tests of robust aggregation only: it makes an agent send
a sign-flipped, scaled update, as a poisoning client would, so the coordinator's Byzantine
detection can be seen to catch it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from pydantic import ValidationError

from fogcoord.agent.identity import DeviceIdentity
from fogcoord.contracts.studies import EncodedArray, encode_model
from fogcoord.secagg import (
    MaskedInputRequest,
    SecAggClient,
    SecAggError,
    ShareKeysRequest,
    UnmaskRequest,
    decode_message,
    encode_message,
)
from fogcoord.trainers import Arrays, Trainer, TrainResult, UnknownTrainer, load_trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Poison:
    scale: float = 10.0
    """The update sent is -scale times the honest one (before clipping)."""


class TrainingExecutor:
    def __init__(
        self, identity: Callable[[], DeviceIdentity | None], *, poison: Poison | None = None
    ) -> None:
        self._identity = identity
        self.poison = poison
        self._trainers: dict[tuple[str, str], Trainer] = {}
        self._sessions: dict[str, tuple[SecAggClient, np.ndarray[Any, Any]]] = {}
        self.rounds = 0

    def _trainer(self, study_id: str, name: str, config: dict[str, Any], device: str) -> Trainer:
        key = (study_id, name)
        trainer = self._trainers.get(key)
        if trainer is None:
            trainer = load_trainer(name)(device, config)
            self._trainers[key] = trainer
        return trainer

    async def __call__(self, message: dict[str, Any]) -> dict[str, Any] | None:
        identity = self._identity()
        if identity is None:
            return None
        reply: dict[str, Any] = {"type": "study_result", "request_id": message.get("request_id")}
        op = message.get("op")
        try:
            if op == "train":
                update, result = await self._train(message, identity.device_id)
                return {
                    **reply,
                    "update": {k: v.model_dump() for k, v in encode_model(update).items()},
                    "examples": result.examples,
                    "metrics": result.metrics,
                }
            if op == "secagg_setup":
                update, result = await self._train(message, identity.device_id)
                names = sorted(update)
                vector = np.concatenate([update[n].astype(np.float64).ravel() for n in names])
                client = SecAggClient(identity.device_id)
                request = decode_message(str(message["message"]))
                answer = client.setup(cast(Any, request))
                self._sessions[str(message["session"])] = (client, vector)
                return {
                    **reply,
                    "message": encode_message(answer),
                    "examples": result.examples,
                    "metrics": result.metrics,
                }
            if op == "secagg":
                return {**reply, "message": self._secagg(message)}
        except (KeyError, ValueError, TypeError, ValidationError, UnknownTrainer) as exc:
            return {**reply, "error": f"cannot take part: {exc}"}
        except SecAggError as exc:
            self._sessions.pop(str(message.get("session")), None)
            return {**reply, "error": f"secure aggregation: {exc}"}
        return {**reply, "error": f"unknown study operation {op!r}"}

    async def _train(self, message: dict[str, Any], device_id: str) -> tuple[Arrays, TrainResult]:
        model = {
            k: EncodedArray.model_validate(v).decode() for k, v in dict(message["model"]).items()
        }
        trainer = self._trainer(
            str(message["study_id"]),
            str(message["trainer"]),
            dict(message.get("trainer_config", {})),
            device_id,
        )
        clip = float(message["clip_norm"])
        result = await asyncio.to_thread(trainer.train, model)
        update = result.update
        if self.poison is not None:
            update = {k: -self.poison.scale * v for k, v in update.items()}
        squares = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in update.values())
        norm = float(np.sqrt(squares))
        if norm > clip:
            update = {k: (v * (clip / norm)).astype(v.dtype) for k, v in update.items()}
        self.rounds += 1
        return update, result

    def _secagg(self, message: dict[str, Any]) -> str:
        session = str(message["session"])
        client, vector = self._sessions[session]
        request = decode_message(str(message["message"]))
        if isinstance(request, ShareKeysRequest):
            return encode_message(client.share_keys(request))
        if isinstance(request, MaskedInputRequest):
            return encode_message(client.masked_input(request, vector))
        if isinstance(request, UnmaskRequest):
            answer = client.unmask(request)
            del self._sessions[session]  # the round is over for this device
            return encode_message(answer)
        raise ValueError(f"unexpected secure-aggregation message {type(request).__name__}")
