"""The onion proxy: builds circuits hop by hop and opens streams over them (tor-spec 5.3, 6).

A circuit is built *telescopically*: the client sends CREATE2 with an ntor handshake to the
first relay, and then, for each further relay, an EXTEND2 (inside RELAY_EARLY) addressed to the
current last hop, which forwards the handshake as CREATE2 and returns the answer as EXTENDED2.
Each handshake is end to end between the client and that relay, so relay *k* learns only that
relay *k-1* asked for a circuit and, if asked to extend, which relay comes next. The client
ends up with one :class:`~fogcoord.onion.relaycrypto.HopCrypto` per hop and wraps every cell
in all of them.

The client sends EXTEND2 only in RELAY_EARLY cells, as it must, and also sends its first cells
beyond the first hop as RELAY_EARLY (up to eight in all, section 5.6), so that a relay cannot
tell a circuit's length from where RELAY_EARLY stops.

Streams (:meth:`Circuit.open_stream`) go to the last hop. When the circuit dies -- DESTROY, a
link that drops, a cell no hop recognises -- every stream's pending and later calls raise
:class:`~fogcoord.onion.streams.CircuitClosed`, and the client can build a new circuit at once.

Hooks for protocols layered on circuits (hidden services): :meth:`Circuit.send_relay`,
:meth:`Circuit.on_relay`, :meth:`Circuit.wait_relay`, :meth:`Circuit.add_virtual_hop` and the
``begin_handler`` attribute for incoming RELAY_BEGIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence

from fogcoord.onion.cells import (
    Cell,
    CellCommand,
    CellError,
    DestroyReason,
    EndReason,
    Extend2,
    RelayCell,
    RelayCommand,
    begin_body,
    create2_payload,
    destroy_payload,
    parse_created2,
    parse_destroy,
)
from fogcoord.onion.directory import Consensus, RelayInfo, select_path
from fogcoord.onion.link import Link, open_link
from fogcoord.onion.ntor import CircuitKeys, HandshakeError, client_start
from fogcoord.onion.relay import MAX_RELAY_EARLY
from fogcoord.onion.relaycrypto import HopCrypto, OriginCrypto, RelayCryptoError
from fogcoord.onion.streams import CircuitClosed, CircuitEnd, OnionError, Stream, StreamClosed

log = logging.getLogger(__name__)

RelayCallback = Callable[[int, RelayCell], None]
"""``callback(hop, cell)`` for relay cells of a registered command."""


class _ClientLink:
    """A link from the client to a first hop, shared by the circuits through that relay."""

    def __init__(self, client: OnionClient, key: tuple[str, int], link: Link) -> None:
        self.client = client
        self.key = key
        self.link = link
        self.task: asyncio.Task[None] = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await self.link.run(self._on_cell, lambda _err: None)
        finally:
            self.link.close()
            if self.client._links.get(self.key) is self:
                del self.client._links[self.key]
            for circuit in list(self.link.circuits.values()):
                circuit._closed_by(CircuitClosed(DestroyReason.CHANNEL_CLOSED, "the link dropped"))

    def _on_cell(self, cell: Cell) -> None:
        circuit = self.link.circuits.get(cell.circ_id)
        if circuit is None:
            return
        try:
            circuit._on_cell(cell)
        except Exception:
            # a failing user callback costs its circuit, never the link's other circuits
            log.exception("onion client: error handling a cell on circuit %#x", cell.circ_id)
            circuit.violation("internal error")


class Circuit(CircuitEnd):
    """A circuit built by :class:`OnionClient`; streams go to its last hop."""

    def __init__(self, client: OnionClient, link: _ClientLink, timeout: float) -> None:
        super().__init__()
        self.client = client
        self._link = link
        self.circ_id = link.link.new_circ_id()
        self.timeout = timeout
        self.path: list[RelayInfo] = []
        self.crypto = OriginCrypto()
        self.closed = False
        self._early_left = MAX_RELAY_EARLY
        self._created: asyncio.Future[bytes] | None = None
        self._waiters: dict[int, deque[asyncio.Future[tuple[int, RelayCell]]]] = {}
        self._callbacks: dict[int, RelayCallback] = {}
        self._next_stream = random.randrange(1, 0xFFFF)
        link.link.circuits[self.circ_id] = self

    # -- public -------------------------------------------------------------------------------

    @property
    def hops(self) -> int:
        """Layers of encryption: the relays of the path plus any virtual hops."""
        return len(self.crypto.hops)

    async def open_stream(self, host: str, port: int, *, timeout: float | None = None) -> Stream:
        """Open a stream to ``host:port`` from the last hop; :class:`StreamClosed` if refused."""
        self._check_open()
        stream_id = self._new_stream_id()
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.emit(RelayCell(RelayCommand.BEGIN, stream_id, begin_body(host, port)))
        try:
            await stream.wait_connected(timeout or self.timeout)
        except TimeoutError:
            stream.close_now(EndReason.MISC)
            raise StreamClosed(EndReason.TIMEOUT, f"no answer to BEGIN {host}:{port}") from None
        return stream

    async def close(self) -> None:
        """Tear the circuit down with DESTROY (reason NONE, as an origin always sends)."""
        if self.closed:
            return
        self._link.link.send(Cell(self.circ_id, CellCommand.DESTROY, destroy_payload(0)))
        self._closed_by(CircuitClosed(DestroyReason.NONE, "closed by the client"))

    def send_relay(
        self, command: int, data: bytes = b"", *, stream_id: int = 0, hop: int | None = None
    ) -> None:
        """Send a relay cell to ``hop`` (default: the last)."""
        self._send(RelayCell(command, stream_id, data), self.hops - 1 if hop is None else hop)

    def on_relay(self, command: int, callback: RelayCallback) -> None:
        """Call ``callback(hop, cell)`` for every relay cell with ``command``."""
        self._callbacks[command] = callback

    def expect_relay(self, command: int) -> asyncio.Future[tuple[int, RelayCell]]:
        """A future for the next relay cell with ``command``, registered before this returns,
        so a request sent right after cannot have its answer arrive unseen."""
        return self._expect(command)

    async def wait_relay(self, command: int, *, timeout: float | None = None) -> RelayCell:
        """The next relay cell with ``command`` (from any hop)."""
        _hop, cell = await asyncio.wait_for(self._expect(command), timeout or self.timeout)
        return cell

    def add_virtual_hop(self, keys: CircuitKeys, *, reverse: bool = False) -> None:
        """Add an end-to-end layer beyond the last relay (e.g. a rendezvous with a service).

        ``reverse=True`` for the responder's side of the handshake. Streams then go to it.
        Call before opening streams: circuit windows belong to the last hop.
        """
        self.crypto.add_hop(HopCrypto(keys, reverse=reverse))

    # -- CircuitEnd ---------------------------------------------------------------------------

    def emit(self, cell: RelayCell) -> bytes:
        return self._send(cell, self.hops - 1)

    def violation(self, why: str) -> None:
        if self.closed:
            return
        self._link.link.send(Cell(self.circ_id, CellCommand.DESTROY, destroy_payload(0)))
        self._closed_by(CircuitClosed(DestroyReason.PROTOCOL, why))

    # -- building -----------------------------------------------------------------------------

    async def _build(self, path: Sequence[RelayInfo]) -> None:
        first, *rest = path
        handshake = client_start(first.node_id, first.onion_key_bytes)
        loop = asyncio.get_running_loop()
        self._created = loop.create_future()
        self._link.link.send(
            Cell(self.circ_id, CellCommand.CREATE2, create2_payload(handshake.onionskin))
        )
        reply = await asyncio.wait_for(self._created, self.timeout)
        self.crypto.add_hop(HopCrypto(handshake.complete(reply)))
        self.path.append(first)
        for relay in rest:
            await self._extend(relay)

    async def _extend(self, relay: RelayInfo) -> None:
        handshake = client_start(relay.node_id, relay.onion_key_bytes)
        body = Extend2(
            relay.address,
            relay.port,
            handshake.onionskin,
            node_id=relay.node_id,
            ed25519_id=relay.ed25519_bytes,
        ).encode()
        waiter = self._expect(RelayCommand.EXTENDED2)
        last = self.hops - 1
        self._send(RelayCell(RelayCommand.EXTEND2, 0, body), last, extend=True)
        hop, cell = await asyncio.wait_for(waiter, self.timeout)
        if hop != last:
            self.violation("EXTENDED2 from the wrong hop")
            self._check_open()
        self.crypto.add_hop(HopCrypto(handshake.complete(parse_created2(cell.data))))
        self.path.append(relay)

    # -- plumbing -----------------------------------------------------------------------------

    def _send(self, cell: RelayCell, hop: int, *, extend: bool = False) -> bytes:
        self._check_open()
        payload, digest = self.crypto.encrypt(cell, hop)
        early = self._early_left > 0 and (extend or hop > 0)
        if extend and not early:
            raise CircuitClosed(DestroyReason.RESOURCELIMIT, "no RELAY_EARLY cells left to extend")
        if early:
            self._early_left -= 1
        command = CellCommand.RELAY_EARLY if early else CellCommand.RELAY
        self._link.link.send(Cell(self.circ_id, command, payload))
        return digest

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise CircuitClosed(DestroyReason.NONE, "the circuit is closed")

    def _expect(self, command: int) -> asyncio.Future[tuple[int, RelayCell]]:
        self._check_open()
        future: asyncio.Future[tuple[int, RelayCell]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command, deque()).append(future)
        return future

    def _new_stream_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_stream = self._next_stream % 0xFFFF + 1
            if self._next_stream not in self.streams:
                return self._next_stream
        raise StreamClosed(EndReason.RESOURCELIMIT, "no free stream id on this circuit")

    def _on_cell(self, cell: Cell) -> None:
        if self.closed:
            return
        command = cell.command
        if command == CellCommand.RELAY:
            self._on_relay(cell.payload)
        elif command == CellCommand.DESTROY:
            reason = parse_destroy(cell.payload)
            self._closed_by(CircuitClosed(reason, "destroyed by the network"))
        elif command == CellCommand.CREATED2:
            if self._created is None or self._created.done():
                self.violation("unexpected CREATED2")
                return
            try:
                self._created.set_result(parse_created2(cell.payload))
            except CellError as exc:
                self.violation(str(exc))
        elif command == CellCommand.RELAY_EARLY:
            self.violation("RELAY_EARLY towards the origin")

    def _on_relay(self, payload: bytes) -> None:
        try:
            hop, rc, digest = self.crypto.decrypt(payload)
        except (RelayCryptoError, CellError) as exc:
            self.violation(str(exc))
            return
        if hop == self.hops - 1 and self.handle(rc, digest):
            return
        callback = self._callbacks.get(rc.command)
        if callback is not None:
            callback(hop, rc)
            return
        waiters = self._waiters.get(rc.command)
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result((hop, rc))
                return
        if rc.command == RelayCommand.TRUNCATED:
            # The rest of the circuit is gone; a shorter circuit is not what the user asked for.
            self.violation("the circuit was truncated")
        # other cells (DROP, unknown commands) are dropped (section 6.1)

    def _closed_by(self, error: CircuitClosed) -> None:
        if self.closed:
            return
        self.closed = True
        self._link.link.circuits.pop(self.circ_id, None)
        self.client._circuits.discard(self)
        self.close_end(error)
        if self._created is not None and not self._created.done():
            self._created.set_exception(error)
            self._created.exception()
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(error)
                    future.exception()
        self._waiters.clear()


class OnionClient:
    """Builds circuits through relays listed in a (verified) consensus."""

    def __init__(
        self,
        consensus: Consensus,
        *,
        local_address: str | None = None,
        timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.consensus = consensus
        self.local_address = local_address
        """Source address for links to first hops (what the entry relay sees)."""
        self.timeout = timeout
        self.rng = rng or random.SystemRandom()
        self._links: dict[tuple[str, int], _ClientLink] = {}
        self._circuits: set[Circuit] = set()

    def select_path(self, length: int = 3, *, exit_port: int | None = None) -> list[RelayInfo]:
        return select_path(self.consensus, length, rng=self.rng, exit_port=exit_port)

    async def build_circuit(
        self,
        path: Sequence[RelayInfo] | None = None,
        *,
        length: int = 3,
        exit_port: int | None = None,
    ) -> Circuit:
        """A circuit through ``path`` (entry first), or through a fresh :meth:`select_path`.

        Raises :class:`CircuitClosed` when a hop refuses, cannot be reached, or times out.
        """
        if path is None:
            path = self.select_path(length, exit_port=exit_port)
        if not path:
            raise ValueError("a circuit needs at least one relay")
        if len(path) > MAX_RELAY_EARLY + 1:
            raise ValueError(f"a circuit has at most {MAX_RELAY_EARLY + 1} hops")
        link = await self._link_to(path[0])
        circuit = Circuit(self, link, self.timeout)
        self._circuits.add(circuit)
        try:
            await circuit._build(path)
        except BaseException as exc:
            with contextlib.suppress(OnionError):
                await circuit.close()
            self._circuits.discard(circuit)
            if isinstance(exc, TimeoutError):
                raise CircuitClosed(DestroyReason.TIMEOUT, "construction timed out") from exc
            if isinstance(exc, HandshakeError | CellError):
                raise CircuitClosed(DestroyReason.PROTOCOL, str(exc)) from exc
            raise
        return circuit

    async def _link_to(self, relay: RelayInfo) -> _ClientLink:
        key = (relay.address, relay.port)
        existing = self._links.get(key)
        if existing is not None and not existing.link.closed:
            return existing
        try:
            link = await open_link(
                relay.address, relay.port, local_host=self.local_address, timeout=self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise CircuitClosed(
                DestroyReason.CONNECTFAILED, f"cannot reach {relay.address}:{relay.port}: {exc}"
            ) from exc
        client_link = _ClientLink(self, key, link)
        self._links[key] = client_link
        return client_link

    async def close(self) -> None:
        for circuit in list(self._circuits):
            with contextlib.suppress(OnionError):
                await circuit.close()
        self._circuits.clear()
        links = list(self._links.values())
        self._links.clear()
        for client_link in links:
            client_link.link.close()
            client_link.task.cancel()
        await asyncio.gather(*(cl.task for cl in links), return_exceptions=True)

    async def __aenter__(self) -> OnionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["Circuit", "OnionClient", "RelayCallback"]
