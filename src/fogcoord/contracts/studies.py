"""Federated studies: a model trained across devices, round by round, privately.

A requester creates a study with a model (named numpy arrays), a trainer (a plugin on the
devices), the number of rounds and clients per round, the clip norm, the privacy parameters per
round and the aggregation mode. Each round the coordinator selects devices with privacy budget
left, sends them the model, and aggregates their clipped updates (securely, robustly or both),
adds calibrated Gaussian noise, updates the model and pays the participants.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fogcoord.contracts.events import ServiceEvent

MAX_MODEL_VALUES = 10_000_000


class EncodedArray(BaseModel):
    """A numpy array on the wire: dtype, shape and the raw little-endian bytes in base64."""

    model_config = ConfigDict(frozen=True)

    dtype: str = Field(pattern=r"^(float16|float32|float64)$")
    shape: tuple[int, ...]
    b64: str

    @field_validator("shape")
    @classmethod
    def _sane_shape(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 0 for d in v) or int(np.prod(v, dtype=np.int64)) > MAX_MODEL_VALUES:
            raise ValueError(f"dimensions must be non-negative and hold <= {MAX_MODEL_VALUES}")
        return v

    def decode(self) -> np.ndarray[Any, Any]:
        raw = base64.b64decode(self.b64, validate=True)
        dtype = np.dtype(self.dtype).newbyteorder("<")
        expected = int(np.prod(self.shape, dtype=np.int64)) * dtype.itemsize
        if len(raw) != expected:
            raise ValueError(f"{len(raw)} bytes for shape {self.shape} of {self.dtype}")
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape).astype(self.dtype)

    @classmethod
    def of(cls, array: np.ndarray[Any, Any]) -> EncodedArray:
        a = np.ascontiguousarray(array)
        if a.dtype.name not in ("float16", "float32", "float64"):
            a = a.astype(np.float32)
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        return cls(dtype=a.dtype.name, shape=tuple(a.shape), b64=base64.b64encode(data).decode())


def encode_model(arrays: dict[str, np.ndarray[Any, Any]]) -> dict[str, EncodedArray]:
    return {name: EncodedArray.of(a) for name, a in arrays.items()}


def decode_model(model: dict[str, EncodedArray]) -> dict[str, np.ndarray[Any, Any]]:
    return {name: a.decode() for name, a in model.items()}


class Aggregation(StrEnum):
    SECURE = "secure"
    """SecAgg+ over every participant: the coordinator learns only the sum; no robustness."""
    ROBUST = "robust"
    """Individual clipped updates, aggregated robustly: Byzantine clients caught, none hidden."""
    GROUPED = "grouped"
    """SecAgg+ inside small random groups, robust aggregation across the group sums."""


class RobustMethod(StrEnum):
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"
    BULYAN = "bulyan"


class StudyState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StudySpec(BaseModel):
    """``POST /v1/studies``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="", max_length=100)
    model: dict[str, EncodedArray] = Field(min_length=1)
    trainer: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    trainer_config: dict[str, Any] = Field(default_factory=dict)
    rounds: int = Field(ge=1, le=10_000)
    clients_per_round: int = Field(ge=2, le=10_000)
    clip_norm: float = Field(gt=0)
    epsilon: float = Field(gt=0, description="per round, for the Gaussian mechanism")
    delta: float | None = Field(default=None, gt=0, lt=1, description="default: config")
    aggregation: Aggregation = Aggregation.ROBUST
    robust_method: RobustMethod = RobustMethod.MULTI_KRUM
    group_size: int = Field(default=5, ge=2, le=1000)
    payment_per_round: Decimal = Field(default=Decimal("0.01"), ge=0, le=1_000_000)
    round_timeout_seconds: float = Field(default=60.0, gt=0)
    server_learning_rate: float = Field(default=1.0, gt=0)
    wallet: str | None = None


class RoundRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    round: int
    participants: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    flagged: dict[str, str] = Field(default_factory=dict, description="device -> reasons")
    accuracy: float | None = None
    loss: float | None = None
    noise_sigma: float
    epsilon_spent_max: float
    update_norm: float
    paid: Decimal
    seconds: float
    aggregation: str


class StudyView(BaseModel):
    model_config = ConfigDict(frozen=True)

    study_id: str
    name: str
    requester: str
    state: StudyState
    reason: str = ""
    trainer: str
    aggregation: Aggregation
    rounds: int
    rounds_done: int
    clients_per_round: int
    epsilon_per_round: float
    delta: float
    held: Decimal
    paid: Decimal
    history: tuple[RoundRecord, ...] = ()
    flagged_total: dict[str, int] = Field(default_factory=dict)


class StudyRoundCompleted(ServiceEvent):
    study_id: str
    round: int
    participants: int
    flagged: int
    accuracy: float | None
    epsilon_spent_max: float


class StudyStateChanged(ServiceEvent):
    durable = True

    study_id: str
    previous: str
    state: str
    reason: str = ""
