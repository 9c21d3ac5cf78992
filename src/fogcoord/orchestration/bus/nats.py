"""The distributed event bus on NATS, with JetStream for durable events.

Subjects come from the event type and the configured prefix::

    {prefix}.evt.{event_type}                    broadcast (plain subscription: every subscriber)
    {prefix}.route.{target}.{event_type}         route (queue subscription, group = target)
    {prefix}.durable.evt.{event_type}            durable broadcast (JetStream)
    {prefix}.durable.route.{target}.{event_type} durable route (JetStream)

Subscribing to :class:`ServiceEvent` itself uses ``>`` for the event-type part and so receives
every type. Incoming messages are decoded and handed to a local :class:`SubscriberQueue` per
subscription, so ordering, back-pressure, retries and dead letters are those of the in-process bus.

Durable events (``event.durable``) are stored in the stream ``{PREFIX}_DURABLE`` (subjects
``{prefix}.durable.>``), published with the ``Nats-Msg-Id`` header set to ``event.event_id`` so
JetStream drops a re-published copy inside its duplicate window. They are consumed through durable
push consumers with explicit acks, acked only after the handler succeeded (or terminated after the
event was dead-lettered), and a subscription ignores a redelivery of an event it already holds or
has finished. Consumers are named after the subscription (broadcast: one per subscription name and
event type, so two processes subscribing under the same name share it) or the group (route: one
per group and event type, delivered to one member through a deliver group). A durable broadcast
consumer starts with the events published after it was created; a route consumer starts at the
beginning of the stream, so events routed to a group before any member subscribed are delivered to
the first member, as the in-process bus parks them.

Known differences from the in-process bus: a non-durable ``route`` to a group with no member is
silently dropped by NATS (``unroutable`` is not counted); a group mixing a ``ServiceEvent``
wildcard member with typed members receives a durable routed event once per JetStream consumer;
``drain`` can only wait for what reaches this connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from fogcoord.clock import Clock, SystemClock
from fogcoord.config import BusConfig, MessagingConfig
from fogcoord.contracts.errors import BusClosed, ValidationFailed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.orchestration.bus.codec import Codec, codec_for
from fogcoord.orchestration.bus.dedup import DEFAULT_WINDOW_S
from fogcoord.orchestration.bus.protocol import BusStats, DeadLetter, E, Handler
from fogcoord.orchestration.bus.subscriber import SubscriberQueue

_log = logging.getLogger(__name__)

ANY = ServiceEvent.event_type
"""Subscribing to ``ServiceEvent`` itself receives every event type."""

MSG_ID_HEADER = "Nats-Msg-Id"

_NAME_TOKEN = re.compile(r"^[^\s.*>]+$")
"""A target or group is one subject token: no dots, wildcards or whitespace."""
_TYPE_TOKENS = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
"""An event type may be dotted, but holds no wildcard or whitespace."""
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")

_DRAIN_POLL_S = 0.005
_STREAM_CREATE_ATTEMPTS = 5
_RECENT_IDS = 10_000

MsgCallback = Callable[[Any], Awaitable[None]]


def _check_name(value: str, what: str) -> str:
    if not _NAME_TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be one NATS subject token (no '.', '*', '>')")
    return value


def _check_type(value: str) -> str:
    if not _TYPE_TOKENS.match(value):
        raise ValueError(f"event type {value!r} cannot be used in a NATS subject")
    return value


def _consumer_name(kind: str, owner: str, event_type: str) -> str:
    """A JetStream-safe, stable consumer name for ``owner`` (a subscription or a group)."""
    digest = hashlib.sha256(f"{owner}\0{event_type}".encode()).hexdigest()[:12]
    readable = _UNSAFE_NAME_CHARS.sub("_", f"{owner}_{event_type}")[:48]
    return f"{kind}_{readable}_{digest}"


class _RecentIds:
    """The last ``size`` event ids a subscription finished, to ignore JetStream redeliveries."""

    def __init__(self, size: int = _RECENT_IDS) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)


class _Sub:
    """One subscription: NATS subscriptions feeding one local :class:`SubscriberQueue`."""

    def __init__(self, bus: NatsEventBus, queue: SubscriberQueue) -> None:
        self._bus = bus
        self.queue = queue
        self.nats_subs: list[Any] = []
        self.consumers: list[str] = []
        self.in_callback = 0
        self.in_flight: set[str] = set()
        self.finished = _RecentIds()

    @property
    def name(self) -> str:
        return self.queue.name

    async def unsubscribe(self) -> None:
        await self._bus._remove(self)

    def pending_in_client(self) -> int:
        """Messages nats-py received for this subscription but not yet handed to the queue."""
        pending = self.in_callback
        for ns in self.nats_subs:
            pending += int(ns.pending_msgs)
        return pending

    async def ack(self, token: Any, ok: bool) -> None:
        """The queue's ack hook: ack a durable message once handled, terminate if dead-lettered."""
        if token is None:
            return
        msg, event_id = cast(tuple[Any, str], token)
        try:
            if ok:
                await msg.ack()
            else:
                await msg.term()
        except nats.errors.Error as exc:
            _log.warning("subscriber %s: could not ack %s: %r", self.name, event_id, exc)
        finally:
            self.in_flight.discard(event_id)
            self.finished.add(event_id)


