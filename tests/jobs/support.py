"""Scaffolding of the job tests: a real coordinator on SQLite and a fleet of in-process devices.

Each :class:`FakeDevice` is what the coordinator's ``send`` reaches: it is registered as an open
agent channel (``coord.channels``), and answers a pushed task the way an agent does, with the real
:class:`~fogcoord.agent.tasks.TaskExecutor` (so a cheater cheats exactly as a dishonest agent
would, with a correctly signed receipt), except that the module runs in a thread with a
:class:`~fogcoord.compute.Sandbox` instead of a worker process. The answer goes to
``coord.jobs.on_result`` as the agent channel's handler would send it.

A device can be silent (never answers), and answers to chosen tasks can be held back until
:meth:`JobHarness.release`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, cast

from fogcoord.agent.identity import DeviceIdentity
from fogcoord.agent.tasks import Cheat, TaskExecutor
from fogcoord.compute.examples import load_example, primes_input
from fogcoord.compute.sandbox import Sandbox
from fogcoord.compute.worker import WorkerPool
from fogcoord.contracts.compute import SandboxLimits, WorkReceipt
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.jobs import (
    CheaterCaught,
    JobStateChanged,
    JobSubmission,
    JobView,
    TaskFailed,
    TaskVerified,
)
from fogcoord.contracts.marketplace import ResourceBid
from fogcoord.contracts.units import MICRO_PER_TOKEN
from fogcoord.coordinator import Coordinator
from fogcoord.tokenomics.escrow import escrow_account
from fogcoord.tokenomics.ledger import MINT
from fogcoord.tokenomics.model import TransferFlags
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import VerifyReport, verify_ledger
from tests.harvesting.support import cap, principal_of
from tests.helpers import make_config

E = TypeVar("E", bound=ServiceEvent)

REQUESTER = "req"
GRANT = 10 * MICRO_PER_TOKEN
"""What every new wallet is granted (the default ``default_balance``), in micro-tokens."""
CEILING = Decimal("1")
"""The requester's price ceiling per GFLOP: devices ask the highest price under it, so that a
task's pay is thousands of micro-tokens and every share of it is visible."""
PRIMES_FUEL = 200_000_000
"""Fuel per primes task: far more than a 2,000-number range needs."""
WAIT_S = 20.0


class ThreadPool:
    """The part of :class:`WorkerPool` a :class:`TaskExecutor` uses, run in a thread."""

    def __init__(self, sandbox: Sandbox, timeout_s: float = 30.0) -> None:
        self.sandbox = sandbox
        self.timeout_s = timeout_s

    async def run(
        self,
        module_bytes: bytes,
        input: bytes,
        limits: SandboxLimits,
        task_id: str,
        entry: str = "_start",
        *,
        timeout_s: float | None = None,
    ) -> tuple[WorkReceipt, bytes]:
        return await asyncio.to_thread(
            self.sandbox.execute, module_bytes, input, limits, task_id=task_id, entry=entry
        )


def honest_for(n: int) -> Callable[[], float]:
    """A cheat's coin that says "honest" for the first ``n`` results, then "cheat" for ever."""
    draws = itertools.count()
    return lambda: 1.0 if next(draws) < n else 0.0


@dataclass
class FakeDevice:
    """One device: a registered key pair, an open channel, and an agent's task executor."""

    harness: JobHarness
    device_id: str
    owner: str
    identity: DeviceIdentity
    executor: TaskExecutor
    silent: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[WorkReceipt] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)

    async def send_json(self, data: Any, mode: str = "text") -> None:
        """The coordinator pushes a frame: answer it in the background, as an agent would."""
        self.received.append(data)
        if not self.silent:
            self.harness.spawn(self._answer(data))

    async def _answer(self, message: dict[str, Any]) -> None:
        reply = await self.executor(message)
        if reply is None:
            return
        await self.harness.allowance(message)
        if "receipt" in reply:
            self.receipts.append(WorkReceipt.model_validate(reply["receipt"]))
        ack = await self.harness.coord.jobs.on_result(self.device_id, reply)
        self.acks.append(ack)
        self.harness.acks.append(ack)


@dataclass
class Events:
    """Every job event the coordinator published, in order of delivery."""

    events: list[ServiceEvent] = field(default_factory=list)

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self, job_id: str) -> list[str]:
        """The job's states from ``submitted`` on, following each change from its previous."""
        changes = [e for e in self.of(JobStateChanged) if e.job_id == job_id]
        out: list[str] = []
        current = ""
        while True:
            nxt = [e for e in changes if e.previous == current]
            if not nxt:
                return out
            changes.remove(nxt[0])
            current = nxt[0].state
            out.append(current)


