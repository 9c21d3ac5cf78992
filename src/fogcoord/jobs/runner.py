"""The compute-job workflow: submit, auction, allocate, run, verify, pay, end.

One explicit, persisted state machine per job (see ``contracts.jobs``). The runner talks to the
services only through their contracts (marketplace for the auction and revenue, harvesting for
device standing and allocation, tokenomics for mining rewards, privacy for Byzantine reports),
pushes tasks to agents through an injected ``send``, and takes their signed results through
:meth:`JobRunner.on_result`. A coordinator restart reloads every unfinished job: replicas that were
out are run again, verified tasks are kept, and the marketplace's idempotent payouts make sure no
task is paid twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Protocol, cast

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.config import JobsConfig
from fogcoord.contracts.compute import SandboxLimits, WorkReceipt, sha256_hex
from fogcoord.contracts.errors import Conflict, FogError, Forbidden, NotFound, ValidationFailed
from fogcoord.contracts.harvesting import (
    ComputeWorkload,
    DeviceResultVerified,
    HarvestingProtocol,
)
from fogcoord.contracts.jobs import (
    CheaterCaught,
    JobState,
    JobStateChanged,
    JobSubmission,
    JobView,
    TaskFailed,
    TaskState,
    TaskVerified,
    TaskView,
)
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.marketplace import (
    AuctionStatus,
    CompletedJob,
    CompletedTask,
    MarketplaceProtocol,
    ResourceRequest,
)
from fogcoord.contracts.privacy import ParticipantData, PrivacyProtocol
from fogcoord.contracts.tokenomics import TokenomicsProtocol, WorkProof
from fogcoord.contracts.units import FUEL_PER_GFLOP, MICRO_PER_TOKEN, to_tokens
from fogcoord.jobs.model import COORDINATOR, Job, Replica, Task
from fogcoord.jobs.quorum import audit_probability, extra_replicas, judge
from fogcoord.jobs.store import SqlJobStore
from fogcoord.lifecycle import Publish, Resolve, ServiceBase, require_service

log = logging.getLogger(__name__)

NAME = "jobs"
Send = Callable[[str, dict[str, Any]], Awaitable[bool]]

NONDETERMINISTIC = ("timeout", "crashed")
"""Outcomes that say the device could not finish, not what the task computes: run it again."""


class Executor(Protocol):
    """What the coordinator needs of the sandbox: check modules, re-execute audits."""

    async def validate(self, module: bytes, entry: str) -> str: ...

    async def run(
        self, module: bytes, data: bytes, limits: SandboxLimits, task_id: str, entry: str
    ) -> tuple[WorkReceipt, bytes]: ...


class JobRunner(ServiceBase):
    service_type = NAME

    def __init__(
        self,
        config: JobsConfig,
        engine: Callable[[], Engine],
        *,
        resolve: Resolve,
        send: Send,
        executor: Executor,
        clock: Clock | None = None,
        publish: Publish | None = None,
        rng: np.random.Generator | None = None,
        tick_seconds: float = 0.02,
        connected: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(
            NAME,
            dependencies=("storage", "marketplace", "harvesting", "tokenomics", "privacy"),
            clock=clock,
            publish=publish,
        )
        self.config = config
        self._engine = engine
        self._resolve = resolve
        self._send = send
        self._connected = connected
        self.executor = executor
        self.rng = rng if rng is not None else np.random.default_rng()
        self.tick_seconds = tick_seconds
        self._store: SqlJobStore | None = None
        self.jobs: dict[str, Job] = {}
        self._replicas: dict[str, Replica] = {}
        self._in_flight: dict[str, int] = {}
        self._streak: dict[str, int] = {}
        self._sent_modules: dict[str, set[str]] = {}
        self._modules: dict[str, bytes] = {}
        self._dirty_tasks: dict[str, Task] = {}
        self._new_replicas: list[Replica] = []
        self._dirty_replicas: dict[str, Replica] = {}
        self._wake = asyncio.Event()
        self._outputs_pending: dict[str, bytes] = {}
        self._flushing = asyncio.Lock()
        self._next_expiry = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def store(self) -> SqlJobStore:
        if self._store is None:
            raise RuntimeError("jobs are not started")
        return self._store

    async def on_start(self) -> None:
        self._store = await asyncio.to_thread(SqlJobStore, self._engine())
        rows = await asyncio.to_thread(self.store.jobs)
        for row in rows:
            if not JobState(row["state"]).terminal:
                await self._restore(row)
        self.spawn(self._main_loop())

    async def on_stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._flush()

    async def check_health(self) -> HealthStatus:
        live = sum(1 for j in self.jobs.values() if not j.state.terminal)
        return HealthStatus.passing(f"{live} jobs in progress, {len(self._replicas)} replicas out")

    async def _svc(self, name: str) -> Any:
        return await require_service(self._resolve, name)

    async def _market(self) -> MarketplaceProtocol:
        return cast(MarketplaceProtocol, await self._svc("marketplace"))

    async def _harvesting(self) -> HarvestingProtocol:
        return cast(HarvestingProtocol, await self._svc("harvesting"))

    async def _tokenomics(self) -> TokenomicsProtocol:
        return cast(TokenomicsProtocol, await self._svc("tokenomics"))

    async def _privacy(self) -> PrivacyProtocol:
        return cast(PrivacyProtocol, await self._svc("privacy"))

    # --- submission ----------------------------------------------------------------------------

    async def submit(self, requester: str, body: JobSubmission) -> JobView:
        cfg = self.config
        if len(body.inputs_b64) > cfg.max_tasks:
            raise ValidationFailed("inputs_b64", f"at most {cfg.max_tasks} tasks per job")
        if body.module_wat is not None:
            module = body.module_wat.encode()
        else:
            module = _b64("module_wasm_b64", body.module_wasm_b64 or "")
        if len(module) > cfg.max_module_bytes:
            raise ValidationFailed("module", f"larger than {cfg.max_module_bytes} bytes")
        inputs = [_b64(f"inputs_b64.{i}", s) for i, s in enumerate(body.inputs_b64)]
        for i, data in enumerate(inputs):
            if len(data) > cfg.max_input_bytes:
                raise ValidationFailed(f"inputs_b64.{i}", f"larger than {cfg.max_input_bytes}")
        # compiled (and its imports checked) once, here; agents get the same bytes
        module_hash = await self.executor.validate(module, body.entry)
        tok = await self._tokenomics()
        wallet = body.wallet or requester
        owner = tok.wallet_owner(wallet)
        if owner is None:
            raise NotFound("wallet", wallet)
        if owner != requester:
            raise Forbidden(f"wallet {wallet!r} belongs to another principal", wallet=wallet)
        now = self.clock.time()
        job_id = "job-" + secrets.token_hex(10)
        replication = max(body.replication, self.config.min_quorum)
        slots = body.slots or min(len(inputs) * replication, 32)
        job = Job(
            job_id=job_id,
            name=body.name,
            requester=requester,
            wallet=wallet,
            module_hash=module_hash,
            entry=body.entry,
            fuel_limit=body.fuel_limit,
            memory_bytes=body.memory_mb << 20,
            replication=replication,
            max_price=body.max_price_per_gflop,
            slots=slots,
            created_at=now,
            deadline_at=now + body.deadline_seconds,
            entered_at=now,
        )
        job.inputs = inputs
        for i, data in enumerate(inputs):
            job.tasks.append(Task(f"{job_id}:{i}", job, i, sha256_hex(data)))
        blobs = {
            module_hash: module,
            **{t.input_hash: d for t, d in zip(job.tasks, inputs, strict=True)},
        }
        await asyncio.to_thread(self.store.put_blobs, blobs)
        await asyncio.to_thread(
            self.store.create_job,
            self._job_row(job),
            [
                {
                    "task_id": t.task_id,
                    "job_id": job_id,
                    "idx": t.index,
                    "input_hash": t.input_hash,
                    "state": t.state.value,
                    "validators": "[]",
                    "paid": False,
                    "reason": "",
                }
                for t in job.tasks
            ],
        )
        self._modules[module_hash] = module
        self.jobs[job_id] = job
        self.emit(
            JobStateChanged(source=NAME, job_id=job_id, previous="", state=JobState.SUBMITTED)
        )
        try:
            await self._open_auction(job)
        except FogError as exc:
            await self._transition(job, JobState.FAILED, f"auction refused: {exc.message}")
            raise
        return self.view(job_id)

    async def _open_auction(self, job: Job) -> None:
        market = await self._market()
        gflop = len(job.tasks) * job.fuel_limit / FUEL_PER_GFLOP
        minutes = min(self.config.auction_minutes, max(job.deadline_at - self.clock.time(), 1) / 60)
        auction_id = await market.create_auction(
            ResourceRequest(
                requester=job.requester,
                slots=job.slots,
                gflop=gflop,
                max_price_per_gflop=job.max_price,
                duration_minutes=minutes,
                allow_partial=True,
                job_id=job.job_id,
                wallet=job.wallet,
            )
        )
        job.auction_id = auction_id
        view = await market.get_auction(auction_id)
        job.hold_micro = int(view.held * MICRO_PER_TOKEN)
        await self._transition(job, JobState.AUCTIONED)

    # --- the main loop -------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def _main_loop(self) -> None:
        last_flush = self.clock.monotonic()
        while True:
            try:
                async with self.clock.timeout(self.tick_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.step()
                if self.clock.monotonic() - last_flush >= 0.1:
                    await self._flush()
                    last_flush = self.clock.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next tick tries again; the failure must be visible
                log.exception("job runner step failed")

    async def step(self) -> None:
        """One round: advance auctions, expire replicas, dispatch, pay, finish."""
        now = self.clock.time()
        expiring = now >= self._next_expiry
        for job in list(self.jobs.values()):
            if job.state.terminal or job.settling:
                continue
            if job.state is JobState.VERIFIED:  # the final payment failed before: try again
                await self._finish(job)
                continue
            if job.state is JobState.AUCTIONED:
                await self._check_auction(job)
            if job.state is JobState.ALLOCATED:
                await self._transition(job, JobState.RUNNING)
            if job.state is JobState.RUNNING:
                if now >= job.deadline_at:
                    for task in job.tasks:
                        if not task.done:
                            self._fail_task(task, "the job's deadline passed")
                if expiring:
                    self._expire(job, now)
                self._dispatch(job)
                await self._maybe_pay(job, now)
                if all(t.done for t in job.tasks) and not job.settling:
                    await self._finish(job)
        if expiring:
            self._next_expiry = now + min(1.0, self.config.task_timeout_seconds / 4)

    async def _check_auction(self, job: Job) -> None:
        assert job.auction_id is not None
        view = await (await self._market()).get_auction(job.auction_id)
        if view.status is AuctionStatus.OPEN:
            return
        result = view.result
        if view.status is AuctionStatus.FAILED or result is None or not result.winners:
            reason = result.reason if result is not None else "no result"
            await self._transition(job, JobState.FAILED, f"the auction failed: {reason}")
            return
        price = result.clearing_price_per_gflop
        assert price is not None
        job.price_micro = int(price * MICRO_PER_TOKEN)
        job.pool = list(result.winners)
        await self._learn_devices(job)
        harvesting = await self._harvesting()
        plan = await harvesting.allocate_resources(
            [d for d in job.pool if d in job.owners],
            ComputeWorkload(
                workload_id=job.job_id,
                task_ids=tuple(t.task_id for t in job.tasks),
                replication=min(job.replication, 16),
                gflop_per_task=job.fuel_limit / FUEL_PER_GFLOP,
            ),
        )
        job.plan = dict(plan.assignments)
        for task in job.tasks:
            self._queue(task)
        await self._transition(job, JobState.ALLOCATED)

    async def _learn_devices(self, job: Job) -> None:
        standing = await (await self._harvesting()).device_standing(job.pool)
        for device, st in standing.items():
            job.owners[device] = st.owner
            job.keys[device] = st.public_key

    # --- dispatch ------------------------------------------------------------------------------

    def _queue(self, task: Task) -> None:
        if not task.queued and not task.done:
            task.queued = True
            task.job.ready.append(task)

    def _dispatch(self, job: Job) -> None:
        limit = self.config.max_in_flight_per_device
        ready = job.ready
        connected = self._connected
        free = sum(
            max(0, limit - self._in_flight.get(d, 0))
            for d in job.pool
            if d not in job.cheaters and (connected is None or connected(d))
        )
        for _ in range(len(ready)):
            task = ready[0]
            if task.done or job.state is not JobState.RUNNING:
                ready.popleft()
                task.queued = False
                continue
            if free <= 0:
                # nothing can be assigned now; planning now would plan every waiting task as if
                # no trusted device existed (the first device is chosen when a slot frees up)
                break
            if task.needed == 0:
                self._plan_task(task)
            missing = task.needed - task.active()
            if missing <= 0:
                ready.popleft()
                task.queued = False
                continue
            device = self._pick(job, task, limit)
            if device is None:
                if task.audited and self.config.audit_on_coordinator and not self._others(task):
                    self._audit_here(task)
                    continue
                ready.rotate(-1)
                continue
            self._assign(task, device)
            free -= 1

    def _others(self, task: Task) -> bool:
        job = task.job
        used = {r.device for r in task.replicas if r.state != "lost"}
        return any(d not in used and d not in job.cheaters for d in job.pool)

    def _plan_task(self, task: Task) -> None:
        job = task.job
        first = self._pick(job, task, self.config.max_in_flight_per_device)
        streak = self._streak.get(first, 0) if first is not None else 0
        if first is not None and streak >= self.config.trusted_streak:
            task.solo, task.needed, task.quorum = True, 1, 1
        else:
            task.needed = task.quorum = max(job.replication, self.config.min_quorum)

    def _pick(self, job: Job, task: Task, limit: int) -> str | None:
        # a device whose replica was lost (timed out, or out during a restart) may try again
        used = {r.device for r in task.replicas if r.state != "lost"}
        owners = {job.owners.get(r.device) for r in task.replicas if r.state != "lost"}
        preferred = job.plan.get(task.task_id, ())
        best: str | None = None
        best_load = limit
        connected = self._connected
        for device in (*preferred, *job.pool):
            if device in used or device in job.cheaters:
                continue
            if connected is not None and not connected(device):
                continue  # pushing to a closed channel would only lose the replica again
            load = self._in_flight.get(device, 0)
            if load >= best_load or job.owners.get(device) in owners:
                continue
            best, best_load = device, load
            if load == 0:
                break
        return best

    def _assign(self, task: Task, device: str) -> None:
        job = task.job
        now = self.clock.time()
        replica = Replica(
            replica_id=f"{task.task_id}.{len(task.replicas)}",
            task=task,
            device=device,
            audit=task.audited,
            assigned_at=now,
            deadline=now + self.config.task_timeout_seconds,
        )
        task.replicas.append(replica)
        task.state = TaskState.RUNNING
        self._replicas[replica.replica_id] = replica
        self._in_flight[device] = self._in_flight.get(device, 0) + 1
        self._new_replicas.append(replica)
        self._dirty_tasks[task.task_id] = task
        job.replicas_run += 1
        self.spawn(self._push(replica))

    def _message(self, replica: Replica, with_module: bool) -> dict[str, Any]:
        task, job = replica.task, replica.task.job
        msg: dict[str, Any] = {
            "type": "task",
            "replica_id": replica.replica_id,
            "task_id": task.task_id,
            "job_id": job.job_id,
            "module_hash": job.module_hash,
            "input_hash": task.input_hash,
            "entry": job.entry,
            "input_b64": base64.b64encode(job.inputs[task.index]).decode(),
            "limits": SandboxLimits(
                fuel=job.fuel_limit, memory_bytes=job.memory_bytes
            ).model_dump(),
            "timeout_seconds": self.config.task_timeout_seconds,
        }
        if with_module:
            msg["module_b64"] = base64.b64encode(self._modules[job.module_hash]).decode()
        return msg

    async def _push(self, replica: Replica, force_module: bool = False) -> None:
        sent = self._sent_modules.setdefault(replica.device, set())
        module_hash = replica.task.job.module_hash
        with_module = force_module or module_hash not in sent
        try:
            ok = await self._send(replica.device, self._message(replica, with_module))
        except Exception as exc:  # a broken socket is a lost replica, not a runner failure
            log.info("could not push %s to %s: %s", replica.replica_id, replica.device, exc)
            ok = False
        if ok:
            sent.add(module_hash)
        elif replica.state == "assigned":
            self._lose(replica)

    def device_gone(self, device_id: str) -> int:
        """The device's channel closed: what it was running will not come back; reassign it."""
        lost = [r for r in self._replicas.values() if r.device == device_id]
        for r in lost:
            if r.state == "assigned":
                self._lose(r)
        self._sent_modules.pop(device_id, None)
        return len(lost)

    def _lose(self, replica: Replica) -> None:
        replica.state = "lost"
        self._release(replica)
        self._dirty_replicas[replica.replica_id] = replica
        self._queue(replica.task)
        self.wake()

    def _release(self, replica: Replica) -> None:
        self._replicas.pop(replica.replica_id, None)
        left = self._in_flight.get(replica.device, 0) - 1
        if left > 0:
            self._in_flight[replica.device] = left
        else:
            self._in_flight.pop(replica.device, None)

    def _expire(self, job: Job, now: float) -> None:
        for task in job.tasks:
            if task.state is not TaskState.RUNNING:
                continue
            for r in task.replicas:
                if r.state == "assigned" and r.deadline <= now and r.device != COORDINATOR:
                    self._lose(r)

    def _audit_here(self, task: Task) -> None:
        """Re-execute on the coordinator: no other device of the job is free to audit."""
        now = self.clock.time()
        replica = Replica(
            replica_id=f"{task.task_id}.{len(task.replicas)}",
            task=task,
            device=COORDINATOR,
            audit=True,
            assigned_at=now,
            deadline=now + self.config.task_timeout_seconds,
        )
        task.replicas.append(replica)
        self._new_replicas.append(replica)
        task.job.replicas_run += 1
        self.spawn(self._run_here(replica))

    async def _run_here(self, replica: Replica) -> None:
        task, job = replica.task, replica.task.job
        limits = SandboxLimits(fuel=job.fuel_limit, memory_bytes=job.memory_bytes)
        try:
            receipt, output = await self.executor.run(
                self._modules[job.module_hash],
                job.inputs[task.index],
                limits,
                task.task_id,
                job.entry,
            )
        except Exception:
            log.exception("audit of %s on the coordinator failed", task.task_id)
            replica.state = "lost"
            self._dirty_replicas[replica.replica_id] = replica
            return
        self._record(replica, receipt, output)
        await self._evaluate(task)

    # --- results -------------------------------------------------------------------------------

    async def on_result(self, device_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """A device's answer to a pushed task; the reply frame to send back."""
        replica_id = str(message.get("replica_id", ""))
        replica = self._replicas.get(replica_id)
        if replica is None or replica.device != device_id:
            return {"type": "ack", "replica_id": replica_id, "status": "unknown"}
        error = message.get("error")
        if error == "module_missing":
            self._sent_modules.get(device_id, set()).discard(replica.task.job.module_hash)
            self.spawn(self._push(replica, force_module=True))
            return {"type": "ack", "replica_id": replica_id, "status": "resending"}
        task = replica.task
        if error is not None or task.done or replica.state != "assigned":
            if replica.state == "assigned":
                self._lose(replica)
            return {"type": "ack", "replica_id": replica_id, "status": "ignored"}
        try:
            receipt = WorkReceipt.model_validate(message.get("receipt"))
            output = base64.b64decode(str(message.get("output_b64", "")), validate=True)
            problem = self._check_receipt(replica, receipt, output, str(message.get("signature")))
        except (ValidationError, ValueError) as exc:
            problem = f"malformed result: {exc}"
            receipt, output = None, b""
        if problem is not None or receipt is None:
            await self._reject(replica, problem or "malformed result")
            return {"type": "ack", "replica_id": replica_id, "status": "rejected"}
        if receipt.outcome.value in NONDETERMINISTIC:
            self._lose(replica)
            return {"type": "ack", "replica_id": replica_id, "status": "retrying"}
        self._record(replica, receipt, output)
        await self._evaluate(task)
        return {"type": "ack", "replica_id": replica_id, "status": "accepted"}

    def _check_receipt(
        self, replica: Replica, receipt: WorkReceipt, output: bytes, signature: str
    ) -> str | None:
        task, job = replica.task, replica.task.job
        if receipt.task_id != task.task_id:
            return "the receipt names another task"
        if receipt.module_hash != job.module_hash or receipt.input_hash != task.input_hash:
            return "the receipt names another module or input"
        if sha256_hex(output) != receipt.output_hash:
            return "the output does not match the receipt's output hash"
        key = job.keys.get(replica.device, "")
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key)).verify(
                bytes.fromhex(signature), receipt.canonical_bytes()
            )
        except (InvalidSignature, ValueError):
            return "the receipt's signature does not verify with the device's key"
        return None

    def _record(self, replica: Replica, receipt: WorkReceipt, output: bytes) -> None:
        replica.state = "returned"
        replica.outcome = receipt.outcome.value
        replica.output_hash = receipt.output_hash
        replica.fuel = receipt.fuel_used
        replica.output = output
        if replica.device != COORDINATOR:
            self._release(replica)
        else:
            self._replicas.pop(replica.replica_id, None)
        self._dirty_replicas[replica.replica_id] = replica

    async def _reject(self, replica: Replica, reason: str) -> None:
        replica.state = "rejected"
        self._release(replica)
        self._dirty_replicas[replica.replica_id] = replica
        await self._caught(replica.task, replica.device, reason)
        self._queue(replica.task)

    async def _evaluate(self, task: Task) -> None:
        if task.done:
            return
        returned = task.returned()
        verdict = judge([r.key() for r in returned], task.quorum)
        if verdict.accepted is None:
            if task.in_flight():
                return
            if len(task.replicas) >= self.config.max_replicas:
                self._fail_task(task, f"no {task.quorum} replicas agreed")
                return
            task.needed = task.active() + extra_replicas(len(returned), verdict.best, task.quorum)
            task.needed = min(task.needed, self.config.max_replicas)
            self._queue(task)
            return
        if task.solo and not task.audited and await self._wants_audit(returned[0].device):
            task.audited = True
            task.job.audits += 1
            task.needed, task.quorum = 2, 2
            self._queue(task)
            return
        agreeing = [returned[i] for i in verdict.agreeing]
        devices = [r.device for r in agreeing if r.device != COORDINATOR]
        dissent = [r for r in returned if r not in agreeing]
        if not devices:  # only the coordinator's own run agrees: the lone device lied
            self._fail_task(task, "no device result agreed with the audit")
            for r in dissent:
                await self._caught(task, r.device, "disagrees with the coordinator's re-execution")
            return
        first = agreeing[0] if agreeing[0].device != COORDINATOR else agreeing[-1]
        task.state = TaskState.VERIFIED
        task.outcome, task.output_hash, task.fuel = verdict.accepted
        task.provider = first.device
        task.validators = tuple(d for d in devices if d != first.device)
        task.pay_key = task.pay_key or task.task_id
        task.queued = False
        self._dirty_tasks[task.task_id] = task
        job = task.job
        job.unpaid.append(task)
        if first.output is not None and task.output_hash is not None:
            self._outputs_pending[task.output_hash] = first.output
        for r in task.replicas:
            if r.state == "assigned":
                r.state = "lost"
                self._release(r)
                self._dirty_replicas[r.replica_id] = r
            r.output = None
        for d in devices:
            self._streak[d] = self._streak.get(d, 0) + 1
            self.emit(
                DeviceResultVerified(source=NAME, device_id=d, task_id=task.task_id, valid=True)
            )
        self.emit(
            TaskVerified(
                source=NAME,
                job_id=job.job_id,
                task_id=task.task_id,
                provider=task.provider,
                validators=task.validators,
                fuel=task.fuel,
                replicas=len(returned),
                audited=task.audited,
            )
        )
        if dissent:
            flags = await (await self._privacy()).explain_byzantine(
                [
                    ParticipantData(
                        participant_id=r.device,
                        task_id=task.task_id,
                        output_hash=f"{r.outcome}:{r.output_hash}",
                        fuel_used=r.fuel,
                    )
                    for r in returned
                ]
            )
            for f in flags:
                if f.participant_id != COORDINATOR:
                    await self._caught(task, f.participant_id, f.reason)

    async def _wants_audit(self, device: str) -> bool:
        health = await (await self._harvesting()).monitor_device_health(device)
        p = audit_probability(health.trust, self.config.audit_min_probability)
        return bool(self.rng.random() < p)

    async def _caught(self, task: Task, device: str, reason: str) -> None:
        job = task.job
        self._streak[device] = 0
        self.emit(
            DeviceResultVerified(source=NAME, device_id=device, task_id=task.task_id, valid=False)
        )
        if device in job.cheaters or device == COORDINATOR:
            return
        job.cheaters.add(device)
        self.emit(
            CheaterCaught(
                source=NAME,
                job_id=job.job_id,
                device_id=device,
                task_id=task.task_id,
                reason=reason,
            )
        )
        await asyncio.to_thread(
            self.store.update_job, job.job_id, cheaters=json.dumps(sorted(job.cheaters))
        )
        # results it delivered alone are no longer believed: run those tasks again
        for t in job.tasks:
            if t.state is TaskState.VERIFIED and t.provider == device and not t.validators:
                for r in t.replicas:
                    if r.device == device:
                        r.state = "rejected"
                        self._dirty_replicas[r.replica_id] = r
                t.state = TaskState.RUNNING
                t.solo, t.audited = False, False
                t.needed = t.quorum = max(job.replication, self.config.min_quorum)
                t.provider, t.validators, t.outcome, t.output_hash, t.fuel = (
                    None,
                    (),
                    None,
                    None,
                    None,
                )
                t.pay_key = f"{t.task_id}#{len(t.replicas)}"
                if t in job.unpaid:
                    job.unpaid.remove(t)
                t.paid = False
                self._dirty_tasks[t.task_id] = t
                self._queue(t)

    def _fail_task(self, task: Task, reason: str) -> None:
        task.state = TaskState.FAILED
        task.reason = reason
        task.queued = False
        for r in task.replicas:
            if r.state == "assigned":
                r.state = "lost"
                if r.device != COORDINATOR:
                    self._release(r)
                self._dirty_replicas[r.replica_id] = r
        self._dirty_tasks[task.task_id] = task
        self.emit(
            TaskFailed(source=NAME, job_id=task.job.job_id, task_id=task.task_id, reason=reason)
        )

    # --- payment -------------------------------------------------------------------------------

    async def _maybe_pay(self, job: Job, now: float) -> None:
        if job.unpaid:
            oldest = min(t.replicas[-1].assigned_at for t in job.unpaid)
            due = now - oldest >= self.config.settle_interval_seconds
            if len(job.unpaid) >= self.config.settle_batch_size or due:
                await self._pay(job, final=False)
        held = self.config.payout_holding_seconds
        if job.pending_since is not None and now - job.pending_since >= held:
            await (await self._market()).distribute_revenue(
                CompletedJob(
                    job_id=job.job_id,
                    auction_id=job.auction_id or "",
                    post_pending=True,
                    void_devices=tuple(sorted(job.cheaters)),
                )
            )
            job.pending_since = None

    async def _pay(self, job: Job, *, final: bool) -> None:
        batch = [t for t in job.unpaid if t.state is TaskState.VERIFIED and t.pay_key]
        await self._flush()
        done = await (await self._market()).distribute_revenue(
            CompletedJob(
                job_id=job.job_id,
                auction_id=job.auction_id or "",
                tasks=tuple(
                    CompletedTask(
                        task_id=t.pay_key or t.task_id,
                        provider=t.provider or "",
                        validators=t.validators,
                        fuel=t.fuel,
                    )
                    for t in batch
                ),
                final=final,
                hold_payouts=True,
                void_devices=tuple(sorted(job.cheaters)),
            )
        )
        for t in batch:
            t.paid = True
            self._dirty_tasks[t.task_id] = t
            if job.price_micro is not None and t.fuel is not None:
                job.paid_micro += job.price_micro * t.fuel // FUEL_PER_GFLOP
        job.unpaid = [t for t in job.unpaid if t not in batch]
        if batch and job.pending_since is None and not final:
            job.pending_since = self.clock.time()
        log.debug("job %s paid %d tasks: %s", job.job_id, len(batch), done)

    async def _finish(self, job: Job) -> None:
        job.settling = True
        try:
            verified = [t for t in job.tasks if t.state is TaskState.VERIFIED]
            if verified and job.state is not JobState.VERIFIED:
                await self._transition(job, JobState.VERIFIED)
            await self._pay(job, final=True)
            await self._mine(job, verified)
            if verified:
                await self._transition(job, JobState.SETTLED)
            else:
                await self._transition(job, JobState.FAILED, "no task could be verified")
        finally:
            job.settling = False

    async def _mine(self, job: Job, verified: list[Task]) -> None:
        """Mining rewards for verified work, minted to the owners of honest providers."""
        tok = await self._tokenomics()
        harvesting = await self._harvesting()
        per_wallet: dict[str, Decimal] = {}
        reliability: dict[str, float] = {}
        for t in verified:
            device = t.provider
            if device is None or device in job.cheaters or t.fuel is None:
                continue
            if device not in reliability:
                try:
                    reliability[device] = (
                        await harvesting.monitor_device_health(device)
                    ).reliability
                except NotFound:
                    reliability[device] = 0.0
            reward = await tok.calculate_mining_rewards(
                WorkProof(
                    device_id=device,
                    task_id=t.task_id,
                    verified_fuel=t.fuel,
                    gflop=t.fuel / FUEL_PER_GFLOP,
                    reliability=reliability[device],
                )
            )
            owner = job.owners.get(device)
            if owner and reward > 0 and tok.wallet_owner(owner) is None:
                await tok.initialize_wallet(owner)
            if owner and reward > 0:
                per_wallet[owner] = per_wallet.get(owner, Decimal(0)) + Decimal(repr(reward))
        if per_wallet:
            await tok.distribute_rewards(
                {w: float(v) for w, v in per_wallet.items()}, batch_id=f"mining-{job.job_id}"
            )

    # --- cancel, views, persistence ------------------------------------------------------------

    async def cancel(self, job_id: str, requester: str) -> JobView:
        job = self._job(job_id)
        if job.requester != requester:
            raise Forbidden("only the requester may cancel its job", job_id=job_id)
        if job.state.terminal:
            raise Conflict(f"job {job_id} is already {job.state.value}")
        if job.state is JobState.AUCTIONED and job.auction_id is not None:
            view = await (await self._market()).get_auction(job.auction_id)
            if view.status is AuctionStatus.OPEN:
                await cast(Any, await self._market()).cancel_auction(job.auction_id, job.requester)
                await self._transition(job, JobState.CANCELLED, "cancelled by the requester")
                return self.view(job_id)
            await self._check_auction(job)
        if job.settling:
            raise Conflict(f"job {job_id} is being settled")
        job.settling = True  # the main loop leaves the job alone from here on
        try:
            for task in job.tasks:
                if not task.done:
                    self._fail_task(task, "cancelled")
            if job.price_micro is not None:
                await self._pay(job, final=True)
            await self._transition(job, JobState.CANCELLED, "cancelled by the requester")
        finally:
            job.settling = False
        return self.view(job_id)

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound("job", job_id)
        return job

    async def _transition(self, job: Job, state: JobState, reason: str = "") -> None:
        previous = job.state
        if previous.terminal:
            raise Conflict(f"job {job.job_id} already ended {previous.value}")
        now = self.clock.time()
        job.state_times[previous.value] = job.state_times.get(previous.value, 0.0) + (
            now - job.entered_at
        )
        job.state, job.entered_at = state, now
        if reason:
            job.reason = reason
        if state.terminal:
            job.finished_at = now
            job.ready.clear()
        await self._flush()
        await asyncio.to_thread(
            self.store.update_job, job.job_id, **self._job_row(job, update=True)
        )
        self.emit(
            JobStateChanged(
                source=NAME, job_id=job.job_id, previous=previous.value, state=state, reason=reason
            )
        )

    def _job_row(self, job: Job, *, update: bool = False) -> dict[str, Any]:
        row: dict[str, Any] = {
            "state": job.state.value,
            "reason": job.reason,
            "auction_id": job.auction_id,
            "pool": json.dumps(job.pool),
            "cheaters": json.dumps(sorted(job.cheaters)),
            "finished_at": job.finished_at,
            "state_times": json.dumps(job.state_times),
        }
        if update:
            return row
        return {
            **row,
            "job_id": job.job_id,
            "name": job.name,
            "requester": job.requester,
            "wallet": job.wallet,
            "module_hash": job.module_hash,
            "entry": job.entry,
            "fuel_limit": job.fuel_limit,
            "memory_bytes": job.memory_bytes,
            "replication": job.replication,
            "max_price": str(job.max_price),
            "slots": job.slots,
            "created_at": job.created_at,
            "deadline_at": job.deadline_at,
            "tasks_total": len(job.tasks),
        }

    async def _flush(self) -> None:
        # one flush at a time: a later snapshot must never commit before an earlier one
        async with self._flushing:
            await self._flush_once()

    async def _flush_once(self) -> None:
        tasks = [t.row() for t in self._dirty_tasks.values()]
        new = [
            {
                "replica_id": r.replica_id,
                "task_id": r.task.task_id,
                "job_id": r.task.job.job_id,
                "device": r.device,
                "state": r.state,
                "audit": r.audit,
                "outcome": r.outcome,
                "fuel": r.fuel,
                "output_hash": r.output_hash,
                "assigned_at": r.assigned_at,
            }
            for r in self._new_replicas
        ]
        fresh = {r.replica_id for r in self._new_replicas}
        replicas = [r.row() for r in self._dirty_replicas.values() if r.replica_id not in fresh]
        outputs = self._outputs_pending
        self._dirty_tasks, self._new_replicas, self._dirty_replicas = {}, [], {}
        self._outputs_pending = {}
        if outputs:
            await asyncio.to_thread(self.store.put_blobs, outputs)
        await asyncio.to_thread(self.store.flush, tasks, new, replicas)

    def view(self, job_id: str) -> JobView:
        job = self._job(job_id)
        counts: dict[str, int] = {}
        fuel = 0
        for t in job.tasks:
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
            if t.state is TaskState.VERIFIED and t.fuel is not None:
                fuel += t.fuel
        times = dict(job.state_times)
        if not job.state.terminal:
            times[job.state.value] = times.get(job.state.value, 0.0) + (
                self.clock.time() - job.entered_at
            )
        return JobView(
            job_id=job.job_id,
            name=job.name,
            requester=job.requester,
            state=job.state,
            reason=job.reason,
            module_hash=job.module_hash,
            tasks_total=len(job.tasks),
            tasks=counts,
            replicas_run=job.replicas_run,
            audits=job.audits,
            fuel_verified=fuel,
            auction_id=job.auction_id,
            clearing_price_per_gflop=to_tokens(job.price_micro)
            if job.price_micro is not None
            else None,
            cost_so_far=to_tokens(job.paid_micro),
            held=to_tokens(job.hold_micro),
            devices=len(job.pool),
            cheaters=tuple(sorted(job.cheaters)),
            created_at=job.created_at,
            deadline_at=job.deadline_at,
            finished_at=job.finished_at,
            time_in_state=times,
        )

    def task_views(self, job_id: str, offset: int = 0, limit: int = 1000) -> list[TaskView]:
        job = self._job(job_id)
        return [
            TaskView(
                index=t.index,
                task_id=t.task_id,
                state=t.state,
                replicas=len(t.replicas),
                returned=sum(1 for r in t.replicas if r.state == "returned"),
                outcome=t.outcome,
                fuel=t.fuel,
                output_hash=t.output_hash,
                provider=t.provider,
                validators=t.validators,
            )
            for t in job.tasks[offset : offset + limit]
        ]

    def list_jobs(self, requester: str | None = None) -> list[JobView]:
        return [
            self.view(j.job_id)
            for j in sorted(self.jobs.values(), key=lambda j: j.created_at, reverse=True)
            if requester is None or j.requester == requester
        ]

    async def output(self, job_id: str, index: int) -> bytes:
        job = self._job(job_id)
        if not 0 <= index < len(job.tasks):
            raise NotFound("task", f"{job_id}:{index}")
        task = job.tasks[index]
        if task.state is not TaskState.VERIFIED or task.output_hash is None:
            raise Conflict(f"task {index} of {job_id} is {task.state.value}, not verified")
        await self._flush()
        data = await asyncio.to_thread(self.store.blob, task.output_hash)
        if data is None:
            raise NotFound("output", task.output_hash)
        return data

    async def outputs(self, job_id: str) -> dict[int, bytes]:
        """Every verified output of the job by task index, read in one go."""
        job = self._job(job_id)
        await self._flush()
        wanted = {
            t.index: t.output_hash
            for t in job.tasks
            if t.state is TaskState.VERIFIED and t.output_hash is not None
        }
        found = await asyncio.to_thread(self.store.blobs, sorted(set(wanted.values())))
        return {i: found[h] for i, h in wanted.items() if h in found}

    async def _restore(self, row: dict[str, Any]) -> None:
        job = Job(
            job_id=row["job_id"],
            name=row["name"],
            requester=row["requester"],
            wallet=row["wallet"],
            module_hash=row["module_hash"],
            entry=row["entry"],
            fuel_limit=row["fuel_limit"],
            memory_bytes=row["memory_bytes"],
            replication=row["replication"],
            max_price=Decimal(row["max_price"]),
            slots=row["slots"],
            created_at=row["created_at"],
            deadline_at=row["deadline_at"],
            state=JobState(row["state"]),
            reason=row["reason"] or "",
            auction_id=row["auction_id"],
            pool=json.loads(row["pool"] or "[]"),
            cheaters=set(json.loads(row["cheaters"] or "[]")),
            state_times=json.loads(row["state_times"] or "{}"),
            entered_at=self.clock.time(),
        )
        module = await asyncio.to_thread(self.store.blob, job.module_hash)
        if module is None:
            log.error("job %s lost its module; failing it", job.job_id)
            return
        self._modules[job.module_hash] = module
        task_rows = await asyncio.to_thread(self.store.tasks, job.job_id)
        replica_rows = await asyncio.to_thread(self.store.replicas, job.job_id)
        for tr in task_rows:
            data = await asyncio.to_thread(self.store.blob, tr["input_hash"])
            job.inputs.append(data or b"")
            task = Task(tr["task_id"], job, tr["idx"], tr["input_hash"])
            task.state = TaskState(tr["state"])
            task.outcome, task.fuel, task.output_hash = tr["outcome"], tr["fuel"], tr["output_hash"]
            task.provider = tr["provider"]
            task.validators = tuple(json.loads(tr["validators"] or "[]"))
            task.pay_key, task.paid, task.reason = tr["pay_key"], tr["paid"], tr["reason"] or ""
            job.tasks.append(task)
        by_task = {t.task_id: t for t in job.tasks}
        for rr in sorted(replica_rows, key=lambda r: r["assigned_at"]):
            task = by_task[rr["task_id"]]
            r = Replica(
                replica_id=rr["replica_id"],
                task=task,
                device=rr["device"],
                audit=rr["audit"],
                assigned_at=rr["assigned_at"],
                deadline=rr["assigned_at"],
                state=rr["state"],
                outcome=rr["outcome"],
                output_hash=rr["output_hash"],
                fuel=rr["fuel"],
            )
            unsettled = task.state is not TaskState.VERIFIED and r.state in ("assigned", "returned")
            if unsettled:
                # out when the coordinator stopped, or back but not yet judged (outputs are kept
                # only once verified): run it again
                r.state = "lost"
                self._dirty_replicas[r.replica_id] = r
            task.replicas.append(r)
            job.replicas_run += 1
        job.audits = sum(1 for t in job.tasks if any(r.audit for r in t.replicas))
        self.jobs[job.job_id] = job
        if job.auction_id is not None and job.state not in (JobState.SUBMITTED, JobState.AUCTIONED):
            view = await (await self._market()).get_auction(job.auction_id)
            if view.result is not None and view.result.clearing_price_per_gflop is not None:
                job.price_micro = int(view.result.clearing_price_per_gflop * MICRO_PER_TOKEN)
            job.hold_micro = int(view.held * MICRO_PER_TOKEN)
            await self._learn_devices(job)
        for task in job.tasks:
            if task.state is TaskState.VERIFIED:
                if not task.paid:
                    job.unpaid.append(task)
                if task.fuel is not None and task.paid and job.price_micro is not None:
                    job.paid_micro += job.price_micro * task.fuel // FUEL_PER_GFLOP
            elif task.state is not TaskState.FAILED:
                task.needed = 0
                self._queue(task)
        if job.state is JobState.SUBMITTED:
            await self._transition(
                job, JobState.FAILED, "the coordinator stopped before the auction"
            )


def _b64(field: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ValidationFailed(field, "not valid base64") from None