class NatsEventBus:
    """:class:`~fogcoord.orchestration.bus.protocol.EventBus` over NATS and JetStream."""

    def __init__(
        self,
        *,
        url: str,
        subject_prefix: str = "fog",
        encoding: str = "json",
        max_queue_size: int = 1000,
        retry_backoff_ms: float = 500,
        max_delivery_attempts: int = 3,
        clock: Clock | None = None,
        connection_name: str = "fogcoord",
        ack_wait_s: float = 60.0,
        duplicate_window_s: float = DEFAULT_WINDOW_S,
        request_timeout_s: float = 5.0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", subject_prefix):
            raise ValueError(f"subject_prefix {subject_prefix!r} must match [A-Za-z0-9_-]+")
        self._url = url
        self._prefix = subject_prefix
        self._codec: Codec = codec_for(encoding)
        self._clock = clock or SystemClock()
        self._max_queue = max_queue_size
        self._backoff_s = retry_backoff_ms / 1000.0
        self._max_attempts = max_delivery_attempts
        self._connection_name = connection_name
        self._ack_wait_s = ack_wait_s
        self._duplicate_window_s = duplicate_window_s
        self._timeout_s = request_timeout_s
        self.stream_name = f"{subject_prefix.upper()}_DURABLE"
        self._nc: Any = None
        self._js: Any = None
        self._barrier_subject = f"{subject_prefix}.barrier.{uuid.uuid4().hex}"
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._start_lock = asyncio.Lock()
        self._subs: list[_Sub] = []
        self._dead: list[DeadLetter] = []
        self._closed = False
        self._published = 0
        self._routed = 0
        self._duplicates = 0
        self._redeliveries_ignored = 0
        self._undecodable = 0

    @classmethod
    def from_config(
        cls, bus: BusConfig, messaging: MessagingConfig, *, clock: Clock | None = None
    ) -> NatsEventBus:
        """The bus ``bus.url`` / ``bus.subject_prefix`` and ``orchestration.messaging`` describe."""
        return cls(
            url=bus.url,
            subject_prefix=bus.subject_prefix,
            encoding=messaging.encoding,
            max_queue_size=messaging.max_queue_size,
            retry_backoff_ms=messaging.retry_backoff_ms,
            max_delivery_attempts=messaging.max_delivery_attempts,
            clock=clock,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def subject_prefix(self) -> str:
        return self._prefix

    async def start(self) -> None:
        """Connect and create the durable stream if it is missing (also re-opens a closed bus)."""
        async with self._start_lock:
            self._closed = False
            if self._nc is not None:
                return
            nc: Any = await nats.connect(
                servers=[self._url],
                name=self._connection_name,
                connect_timeout=max(1, int(self._timeout_s)),
                error_cb=self._on_error,
            )
            js: Any = nc.jetstream(timeout=self._timeout_s)
            try:
                await self._ensure_stream(js)
                await nc.subscribe(self._barrier_subject, cb=self._on_barrier)
            except BaseException:
                await nc.close()
                raise
            self._nc, self._js = nc, js

    async def _ensure_stream(self, js: Any) -> None:
        try:
            await js.stream_info(self.stream_name)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = api.StreamConfig(
            name=self.stream_name,
            subjects=[f"{self._prefix}.durable.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=self._duplicate_window_s,
        )
        for attempt in range(1, _STREAM_CREATE_ATTEMPTS + 1):
            try:
                await js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:
                # Another process created it at the same moment: use theirs.
                await js.stream_info(self.stream_name)
                return
            except nats.js.errors.ServerError as exc:
                # nats-server 2.9 can fail a create with "error creating store for stream" while
                # another stream of the account is being deleted (it removes the shared
                # directory): a transient race, so try again shortly.
                if attempt == _STREAM_CREATE_ATTEMPTS:
                    raise
                _log.info("nats bus: creating %s failed (%r), retrying", self.stream_name, exc)
                await asyncio.sleep(0.05 * attempt)

    async def _on_barrier(self, msg: Any) -> None:
        fut = self._barriers.pop(bytes(msg.data), None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _barrier(self, nc: Any, timeout: float) -> None:
        """Return once the server has handled everything this connection published before.

        ``nc.flush()`` is not enough: nats-py 2.16 writes its PING straight to the socket, ahead
        of publishes still in its send buffer, so the PONG can come back before they were even
        sent. A message to ourselves queues behind them, and the server delivers to us in order,
        so when it arrives every earlier message for our subscriptions has been received too.
        """
        token = uuid.uuid4().hex.encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = fut
        try:
            await nc.publish(self._barrier_subject, token)
            async with asyncio.timeout(timeout):
                await fut
        finally:
            self._barriers.pop(token, None)

    async def _on_error(self, exc: Exception) -> None:
        _log.warning("nats bus %s: %r", self._prefix, exc)

    async def _connected(self) -> tuple[Any, Any]:
        if self._closed:
            raise BusClosed()
        if self._nc is None:
            await self.start()
        return self._nc, self._js

    async def close(self) -> None:
        """Unsubscribe everything, stop the local queues, close the connection."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await self._remove(sub)
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except (nats.errors.Error, TimeoutError) as exc:
                _log.warning("nats bus %s: drain on close failed: %r", self._prefix, exc)
            finally:
                if not nc.is_closed:
                    await nc.close()

    async def delete_stream(self) -> bool:
        """Delete the durable stream and its consumers (tests; tearing a deployment down).

        Works after :meth:`close` too, on a short-lived connection. False if it did not exist.
        """
        nc: Any = self._nc
        own = nc is None or nc.is_closed
        if own:
            nc = await nats.connect(servers=[self._url], name=f"{self._connection_name}-admin")
        try:
            js: Any = nc.jetstream(timeout=self._timeout_s)
            try:
                return bool(await js.delete_stream(self.stream_name))
            except nats.js.errors.NotFoundError:
                return False
        finally:
            if own:
                await nc.close()

    # --- subjects ----------------------------------------------------------------------------

    def _type_part(self, event_type: str) -> str:
        return ">" if event_type == ANY else _check_type(event_type)

    def broadcast_subject(self, event_type: str, *, durable: bool = False) -> str:
        base = f"{self._prefix}.durable.evt" if durable else f"{self._prefix}.evt"
        return f"{base}.{self._type_part(event_type)}"

    def route_subject(self, target: str, event_type: str, *, durable: bool = False) -> str:
        base = f"{self._prefix}.durable.route" if durable else f"{self._prefix}.route"
        return f"{base}.{_check_name(target, 'target')}.{self._type_part(event_type)}"

    # --- subscribing -------------------------------------------------------------------------

    async def subscribe(
        self,
        event_type: type[E],
        handler: Handler[E],
        *,
        name: str,
        group: str | None = None,
    ) -> _Sub:
        nc, js = await self._connected()
        type_name = event_type.event_type
        self._type_part(type_name)
        if group is not None:
            _check_name(group, "group")
        queue = SubscriberQueue(
            name=name,
            event_type=type_name,
            group=group,
            handler=cast(Handler[Any], handler),
            max_queue_size=self._max_queue,
            retry_backoff_s=self._backoff_s,
            max_attempts=self._max_attempts,
            clock=self._clock,
            on_dead_letter=self._dead.append,
        )
        sub = _Sub(self, queue)
        queue.start(ack=sub.ack)
        wildcard = type_name == ANY
        try:
            if wildcard or not event_type.durable:
                on_core = self._core_callback(sub)
                sub.nats_subs.append(
                    await nc.subscribe(self.broadcast_subject(type_name), cb=on_core)
                )
                if group is not None:
                    sub.nats_subs.append(
                        await nc.subscribe(
                            self.route_subject(group, type_name), queue=group, cb=on_core
                        )
                    )
            if wildcard or event_type.durable:
                on_durable = self._durable_callback(sub)
                consumer = _consumer_name("b", name, type_name)
                await self._bind(
                    sub,
                    consumer,
                    filter_subject=self.broadcast_subject(type_name, durable=True),
                    deliver_group=consumer,
                    deliver_policy=api.DeliverPolicy.NEW,
                    cb=on_durable,
                    js=js,
                )
                if group is not None:
                    await self._bind(
                        sub,
                        _consumer_name("r", group, type_name),
                        filter_subject=self.route_subject(group, type_name, durable=True),
                        deliver_group=group,
                        deliver_policy=api.DeliverPolicy.ALL,
                        cb=on_durable,
                        js=js,
                    )
            # nats-py only buffers the SUB: make sure the server has it before returning, so a
            # publish from another connection right after this call reaches the subscriber.
            await self._barrier(nc, self._timeout_s)
        except BaseException:
            await self._remove(sub)
            raise
        self._subs.append(sub)
        return sub

    async def _bind(
        self,
        sub: _Sub,
        consumer: str,
        *,
        filter_subject: str,
        deliver_group: str,
        deliver_policy: api.DeliverPolicy,
        cb: MsgCallback,
        js: Any,
    ) -> None:
        """Create (or find) a durable push consumer and subscribe to its deliver subject."""
        config = api.ConsumerConfig(
            durable_name=consumer,
            deliver_subject=f"{self._prefix}.deliver.{consumer}",
            deliver_group=deliver_group,
            deliver_policy=deliver_policy,
            filter_subject=filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
        )
        try:
            info: Any = await js.add_consumer(self.stream_name, config)
        except nats.js.errors.BadRequestError:
            # It exists with another configuration (an older deployment): bind to it as it is.
            info = await js.consumer_info(self.stream_name, consumer)
        psub: Any = await js.subscribe_bind(
            stream=self.stream_name,
            config=info.config,
            consumer=info.name,
            cb=cb,
            manual_ack=True,
        )
        sub.nats_subs.append(psub)
        sub.consumers.append(str(info.name))

    def _decode(self, data: bytes, subject: str) -> ServiceEvent | None:
        try:
            return self._codec.decode(data)
        except ValidationFailed as exc:
            self._undecodable += 1
            _log.warning("nats bus: dropped an undecodable message on %s: %s", subject, exc)
            return None

    def _core_callback(self, sub: _Sub) -> MsgCallback:
        async def on_message(msg: Any) -> None:
            sub.in_callback += 1
            try:
                event = self._decode(msg.data, msg.subject)
                if event is not None:
                    await sub.queue.put(event)
            finally:
                sub.in_callback -= 1

        return on_message

    def _durable_callback(self, sub: _Sub) -> MsgCallback:
        async def on_message(msg: Any) -> None:
            sub.in_callback += 1
            try:
                event = self._decode(msg.data, msg.subject)
                if event is None:
                    await msg.term()
                    return
                event_id = event.event_id
                if event_id in sub.in_flight:
                    # Redelivered (ack_wait passed) while still queued here: the first copy acks.
                    self._redeliveries_ignored += 1
                    return
                if event_id in sub.finished:
                    self._redeliveries_ignored += 1
                    await msg.ack()
                    return
                sub.in_flight.add(event_id)
                if not await sub.queue.put(event, (msg, event_id)):
                    sub.in_flight.discard(event_id)
            finally:
                sub.in_callback -= 1

        return on_message

    async def _remove(self, sub: _Sub) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        nats_subs, sub.nats_subs = sub.nats_subs, []
        sub.consumers = []
        for ns in nats_subs:
            try:
                await ns.unsubscribe()
            except nats.errors.Error as exc:
                _log.debug("nats bus: unsubscribe %s: %r", sub.name, exc)
        await sub.queue.stop()

    # --- publishing --------------------------------------------------------------------------

    async def broadcast(self, event: ServiceEvent) -> None:
        nc, js = await self._connected()
        data = self._codec.encode(event)
        if event.durable:
            subject = self.broadcast_subject(event.event_type, durable=True)
            if await self._publish_durable(js, subject, data, event):
                self._published += 1
            return
        await nc.publish(self.broadcast_subject(event.event_type), data)
        self._published += 1

    async def route(self, event: ServiceEvent) -> None:
        if event.target is None:
            raise ValueError("route_event needs event.target: the service to deliver to")
        nc, js = await self._connected()
        data = self._codec.encode(event)
        if event.durable:
            subject = self.route_subject(event.target, event.event_type, durable=True)
            if await self._publish_durable(js, subject, data, event):
                self._routed += 1
            return
        await nc.publish(self.route_subject(event.target, event.event_type), data)
        self._routed += 1

    async def _publish_durable(
        self, js: Any, subject: str, data: bytes, event: ServiceEvent
    ) -> bool:
        """Store a durable event; False when JetStream dropped it as a duplicate."""
        ack: Any = await js.publish(
            subject,
            data,
            stream=self.stream_name,
            headers={MSG_ID_HEADER: event.event_id},
        )
        if ack.duplicate:
            self._duplicates += 1
            return False
        return True

    # --- waiting and reporting ---------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Wait until what was published so far is handled here, or ``timeout`` passes.

        Sends a barrier through the connection (so the server has processed every publish and
        sent us what matches our subscriptions), waits for nats-py's pending messages and the local
        queues, and for the durable consumers of our subscriptions to have nothing pending or
        unacknowledged.
        """
        nc = self._nc
        if nc is None or self._closed:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return False
                await self._barrier(nc, left)
                if await self._settled(deadline):
                    return True
                await asyncio.sleep(min(_DRAIN_POLL_S, max(0.0, deadline - loop.time())))
        except (TimeoutError, nats.errors.Error) as exc:
            _log.debug("nats bus: drain stopped: %r", exc)
            return False

    def _idle_locally(self) -> bool:
        return all(s.pending_in_client() == 0 and len(s.queue) == 0 for s in self._subs)

    async def _settled(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        if any(s.pending_in_client() for s in self._subs):
            return False
        for sub in list(self._subs):
            if not await sub.queue.join(max(0.0, deadline - loop.time())):
                return False
        js = self._js
        for sub in list(self._subs):
            for consumer in list(sub.consumers):
                info: Any = await js.consumer_info(
                    self.stream_name, consumer, timeout=max(0.001, deadline - loop.time())
                )
                if int(info.num_pending) or int(info.num_ack_pending):
                    return False
        return self._idle_locally()

    def dead_letters(self) -> list[DeadLetter]:
        return list(self._dead)

    def stats(self) -> BusStats:
        return BusStats(
            published=self._published,
            routed=self._routed,
            duplicates_dropped=self._duplicates,
            dead_letters=len(self._dead),
            subscribers=tuple(s.queue.stats() for s in self._subs),
        )

    @property
    def redeliveries_ignored(self) -> int:
        """JetStream redeliveries of events a subscription already held or had finished."""
        return self._redeliveries_ignored

    @property
    def undecodable(self) -> int:
        """Messages dropped because they could not be decoded into a registered event."""
        return self._undecodable