class JobHarness:
    """A started coordinator over ``data_dir``, devices on fake channels, a requester wallet."""

    def __init__(self, data_dir: Path, jobs: dict[str, object] | None = None) -> None:
        self.config = make_config(data_dir, jobs=dict(jobs or {}))
        self.coord = Coordinator(self.config)
        self.sandbox = Sandbox()
        self.pool = cast(WorkerPool, ThreadPool(self.sandbox))
        self.devices: dict[str, FakeDevice] = {}
        self.events = Events()
        self.holding: Callable[[dict[str, Any]], bool] | None = None
        self.acks: list[dict[str, Any]] = []
        """Every answer's acknowledgement, in the order they came."""
        self._gate = asyncio.Event()
        self._gate.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.coord.start()
        kinds: tuple[type[ServiceEvent], ...] = (
            JobStateChanged,
            TaskVerified,
            TaskFailed,
            CheaterCaught,
        )
        for i, kind in enumerate(kinds):
            await self.coord.orchestration.subscribe(kind, self.events, name=f"test.jobs.{i}")
        if self.coord.tokenomics.wallet_owner(REQUESTER) is None:
            await self.coord.tokenomics.initialize_wallet(REQUESTER)
        for device in self.devices.values():
            await self._connect(device)

    async def stop(self) -> None:
        await self.coord.stop()

    async def restart(self) -> None:
        """Stop the coordinator and start a new one over the same data directory."""
        await self.coord.stop()
        self.coord = Coordinator(self.config)
        await self.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.coord.stop()

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(_run(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the fleet ---------------------------------------------------------------------------

    async def add_device(
        self,
        device_id: str,
        *,
        owner: str | None = None,
        cheat: Cheat | None = None,
        coin: Callable[[], float] | None = None,
        silent: bool = False,
        forge: bool = False,
    ) -> FakeDevice:
        """Register an eligible device (plugged in, its key as its public key) and connect it.

        With ``forge`` it signs its receipts with another key than the one it registered.
        """
        identity = DeviceIdentity(device_id, DeviceIdentity.generate().private_key)
        signer = (
            DeviceIdentity(device_id, DeviceIdentity.generate().private_key) if forge else identity
        )
        executor = TaskExecutor(lambda: signer, self.pool, cheat=cheat, rng=coin)
        device = FakeDevice(
            self, device_id, owner or f"owner-{device_id}", identity, executor, silent=silent
        )
        self.devices[device_id] = device
        await self.coord.harvesting.register_device(
            cap(
                device_id,
                device.owner,
                charging=True,
                battery_percent=90,
                public_key=identity.public_key,
            ),
            principal_id=principal_of(device_id),
        )
        await self._connect(device)
        return device

    async def _connect(self, device: FakeDevice) -> None:
        await self.coord.harvesting.heartbeat(
            device.device_id, battery_percent=90, charging=True, thermal_celsius=30
        )
        self.coord.channels.connected(device.device_id, device)

    def hold(self, holding: Callable[[dict[str, Any]], bool]) -> None:
        """From now on, answers to the tasks ``holding`` picks are held back."""
        self.holding = holding
        self._gate.clear()

    async def allowance(self, message: dict[str, Any]) -> None:
        """Wait until the answer to ``message`` may go out."""
        while self.holding is not None and self.holding(message):
            await self._gate.wait()

    def release(self) -> None:
        """Let every held answer, and every later one, go out."""
        self.holding = None
        self._gate.set()

    # --- jobs --------------------------------------------------------------------------------

    async def submit(self, body: JobSubmission, requester: str = REQUESTER) -> JobView:
        return await self.coord.jobs.submit(requester, body)

    async def hire(self, view: JobView, devices: Sequence[str] | None = None) -> None:
        """Every device (or ``devices``) asks the same price; the requester settles at once."""
        assert view.auction_id is not None
        market = self.coord.marketplace
        price = await self.ask_price(view.auction_id)
        for device_id in devices if devices is not None else list(self.devices):
            await market.submit_bid(
                view.auction_id, ResourceBid(provider=device_id, price_per_gflop=price)
            )
        await market.settle_auction(view.auction_id)

    async def ask_price(self, auction_id: str) -> Decimal:
        """The highest price on the auction's grid that its ceiling allows."""
        auction = await self.coord.marketplace.get_auction(auction_id)
        step = auction.bid_increment
        price = (auction.max_price_per_gflop // step) * step
        assert auction.reserve_price_per_gflop <= price <= auction.max_price_per_gflop
        return price

    async def run(self, body: JobSubmission, devices: Sequence[str] | None = None) -> JobView:
        """Submit, hire, and wait for the job to end."""
        view = await self.submit(body)
        await self.hire(view, devices)
        return await self.wait_end(view.job_id)

    async def wait_end(self, job_id: str, timeout: float = WAIT_S) -> JobView:
        await eventually(lambda: self.coord.jobs.view(job_id).state.terminal, timeout)
        await self.settle_events()
        return self.coord.jobs.view(job_id)

    async def settle_events(self) -> None:
        """Let events published so far reach their subscribers."""
        for _ in range(5):
            await asyncio.sleep(0.02)

    async def outputs(self, job_id: str) -> list[bytes]:
        view = self.coord.jobs.view(job_id)
        return [await self.coord.jobs.output(job_id, i) for i in range(view.tasks_total)]

    # --- money -------------------------------------------------------------------------------

    def balance(self, wallet: str) -> int:
        account = self.coord.tokenomics.ledger.account(wallet)
        return account.balance if account is not None else 0

    def posted_flows(self) -> list[tuple[str, str, int]]:
        """(debit, credit, amount) of every posted movement in the stored ledger."""
        store = SqlLedgerStore(self.coord.storage.engine)
        return [
            (t.debit_account, t.credit_account, t.amount)
            for t in store.all_transfers()
            if not t.flags & (TransferFlags.PENDING | TransferFlags.VOID_PENDING)
        ]

    def paid_from_escrow(self, job_id: str) -> dict[str, int]:
        """Micro-tokens the job's escrow paid into each account (posted)."""
        out: dict[str, int] = {}
        for debit, credit, amount in self.posted_flows():
            if debit == escrow_account(job_id):
                out[credit] = out.get(credit, 0) + amount
        return out

    def spent_on(self, job_id: str) -> int:
        """What the requester's wallet moved into the job's escrow, less what came back."""
        escrow = escrow_account(job_id)
        net = 0
        for debit, credit, amount in self.posted_flows():
            if (debit, credit) == (REQUESTER, escrow):
                net += amount
            elif (debit, credit) == (escrow, REQUESTER):
                net -= amount
        return net

    async def verify(self) -> VerifyReport:
        return await asyncio.to_thread(verify_ledger, SqlLedgerStore(self.coord.storage.engine))

    async def assert_books_balance(self, job_id: str) -> None:
        """Conservation, an empty escrow, nothing left pending, and a ledger that verifies."""
        accounts = self.coord.tokenomics.ledger.state.accounts
        mint = accounts[MINT]
        minted = mint.debits_posted - mint.credits_posted
        held = sum(a.balance for a in accounts.values() if a.id != MINT)
        assert held == minted, f"{held} micro-tokens in accounts, {minted} minted"
        escrow = accounts[escrow_account(job_id)]
        assert (escrow.balance, escrow.credits_pending, escrow.debits_pending) == (0, 0, 0)
        pending = {
            a.id: (a.debits_pending, a.credits_pending)
            for a in accounts.values()
            if a.debits_pending or a.credits_pending
        }
        assert pending == {}
        # what the requester put into the job and did not get back is what the job paid others
        paid = self.paid_from_escrow(job_id)
        assert self.spent_on(job_id) == sum(v for k, v in paid.items() if k != REQUESTER)
        report = await self.verify()
        assert report.ok, report.problems


async def _run(coro: Awaitable[None]) -> None:
    await coro


async def trust_of(coord: Coordinator, device_id: str) -> float:
    return (await coord.harvesting.monitor_device_health(device_id)).trust


async def eventually(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


# --- job bodies ------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prime_ranges(n: int, span: int = 2_000, start: int = 100_000) -> list[tuple[int, int]]:
    return [(start + i * span, start + (i + 1) * span) for i in range(n)]


def primes_job(
    ranges: Sequence[tuple[int, int]],
    *,
    replication: int = 2,
    slots: int | None = None,
    deadline_seconds: float = 600.0,
    name: str = "primes",
) -> JobSubmission:
    return JobSubmission(
        name=name,
        module_wat=load_example("primes").decode(),
        inputs_b64=[b64(primes_input(lo, hi)) for lo, hi in ranges],
        fuel_limit=PRIMES_FUEL,
        replication=replication,
        max_price_per_gflop=CEILING,
        deadline_seconds=deadline_seconds,
        slots=slots,
    )


def wasi(body: str) -> str:
    """A WASI command whose ``_start`` is ``body``."""
    return f"""
    (module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") {body}))
    """


def module_job(wat: str, inputs: int, *, slots: int | None = None) -> JobSubmission:
    return JobSubmission(
        name="custom",
        module_wat=wat,
        inputs_b64=[b64(bytes([i])) for i in range(inputs)],
        fuel_limit=1_000_000,
        replication=2,
        max_price_per_gflop=CEILING,
        slots=slots,
    )


def from_task(first: int) -> Callable[[dict[str, Any]], bool]:
    """Picks the pushed tasks whose index in their job is ``first`` or more."""
    return lambda message: int(str(message["task_id"]).rsplit(":", 1)[1]) >= first
