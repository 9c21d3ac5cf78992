"""A fleet of simulated devices in one process, speaking the real agent protocol.

Every simulated device is a full :class:`~fogcoord.agent.runner.Agent`: its own key pair,
registration, device key and WebSocket channel, on one shared asyncio loop. What keeps 10,000 of
them cheap on a small machine:

- registrations run at most ``register_concurrency`` at a time, and each owner's HTTP client is
  opened for its devices' registrations only, then closed (so idle connections do not pile up);
- channels are opened at most ``connect_concurrency`` at a time, each after a random delay within
  one interval, so heartbeats are spread evenly over the interval instead of arriving in waves;
- one task per device; channels without compression or protocol pings (the heartbeats and their
  answers prove liveness); devices keep their state in slotted objects with a few floats;
- one shared :class:`~fogcoord.agent.telemetry.FleetStats` records every heartbeat's round trip.

Owners: the operator key creates one requester principal per ``devices_per_owner`` devices (on
first use, so owner creation overlaps registration), which makes "at most one replica per owner"
meaningful for the fleet; or pass existing ``owner_keys``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import resource
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fogcoord.agent.backoff import Backoff
from fogcoord.agent.handlers import Handlers
from fogcoord.agent.identity import MemoryIdentityStore
from fogcoord.agent.runner import Agent, AgentError, http_transport
from fogcoord.agent.simulated import SimulatedDevice, simulated_fleet
from fogcoord.agent.telemetry import FleetStats, Percentiles
from fogcoord.api.schemas import DeviceRegistered, DeviceRegistration
from fogcoord.auth.models import PrincipalKind, Scope
from fogcoord.client import FogApiError, FogClient
from fogcoord.clock import Clock, SystemClock

log = logging.getLogger("fogcoord.agent.fleet")

DEFAULT_DEVICES_PER_OWNER = 10
DEFAULT_REGISTER_CONCURRENCY = 100
DEFAULT_CONNECT_CONCURRENCY = 100


class _Owner:
    """An owner principal used by a block of devices: created and connected on first use."""

    __slots__ = ("_client", "_create", "_key", "_lock", "_users", "name", "url")

    def __init__(
        self,
        url: str,
        name: str,
        users: int,
        *,
        key: str | None = None,
        create: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self._users = users
        self._key = key
        self._create = create
        self._client: FogClient | None = None
        self._lock = asyncio.Lock()

    async def _fog(self) -> FogClient:
        async with self._lock:
            if self._key is None:
                assert self._create is not None
                self._key = await self._create(self.name)
            if self._client is None:
                self._client = FogClient(self.url, self._key, transport=http_transport(4))
            return self._client

    async def register_device(self, body: DeviceRegistration) -> DeviceRegistered:
        return await (await self._fog()).register_device(body)

    async def deregister_device(self, device_id: str) -> None:
        await (await self._fog()).deregister_device(device_id)

    async def release(self) -> None:
        """One of its devices is registered; the last one closes the client."""
        self._users -= 1
        if self._users <= 0:
            await self.close()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


@dataclass(frozen=True)
class FleetProgress:
    """A live view of a running fleet, for a status line."""

    elapsed: float
    devices: int
    registered: int
    online: int
    heartbeats: int
    heartbeats_per_second: float
    p99_ms: float
    errors: int
    reconnects: int
    failed: int


@dataclass(frozen=True)
class FleetReport:
    devices: int
    owners: int
    registered: int
    failed: int
    duration: float
    interval: float
    seed: int
    registration_seconds: float
    registration_rate: float
    startup_seconds: float | None
    heartbeats: int
    http_heartbeats: int
    heartbeats_per_second: float
    errors: int
    error_kinds: dict[str, int]
    reconnects: int
    online: int
    peak_online: int
    latency_ms: Percentiles
    steady_latency_ms: Percentiles
    loop_lag_ms: Percentiles
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "owners": self.owners,
            "registered": self.registered,
            "failed": self.failed,
            "duration": round(self.duration, 3),
            "interval": self.interval,
            "seed": self.seed,
            "registration_seconds": round(self.registration_seconds, 3),
            "registration_rate": round(self.registration_rate, 1),
            "startup_complete": self.startup_seconds is not None,
            "startup_seconds": (
                None if self.startup_seconds is None else round(self.startup_seconds, 3)
            ),
            "heartbeats": self.heartbeats,
            "http_heartbeats": self.http_heartbeats,
            "heartbeats_per_second": round(self.heartbeats_per_second, 1),
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "reconnects": self.reconnects,
            "online": self.online,
            "peak_online": self.peak_online,
            "latency_ms": self.latency_ms.to_json(),
            "steady_latency_ms": self.steady_latency_ms.to_json(),
            "loop_lag_ms": self.loop_lag_ms.to_json(),
            **self.extra,
        }


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft limit of open files toward ``wanted`` (each channel is one socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


class Fleet:
    """``n`` simulated devices registered and heartbeating against one coordinator."""

    def __init__(
        self,
        coordinator_url: str,
        operator_key: str | None = None,
        n: int = 100,
        *,
        owner_keys: Sequence[str] | None = None,
        interval: float = 10.0,
        seed: int = 0,
        devices_per_owner: int = DEFAULT_DEVICES_PER_OWNER,
        register_concurrency: int = DEFAULT_REGISTER_CONCURRENCY,
        connect_concurrency: int = DEFAULT_CONNECT_CONCURRENCY,
        time_scale: float = 1.0,
        start_utc_hour: float = 12.0,
        clock: Clock | None = None,
        handlers: Handlers | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a fleet needs at least one device")
        if not owner_keys and not operator_key:
            raise ValueError("give the operator key (to create owners) or owner keys")
        self.url = coordinator_url.rstrip("/")
        self.operator_key = operator_key
        self.n = n
        self.interval = interval
        self.seed = seed
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.stats = FleetStats(self.clock.monotonic)
        self.handlers = handlers if handlers is not None else Handlers()
        self._rng = np.random.default_rng(seed)
        self._register_limit = asyncio.Semaphore(register_concurrency)
        self._connect_limit = asyncio.Semaphore(connect_concurrency)
        self._owner_create_limit = asyncio.Semaphore(max(1, register_concurrency // 4))
        self.devices: list[SimulatedDevice] = simulated_fleet(
            n,
            seed,
            start_utc_hour=start_utc_hour,
            time_scale=time_scale,
            now=self.clock.monotonic,
        )
        count = len(owner_keys) if owner_keys else math.ceil(n / max(1, devices_per_owner))
        # consecutive blocks of devices share an owner, so few owners are busy at any moment
        self._owner_of = [i * count // n for i in range(n)]
        users = np.bincount(self._owner_of, minlength=count).tolist()
        self.owners = [
            _Owner(self.url, f"owner-{i}", users[i], key=owner_keys[i])
            if owner_keys
            else _Owner(self.url, f"fleet-{seed}-owner-{i}", users[i], create=self._create_owner)
            for i in range(count)
        ]
        self.agents = [
            Agent(
                self.url,
                device=device,
                identities=MemoryIdentityStore(),
                owner=self.owners[self._owner_of[i]],
                interval=interval,
                clock=self.clock,
                rng=self._rng,
                backoff=Backoff(rng=self._rng),
                recorder=self.stats,
                handlers=self.handlers,
                start_jitter=interval,
                register_limit=self._register_limit,
                connect_limit=self._connect_limit,
            )
            for i, device in enumerate(self.devices)
        ]
        self.failed = 0
        self.loop_lag = array("d")
        self._online_at_end = 0
        self._operator: FogClient | None = None
        self._started = 0.0

    async def _create_owner(self, name: str) -> str:
        assert self._operator is not None
        async with self._owner_create_limit:
            issued = await self._operator.create_key(kind=PrincipalKind.REQUESTER, name=name)
        return issued.key

    async def check_operator(self) -> None:
        """Fail fast (FogApiError) when the operator key cannot create owners."""
        if self._operator is None:
            return
        who = await self._operator.whoami()
        if Scope.ADMIN not in who.scopes:
            raise FogApiError(403, "forbidden", "the fleet needs an operator key (admin scope)", {})

    async def _drive(self, index: int) -> None:
        agent, owner = self.agents[index], self.owners[self._owner_of[index]]
        try:
            try:
                await agent.ensure_registered()
            finally:
                await owner.release()
            await agent.run_forever()
        except AgentError as exc:
            self.failed += 1
            if self.failed == 1:
                log.error("device %d gave up: %s", index, exc)
        except Exception:  # the boundary of one simulated device: count it, keep the fleet
            self.failed += 1
            log.exception("device %d failed", index)

    def progress(self, previous: tuple[float, int, int] | None = None) -> FleetProgress:
        """The live view; ``previous`` = (time, heartbeats, latencies seen) of the last call."""
        s = self.stats
        now = self.clock.monotonic()
        rate, p99 = 0.0, 0.0
        if previous is not None and now > previous[0]:
            rate = (s.heartbeats - previous[1]) / (now - previous[0])
            p99 = s.latency(previous[2]).p99
        return FleetProgress(
            elapsed=now - self._started,
            devices=self.n,
            registered=s.registered_count,
            online=s.online,
            heartbeats=s.heartbeats,
            heartbeats_per_second=rate,
            p99_ms=p99,
            errors=s.error_count,
            reconnects=s.reconnects,
            failed=self.failed,
        )

    async def run(
        self,
        *,
        duration: float | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[FleetProgress], None] | None = None,
        progress_every: float = 0.5,
        duration_after_startup: bool = False,
        freeze_gc_after_startup: bool = False,
    ) -> FleetReport:
        """Run until ``stop`` is set or ``duration`` seconds have passed: counted from the start,
        or (``duration_after_startup``) from when every device is registered and online.

        ``freeze_gc_after_startup`` moves every object alive after start-up out of the garbage
        collector's reach (``gc.freeze``), so a full collection no longer walks 10,000 agents
        and their connections and stalls the loop for a second; for a process that runs only
        the fleet."""
        stop = stop if stop is not None else asyncio.Event()
        self._started = self.clock.monotonic()
        if self.operator_key:
            self._operator = FogClient(self.url, self.operator_key, transport=http_transport(16))
        tasks: list[asyncio.Task[None]] = []
        previous = (self._started, 0, 0)
        try:
            await self.check_operator()
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(self._drive(i)) for i in range(self.n)]
            tasks.append(loop.create_task(self._watch_loop_lag()))
            deadline = None
            if duration is not None and not duration_after_startup:
                deadline = self._started + duration
            while not stop.is_set() and self.failed < self.n:
                now = self.clock.monotonic()
                if self.stats.steady_at is None and self._started_up():
                    self.stats.mark_steady()
                    if freeze_gc_after_startup:
                        gc.collect()
                        gc.freeze()
                    if duration is not None and duration_after_startup:
                        deadline = now + duration
                if deadline is not None and now >= deadline:
                    break
                if on_progress is not None:
                    on_progress(self.progress(previous))
                    previous = (now, self.stats.heartbeats, len(self.stats.latencies))
                wait = progress_every if deadline is None else min(progress_every, deadline - now)
                with contextlib.suppress(TimeoutError):
                    async with self.clock.timeout(max(0.0, wait)):
                        await stop.wait()
        finally:
            ended = self.clock.monotonic()
            self._online_at_end = self.stats.online
            if on_progress is not None and tasks:
                on_progress(self.progress(previous))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for owner in self.owners:
                await owner.close()
            if self._operator is not None:
                await self._operator.close()
                self._operator = None
        return self.report(ended - self._started)

    async def _watch_loop_lag(self, period: float = 0.05) -> None:
        """How late this process's loop wakes up: tells fleet-side delay from coordinator delay."""
        clock = self.clock
        while True:
            before = clock.monotonic()
            await clock.sleep(period)
            self.loop_lag.append(max(0.0, clock.monotonic() - before - period))

    def _started_up(self) -> bool:
        return self.stats.registered_count + self.failed >= self.n and self.stats.online >= (
            self.n - self.failed
        )

    def report(self, duration: float) -> FleetReport:
        s = self.stats
        reg_seconds = s.registration_seconds()
        steady_from = s.steady_index if s.steady_index is not None else len(s.latencies)
        steady_span = ((self._started + duration) - s.steady_at) if s.steady_at else 0.0
        return FleetReport(
            devices=self.n,
            owners=len(self.owners),
            registered=s.registered_count,
            failed=self.failed,
            duration=duration,
            interval=self.interval,
            seed=self.seed,
            registration_seconds=reg_seconds,
            registration_rate=s.registered_count / reg_seconds if reg_seconds > 0 else 0.0,
            startup_seconds=(s.steady_at - self._started) if s.steady_at is not None else None,
            heartbeats=s.heartbeats,
            http_heartbeats=s.http_heartbeats,
            heartbeats_per_second=(
                (len(s.latencies) - steady_from) / steady_span
                if steady_span > 0
                else (s.heartbeats / duration if duration > 0 else 0.0)
            ),
            errors=s.error_count,
            error_kinds=dict(s.errors),
            reconnects=s.reconnects,
            online=self._online_at_end,
            peak_online=s.peak_online,
            latency_ms=s.latency(),
            steady_latency_ms=s.latency(steady_from),
            loop_lag_ms=Percentiles.of(np.frombuffer(self.loop_lag, dtype=np.float64).copy())
            if self.loop_lag
            else Percentiles.of(np.empty(0)),
        )
