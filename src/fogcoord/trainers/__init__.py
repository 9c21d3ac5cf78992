"""Trainer plugins: how a device trains a study's model on its own data.

A trainer is found by name among the ``fogcoord.trainers`` entry points of the installed
packages, so anyone can ship one in their own package. It is a class with

- ``__init__(self, device_id: str, config: dict)``: load or build the device's local data;
- ``train(self, model: dict[str, ndarray]) -> TrainResult``: the update (new minus old
  weights), the number of examples used, and metrics on the device's held-out data.

The agent clips the update and hides it in secure aggregation; the trainer never sees either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np

GROUP = "fogcoord.trainers"

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass
class TrainResult:
    update: Arrays
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer(Protocol):
    def train(self, model: Arrays) -> TrainResult: ...


class TrainerFactory(Protocol):
    def __call__(self, device_id: str, config: dict[str, Any]) -> Trainer: ...


class UnknownTrainer(LookupError):
    pass


def load_trainer(name: str) -> TrainerFactory:
    found = [e for e in entry_points(group=GROUP) if e.name == name]
    if not found:
        known = sorted(e.name for e in entry_points(group=GROUP))
        raise UnknownTrainer(f"no trainer {name!r} is installed (installed: {', '.join(known)})")
    factory: TrainerFactory = found[0].load()
    return factory
