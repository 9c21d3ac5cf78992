"""Compute jobs: what a requester submits, what it sees, and the events of every transition.

A job is one WebAssembly module (content-addressed by SHA-256) run on a list of inputs, one task
per input, each replicated on devices of distinct owners and accepted when enough replicas agree
on output hash and fuel. The state machine::

    submitted -> auctioned -> allocated -> running -> verified -> settled
                      \\            \\           \\
                       +------------+-----------+--> failed | cancelled

``failed`` and ``cancelled`` return every micro-token not earned by verified work.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fogcoord.contracts.events import ServiceEvent


class JobState(StrEnum):
    SUBMITTED = "submitted"
    AUCTIONED = "auctioned"
    ALLOCATED = "allocated"
    RUNNING = "running"
    VERIFIED = "verified"
    SETTLED = "settled"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SETTLED, JobState.FAILED, JobState.CANCELLED)


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"


class JobSubmission(BaseModel):
    """``POST /v1/jobs``: the module as WAT text or base64 WASM, one base64 input per task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="", max_length=100)
    module_wat: str | None = Field(default=None, description="WebAssembly text")
    module_wasm_b64: str | None = Field(default=None, description="WebAssembly binary, base64")
    inputs_b64: list[str] = Field(min_length=1, description="one base64 input per task")
    entry: str = Field(default="_start", min_length=1, max_length=100)
    fuel_limit: int = Field(gt=0, le=10**13, description="fuel per task (1e9 fuel = 1 GFLOP)")
    memory_mb: int = Field(default=64, ge=1, le=4096)
    replication: int = Field(default=2, ge=1, le=16)
    max_price_per_gflop: Decimal = Field(gt=0, description="ceiling, tokens per GFLOP")
    deadline_seconds: float = Field(default=3_600.0, gt=0, le=30 * 86_400)
    slots: int | None = Field(default=None, ge=1, le=10_000, description="devices to hire")
    wallet: str | None = None

    @model_validator(mode="after")
    def _one_module(self) -> JobSubmission:
        if (self.module_wat is None) == (self.module_wasm_b64 is None):
            raise ValueError("give exactly one of module_wat and module_wasm_b64")
        return self


class TaskView(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    task_id: str
    state: TaskState
    replicas: int
    returned: int
    outcome: str | None = None
    fuel: int | None = None
    output_hash: str | None = None
    provider: str | None = None
    validators: tuple[str, ...] = ()


class JobView(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    name: str
    requester: str
    state: JobState
    reason: str = ""
    module_hash: str
    tasks_total: int
    tasks: dict[str, int] = Field(description="task count by state")
    replicas_run: int
    audits: int
    fuel_verified: int
    auction_id: str | None = None
    clearing_price_per_gflop: Decimal | None = None
    cost_so_far: Decimal = Decimal(0)
    held: Decimal = Decimal(0)
    devices: int = 0
    cheaters: tuple[str, ...] = ()
    created_at: float
    deadline_at: float
    finished_at: float | None = None
    time_in_state: dict[str, float] = Field(default_factory=dict)


class JobStateChanged(ServiceEvent):
    durable = True

    job_id: str
    previous: str
    state: str
    reason: str = ""


class TaskVerified(ServiceEvent):
    job_id: str
    task_id: str
    provider: str
    validators: tuple[str, ...]
    fuel: int
    replicas: int
    audited: bool


class TaskFailed(ServiceEvent):
    job_id: str
    task_id: str
    reason: str


class CheaterCaught(ServiceEvent):
    durable = True

    job_id: str
    device_id: str
    task_id: str
    reason: str
