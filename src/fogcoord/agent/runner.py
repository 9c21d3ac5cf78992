"""The agent loop: register once, then heartbeat over the device's channel until told to stop.

1. **Register** (only the first time): make an Ed25519 key pair, sign the registration, and send
   it with the owner's API key; keep the device key the coordinator returns (see
   :mod:`fogcoord.agent.identity`). A restarted agent finds its identity and skips this.
2. **Channel**: open ``/v1/devices/{id}/channel`` (a WebSocket, authenticated by the device key),
   send a ``heartbeat`` frame every ``interval`` seconds and read the ``health`` answers; other
   pushed message types go to :class:`~fogcoord.agent.handlers.Handlers` (unknown ones are logged
   and ignored).
3. **Fallback**: while the channel cannot be opened, heartbeats go over HTTP at the same pace,
   and the channel is retried after an exponential back-off with jitter (capped). A channel that
   breaks (closed, or a heartbeat left unanswered for ``reply_timeout``) counts one reconnect.
4. **Identity lost** (the coordinator answers 401/403/404 for the device key, e.g. it was
   deregistered): with the owner's key the agent registers again, otherwise it stops with
   :class:`AgentError`.
5. **Stop**: :meth:`Agent.stop` (or the event given to :meth:`Agent.run`) closes the channel and
   returns; the CLI wires SIGINT/SIGTERM to it.

Time comes from an injected :class:`~fogcoord.clock.Clock`, so tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import ssl
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from fogcoord import __version__
from fogcoord.agent.backoff import Backoff
from fogcoord.agent.device import DeviceSource, MachineDevice, registration
from fogcoord.agent.handlers import Handler, Handlers, Message
from fogcoord.agent.identity import DeviceIdentity, FileIdentityStore, IdentityStore
from fogcoord.agent.telemetry import NullRecorder, Recorder, Via
from fogcoord.api.schemas import DeviceRegistered, DeviceRegistration
from fogcoord.client import FogApiError, FogClient
from fogcoord.clock import Clock, SystemClock
from fogcoord.contracts.harvesting import DeviceHealth

log = logging.getLogger("fogcoord.agent")
T = TypeVar("T")

STATE_DIR_ENV = "FOGCOORD_AGENT_DIR"
DEFAULT_INTERVAL = 10.0
MAX_FRAME_BYTES = 16 * 2**20
"""Largest pushed message accepted (a task may carry a WebAssembly module)."""
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_IDENTITY_ERRORS = frozenset({"not_found", "unauthenticated", "forbidden"})
"""Error codes meaning the coordinator no longer accepts this device's key for this device."""


class AgentError(Exception):
    """The agent cannot go on (e.g. not registered and no owner key); the message says why."""


class IdentityRejected(Exception):
    """The coordinator no longer accepts this device's key."""


class ChannelStalled(Exception):
    """A heartbeat on the channel went unanswered for too long."""


class Registrar(Protocol):
    """Registers devices for an owner: :class:`~fogcoord.client.FogClient` with the owner's key."""

    async def register_device(self, body: DeviceRegistration) -> DeviceRegistered: ...

    async def deregister_device(self, device_id: str) -> None: ...


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client of the process (building one costs tens of ms)."""
    return httpx.create_ssl_context()


def http_transport(max_connections: int = 4) -> httpx.AsyncHTTPTransport:
    """A small HTTP connection pool using the shared TLS context."""
    return httpx.AsyncHTTPTransport(
        verify=default_ssl_context(),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


def default_state_dir() -> Path:
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env) if env else Path.home() / ".fogcoord" / "agent"


def channel_url(coordinator_url: str, device_id: str) -> str:
    """The WebSocket URL of a device's channel (``http`` -> ``ws``, ``https`` -> ``wss``)."""
    base = coordinator_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return f"{base}/v1/devices/{device_id}/channel"


async def _limited(limit: asyncio.Semaphore | None, work: Awaitable[T]) -> T:
    if limit is None:
        return await work
    async with limit:
        return await work


