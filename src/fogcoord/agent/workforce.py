"""A workforce: real agents in one process that bid, run tasks and (some of them) cheat.

Each member is a full :class:`~fogcoord.agent.runner.Agent` with its own owner, key pair, device
key and channel, an :class:`~fogcoord.agent.bidding.AutoBidder` and a
:class:`~fogcoord.agent.tasks.TaskExecutor`. They share one
:class:`~fogcoord.compute.worker.WorkerPool`, because fifty sandbox processes would not fit a
small machine while the work itself is the same. Devices are plugged in and cool, so all of them
may work; ``cheaters`` of them return wrong outputs or inflated fuel on a share of their tasks,
which is what the coordinator's verification must catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from fogcoord.agent.bidding import AskPolicy, AutoBidder
from fogcoord.agent.device import DeviceSpec
from fogcoord.agent.identity import DeviceIdentity, MemoryIdentityStore
from fogcoord.agent.runner import Agent
from fogcoord.agent.tasks import Cheat, CheatMode, TaskExecutor
from fogcoord.agent.training import Poison, TrainingExecutor
from fogcoord.api.schemas import Heartbeat
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogClient
from fogcoord.compute.worker import WorkerPool
from fogcoord.contracts.harvesting import NetworkType

log = logging.getLogger(__name__)


@dataclass
class PluggedInDevice:
    """A device on mains power at a steady temperature: always allowed to work."""

    cores: int
    gflops: float
    ram_mb: int
    region: str

    def spec(self) -> DeviceSpec:
        return DeviceSpec(
            cpu_cores=self.cores,
            gflops=self.gflops,
            ram_mb=self.ram_mb,
            storage_gb=64.0,
            network=NetworkType.WIFI,
            bandwidth_mbps=100.0,
            platform="linux",
            region=self.region,
        )

    def reading(self) -> Heartbeat:
        return Heartbeat(battery_percent=100.0, charging=True, thermal_celsius=38.0)


def _identity_of(agent: Agent) -> Callable[[], DeviceIdentity | None]:
    return lambda: agent.identity


@dataclass
class Member:
    agent: Agent
    bidder: AutoBidder
    executor: TaskExecutor
    owner: str
    cheat: Cheat | None
    poison: Poison | None = None


class Workforce:
    def __init__(
        self,
        url: str,
        operator_key: str,
        n: int,
        *,
        cheaters: int = 0,
        cheat_rate: float = 0.5,
        poisoners: int = 0,
        workers: int = 2,
        interval: float = 5.0,
        seed: int = 7,
    ) -> None:
        if not 0 <= cheaters <= n:
            raise ValueError("cheaters must be between 0 and the workforce size")
        self.url = url
        self.operator_key = operator_key
        self.n = n
        self.cheaters = cheaters
        self.poisoners = poisoners
        self.cheat_rate = cheat_rate
        self.interval = interval
        self.rng = np.random.default_rng(seed)
        self.pool = WorkerPool(workers, timeout_s=60.0)
        self.members: list[Member] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Create owners, register every device and open every channel."""
        await self.pool.start()
        regions = ("eu-west", "eu-central", "us-east", "ap-south")
        cheat_at = set(self.rng.choice(self.n, size=self.cheaters, replace=False).tolist())
        honest = [i for i in range(self.n) if i not in cheat_at]
        poison_at = set(self.rng.choice(honest, size=self.poisoners, replace=False).tolist())
        async with FogClient(self.url, self.operator_key) as admin:
            keys = await asyncio.gather(
                *(
                    admin.create_key(kind=PrincipalKind.REQUESTER, name=f"device-owner-{i}")
                    for i in range(self.n)
                )
            )
        for i in range(self.n):
            device = PluggedInDevice(
                cores=int(self.rng.choice([2, 4, 8])),
                gflops=float(np.round(self.rng.uniform(5, 60), 1)),
                ram_mb=int(self.rng.choice([2048, 4096, 8192])),
                region=regions[i % len(regions)],
            )
            agent = Agent(
                self.url,
                keys[i].key,
                device=device,
                identities=MemoryIdentityStore(),
                interval=self.interval,
                rng=self.rng,
            )
            cheat = None
            if i in cheat_at:
                mode = CheatMode.WRONG_OUTPUT if len(self.members) % 2 else CheatMode.INFLATED_FUEL
                cheat = Cheat(mode, self.cheat_rate, salt=int(self.rng.integers(1, 1 << 30)))
            rng = np.random.default_rng(self.rng.integers(1 << 32))
            executor = TaskExecutor(_identity_of(agent), self.pool, cheat=cheat, rng=rng.random)
            agent.on("task", executor)
            poison = Poison() if i in poison_at else None
            agent.on("study", TrainingExecutor(_identity_of(agent), poison=poison))
            markup = Decimal(int(self.rng.integers(0, 20))) / 100
            bidder = AutoBidder(agent, AskPolicy(markup=markup))
            self.members.append(
                Member(agent, bidder, executor, keys[i].principal.principal_id, cheat, poison)
            )
        for m in self.members:
            self._tasks.append(asyncio.get_running_loop().create_task(m.agent.run()))

    @property
    def online(self) -> int:
        return sum(1 for m in self.members if m.agent.via == "channel")

    async def wait_online(self, timeout: float = 30.0) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        # agents expose no event for "channel open": poll, briefly, once at start-up
        while self.online < self.n and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return self.online

    def cheater_ids(self) -> dict[str, str]:
        """Device id -> how it cheats."""
        return {
            m.agent.device_id or "?": m.cheat.mode.value
            for m in self.members
            if m.cheat is not None
        }

    def poisoner_ids(self) -> set[str]:
        return {m.agent.device_id or "?" for m in self.members if m.poison is not None}

    def tasks_run(self) -> dict[str, int]:
        """Device id -> tasks its agent ran (0 for a device no auction hired)."""
        return {m.agent.device_id or "?": m.executor.completed for m in self.members}

    async def stop(self) -> None:
        for m in self.members:
            m.agent.stop()
        for task in self._tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 5.0)
        for m in self.members:
            await m.bidder.close()
        self.pool.close()
