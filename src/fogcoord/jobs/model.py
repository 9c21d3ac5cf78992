"""The in-memory shape of a running job: tasks, their replicas, and the job's bookkeeping."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from fogcoord.contracts.jobs import JobState, TaskState

COORDINATOR = "coordinator"
"""The replica 'device' of an audit the coordinator re-executes itself (never paid)."""


@dataclass(slots=True, eq=False)
class Replica:
    replica_id: str
    task: Task
    device: str
    audit: bool
    assigned_at: float
    deadline: float
    state: str = "assigned"
    """assigned | returned | lost | rejected"""
    outcome: str | None = None
    output_hash: str | None = None
    fuel: int | None = None
    output: bytes | None = None

    def key(self) -> tuple[str, str, int]:
        assert self.outcome is not None
        assert self.output_hash is not None
        return (self.outcome, self.output_hash, self.fuel or 0)

    def row(self) -> dict[str, object]:
        return {
            "replica_id": self.replica_id,
            "state": self.state,
            "outcome": self.outcome,
            "fuel": self.fuel,
            "output_hash": self.output_hash,
        }


@dataclass(slots=True, eq=False)
class Task:
    task_id: str
    job: Job
    index: int
    input_hash: str
    state: TaskState = TaskState.PENDING
    replicas: list[Replica] = field(default_factory=list)
    needed: int = 0
    quorum: int = 0
    solo: bool = False
    audited: bool = False
    outcome: str | None = None
    fuel: int | None = None
    output_hash: str | None = None
    provider: str | None = None
    validators: tuple[str, ...] = ()
    pay_key: str | None = None
    paid: bool = False
    reason: str = ""
    queued: bool = False

    @property
    def done(self) -> bool:
        return self.state in (TaskState.VERIFIED, TaskState.FAILED)

    def active(self) -> int:
        return sum(1 for r in self.replicas if r.state in ("assigned", "returned"))

    def in_flight(self) -> int:
        return sum(1 for r in self.replicas if r.state == "assigned")

    def returned(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "returned"]

    def row(self) -> dict[str, object]:
        return {
            "task_id": self.task_id,
            "state": self.state.value,
            "outcome": self.outcome,
            "fuel": self.fuel,
            "output_hash": self.output_hash,
            "provider": self.provider,
            "validators": json.dumps(list(self.validators)),
            "pay_key": self.pay_key,
            "paid": self.paid,
            "reason": self.reason,
        }


@dataclass(slots=True, eq=False)
class Job:
    job_id: str
    name: str
    requester: str
    wallet: str
    module_hash: str
    entry: str
    fuel_limit: int
    memory_bytes: int
    replication: int
    max_price: Decimal
    slots: int
    created_at: float
    deadline_at: float
    state: JobState = JobState.SUBMITTED
    reason: str = ""
    finished_at: float | None = None
    auction_id: str | None = None
    price_micro: int | None = None
    pool: list[str] = field(default_factory=list)
    owners: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    plan: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cheaters: set[str] = field(default_factory=set)
    tasks: list[Task] = field(default_factory=list)
    inputs: list[bytes] = field(default_factory=list)
    ready: deque[Task] = field(default_factory=deque)
    unpaid: list[Task] = field(default_factory=list)
    pending_since: float | None = None
    state_times: dict[str, float] = field(default_factory=dict)
    entered_at: float = 0.0
    paid_micro: int = 0
    hold_micro: int = 0
    replicas_run: int = 0
    audits: int = 0
    settling: bool = False