class Agent:
    """One device's agent. ``await agent.run()`` until :meth:`stop`; see the module docstring."""

    __slots__ = (
        "_channel_override",
        "_connect_limit",
        "_http",
        "_next_beat",
        "_owner",
        "_pending",
        "_register_limit",
        "_stop",
        "_tasks",
        "backoff",
        "clock",
        "coordinator_url",
        "device",
        "errors",
        "handlers",
        "heartbeats",
        "identities",
        "identity",
        "interval",
        "last_health",
        "open_timeout",
        "owner_api_key",
        "reconnects",
        "recorder",
        "registrations",
        "reply_timeout",
        "rng",
        "start_jitter",
        "state_dir",
        "via",
    )

    def __init__(
        self,
        coordinator_url: str,
        owner_api_key: str | None = None,
        state_dir: Path | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        device: DeviceSource | None = None,
        identities: IdentityStore | None = None,
        owner: Registrar | None = None,
        region: str = "",
        clock: Clock | None = None,
        rng: np.random.Generator | None = None,
        backoff: Backoff | None = None,
        recorder: Recorder | None = None,
        handlers: Handlers | None = None,
        channel: str | None = None,
        start_jitter: float = 0.0,
        reply_timeout: float | None = None,
        open_timeout: float = 10.0,
        register_limit: asyncio.Semaphore | None = None,
        connect_limit: asyncio.Semaphore | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.coordinator_url = coordinator_url.rstrip("/")
        self.owner_api_key = owner_api_key
        self.state_dir = state_dir if state_dir is not None else default_state_dir()
        self.interval = interval
        self.device: DeviceSource = (
            device if device is not None else MachineDevice(self.state_dir, region=region)
        )
        self.identities: IdentityStore = (
            identities if identities is not None else FileIdentityStore(self.state_dir)
        )
        self._owner = owner
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.rng = rng if rng is not None else np.random.default_rng()
        self.backoff = backoff if backoff is not None else Backoff(rng=self.rng)
        self.recorder: Recorder = recorder if recorder is not None else NullRecorder()
        self.handlers = handlers if handlers is not None else Handlers()
        self._channel_override = channel
        self.start_jitter = start_jitter
        self.reply_timeout = reply_timeout if reply_timeout is not None else max(30.0, 3 * interval)
        self.open_timeout = open_timeout
        self._register_limit = register_limit
        self._connect_limit = connect_limit

        self.identity: DeviceIdentity | None = None
        self.last_health: DeviceHealth | None = None
        self.via: Via | None = None
        """How heartbeats currently travel: ``channel``, ``http`` or None (not yet / stopped)."""
        self.registrations = 0
        self.heartbeats = 0
        self.errors = 0
        self.reconnects = 0
        self._next_beat = 0.0
        self._http: FogClient | None = None
        self._pending: deque[tuple[float, bool]] | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- control -------------------------------------------------------------------------------

    @property
    def device_id(self) -> str | None:
        return self.identity.device_id if self.identity is not None else None

    def on(self, message_type: str, handler: Handler) -> None:
        """Handle pushed messages of ``message_type`` (e.g. ``task``)."""
        self.handlers.register(message_type, handler)

    def stop(self) -> None:
        """Ask :meth:`run` to close the channel and return."""
        if self._stop is None:
            self._stop = asyncio.Event()
        self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Register if needed and heartbeat until ``stop`` (or :meth:`stop`) is set."""
        if stop is None:
            if self._stop is None:
                self._stop = asyncio.Event()
            stop = self._stop
        elif self._stop is not None and self._stop.is_set():
            stop.set()
        main = asyncio.create_task(self.run_forever())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            main.cancel()
            stopper.cancel()
            await asyncio.gather(main, stopper, return_exceptions=True)
        if not main.cancelled() and (failure := main.exception()) is not None:
            raise failure

    async def run_forever(self) -> None:
        """Register if needed, then heartbeat until cancelled (closing the channel)."""
        first = True
        try:
            while True:
                identity = await self.ensure_registered()
                if first and self.start_jitter > 0:
                    await self.clock.sleep(float(self.rng.uniform(0.0, self.start_jitter)))
                first = False
                self._next_beat = self.clock.monotonic()
                try:
                    await self._heartbeat_loop(identity)
                except IdentityRejected as exc:
                    if self._owner is None and not self.owner_api_key:
                        raise AgentError(
                            f"the coordinator no longer accepts device {identity.device_id} "
                            f"({exc}); run the agent with the owner's API key to register again"
                        ) from None
                    log.warning(
                        "device %s was rejected (%s); registering again", identity.device_id, exc
                    )
                    self.identities.save(identity.with_key(None))
        finally:
            self.via = None
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._close_http()

    # --- registration --------------------------------------------------------------------------

    async def ensure_registered(self) -> DeviceIdentity:
        """The saved identity if it is registered; otherwise register now (owner key needed)."""
        identity = self.identities.load()
        if identity is not None and identity.registered:
            if self.identity is None:
                log.info("device %s: reusing its registration", identity.device_id)
            self.identity = identity
            return identity
        if self._owner is None and not self.owner_api_key:
            raise AgentError(
                "this device is not registered yet: give the owner's API key once (--api-key)"
            )
        return await _limited(self._register_limit, self._register_now(identity))

    async def _register_now(self, identity: DeviceIdentity | None) -> DeviceIdentity:
        if identity is None:
            identity = DeviceIdentity.generate(self.coordinator_url)
            self.identities.save(identity)
        self.identity = identity
        started = self.clock.monotonic()
        body = registration(identity, self.device.spec(), self.device.reading())
        registered = await self._register_with_retries(identity, body)
        identity = identity.with_key(registered.device_key, self.coordinator_url)
        self.identities.save(identity)
        self.identity = identity
        self.registrations += 1
        self.recorder.registered(self.clock.monotonic() - started)
        log.info("device %s registered with %s", identity.device_id, self.coordinator_url)
        return identity

    async def _register_with_retries(
        self, identity: DeviceIdentity, body: DeviceRegistration
    ) -> DeviceRegistered:
        backoff = Backoff(rng=self.rng)
        took_over = False
        while True:
            try:
                return await self._register(body)
            except FogApiError as exc:
                if exc.status == 409 and not took_over:
                    # registered before, but the device key was never saved: start over
                    took_over = True
                    await self._deregister(identity.device_id)
                    continue
                if exc.status not in _TRANSIENT_STATUS:
                    self.recorder.error("register")
                    raise AgentError(f"registration refused: {exc}") from None
                failure = str(exc)
            except (httpx.TransportError, OSError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            self.errors += 1
            self.recorder.error("register")
            delay = backoff.next()
            log.warning("registration failed (%s); retrying in %.1f s", failure, delay)
            await self.clock.sleep(delay)

    async def _register(self, body: DeviceRegistration) -> DeviceRegistered:
        if self._owner is not None:
            return await self._owner.register_device(body)
        async with self._owner_client() as owner:
            return await owner.register_device(body)

    def _owner_client(self) -> FogClient:
        return FogClient(self.coordinator_url, self.owner_api_key, transport=http_transport())

    async def _deregister(self, device_id: str) -> None:
        try:
            if self._owner is not None:
                await self._owner.deregister_device(device_id)
                return
            async with self._owner_client() as owner:
                await owner.deregister_device(device_id)
        except FogApiError as exc:
            if exc.status != 404:
                raise

    # --- heartbeats ----------------------------------------------------------------------------

    def channel_url(self, device_id: str) -> str:
        return self._channel_override or channel_url(self.coordinator_url, device_id)

    async def _heartbeat_loop(self, identity: DeviceIdentity) -> None:
        while True:
            ws = await self._open(identity)
            if ws is None:
                await self._http_until(self.clock.monotonic() + self.backoff.next(), identity)
                continue
            await self._close_http()
            self.recorder.channel(True)
            answered = self.heartbeats
            try:
                await self._session(ws)
            except (WebSocketException, OSError, ChannelStalled) as exc:
                log.info("channel of %s lost (%s); reconnecting", identity.device_id, exc)
            finally:
                self._pending = None
                self.recorder.channel(False)
                with contextlib.suppress(Exception):
                    await ws.close()
            if self.heartbeats > answered:  # it worked: start the back-off over
                self.backoff.reset()
            self.reconnects += 1
            self.recorder.reconnect()
            # a jittered pause, so a restarted coordinator is not stormed by every agent at once
            await self._http_until(self.clock.monotonic() + self.backoff.next(), identity)

    async def _open(self, identity: DeviceIdentity) -> ClientConnection | None:
        url = self.channel_url(identity.device_id)
        tls: dict[str, Any] = {"ssl": default_ssl_context()} if url.startswith("wss://") else {}
        try:
            ws = await _limited(
                self._connect_limit,
                connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {identity.device_key}"},
                    user_agent_header=f"fogcoord-agent/{__version__}",
                    compression=None,
                    open_timeout=self.open_timeout,
                    ping_interval=None,  # heartbeats and their answers prove liveness
                    close_timeout=2.0,
                    max_size=MAX_FRAME_BYTES,
                    **tls,
                ),
            )
        except (WebSocketException, OSError, TimeoutError) as exc:
            self.errors += 1
            self.recorder.error("connect")
            if self.via != "http":
                log.info("channel unavailable (%s); heartbeats go over HTTP", exc)
            return None
        if self.via != "channel":
            log.info("device %s: channel open", identity.device_id)
        self.via = "channel"
        return ws

    def _advance_beat(self, now: float) -> None:
        self._next_beat += self.interval
        if self._next_beat <= now:
            self._next_beat = now + self.interval

    async def _session(self, ws: ClientConnection) -> None:
        # Every frame the agent sends is answered in order by one frame (``health`` or ``error``);
        # ``pending`` holds (sent at, is heartbeat) of the frames not answered yet.
        pending: deque[tuple[float, bool]] = deque()
        self._pending = pending
        clock = self.clock
        while True:
            now = clock.monotonic()
            if now >= self._next_beat:
                beat = self.device.reading()
                await ws.send(json.dumps({"type": "heartbeat", **beat.model_dump()}))
                pending.append((now, True))
                self._advance_beat(now)
            oldest = next((t for t, is_beat in pending if is_beat), None)
            deadline = self._next_beat
            if oldest is not None:
                deadline = min(deadline, oldest + self.reply_timeout)
            try:
                async with clock.timeout(max(0.0, deadline - now)):
                    raw = await ws.recv()
            except TimeoutError:
                if oldest is not None and clock.monotonic() - oldest >= self.reply_timeout:
                    self.errors += 1
                    self.recorder.error("heartbeat")
                    raise ChannelStalled(f"no answer for {self.reply_timeout:g} s") from None
                continue
            self._on_message(raw, pending, ws)

    def _on_message(
        self, raw: str | bytes, pending: deque[tuple[float, bool]], ws: ClientConnection
    ) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.errors += 1
            self.recorder.error("protocol")
            log.warning("ignoring a channel frame that is not a JSON object")
            return
        kind = message.get("type")
        if kind == "health":
            # answers the oldest heartbeat (frames before it evidently needed no answer)
            while pending:
                sent_at, is_beat = pending.popleft()
                if is_beat:
                    latency = self.clock.monotonic() - sent_at
                    self.heartbeats += 1
                    self.recorder.heartbeat(latency, "channel")
                    log.debug(
                        "heartbeat answered in %.1f ms: %s", latency * 1e3, message.get("state")
                    )
                    break
            self._keep_health(message)
        elif kind == "error":
            is_beat = pending.popleft()[1] if pending else True
            self.errors += 1
            self.recorder.error("heartbeat" if is_beat else "reply")
            code = message.get("error")
            if is_beat and code in _IDENTITY_ERRORS:
                raise IdentityRejected(f"channel: {code}")
            what = "a heartbeat" if is_beat else "a reply"
            log.warning("the coordinator refused %s: %s", what, message.get("detail", message))
        else:
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                log.info("ignoring a pushed %r message: no handler for it", kind)
                return
            task = asyncio.get_running_loop().create_task(self._handle(handler, message, ws))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, handler: Handler, message: Message, ws: ClientConnection) -> None:
        try:
            reply = await handler(message)
            if reply is not None and self._pending is not None:
                self._pending.append((self.clock.monotonic(), False))
                await ws.send(json.dumps(reply))
        except asyncio.CancelledError:
            raise
        except WebSocketException as exc:
            log.info("could not send the reply to a %r message: %s", message.get("type"), exc)
        except Exception:
            self.errors += 1
            self.recorder.error("handler")
            log.exception("handler for %r messages failed", message.get("type"))

    def _keep_health(self, message: dict[str, Any]) -> None:
        try:
            self.last_health = DeviceHealth.model_validate(
                {k: v for k, v in message.items() if k != "type"}
            )
        except ValidationError:
            log.debug("unexpected health message: %s", message)

    async def _http_until(self, until: float, identity: DeviceIdentity) -> None:
        """Heartbeat over HTTP at the usual pace until ``until`` (monotonic seconds)."""
        while True:
            now = self.clock.monotonic()
            if now >= until:
                return
            if now >= self._next_beat:
                self._advance_beat(now)
                await self._http_beat(identity)
                continue
            await self.clock.sleep(min(self._next_beat, until) - now)

    async def _http_beat(self, identity: DeviceIdentity) -> None:
        if self._http is None:
            self._http = FogClient(
                self.coordinator_url,
                identity.device_key,
                timeout=min(30.0, self.reply_timeout),
                transport=http_transport(1),
            )
        started = self.clock.monotonic()
        try:
            health = await self._http.heartbeat(identity.device_id, self.device.reading())
        except FogApiError as exc:
            if exc.status in (401, 403, 404):
                raise IdentityRejected(f"{exc.status} {exc.code}") from None
            failure = str(exc)
        except (httpx.TransportError, OSError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if self.via != "http":
                log.info("device %s: heartbeats over HTTP", identity.device_id)
            self.via = "http"
            self.heartbeats += 1
            self.last_health = health
            latency = self.clock.monotonic() - started
            self.recorder.heartbeat(latency, "http")
            log.debug("HTTP heartbeat answered in %.1f ms: %s", latency * 1e3, health.state)
            return
        self.errors += 1
        self.recorder.error("heartbeat")
        log.warning("HTTP heartbeat failed: %s", failure)

    async def _close_http(self) -> None:
        if self._http is not None:
            client, self._http = self._http, None
            await client.close()
