"""An onion router: accepts links, builds its hop of circuits, relays cells, serves as an exit.

What one relay does with each cell (tor-spec sections 5 and 6):

* **CREATE2** from a neighbour: answer the ntor handshake with its onion key, remember the
  circuit's keys, reply **CREATED2**. A bad handshake gets DESTROY (PROTOCOL).
* **RELAY / RELAY_EARLY** from the origin's side: remove this hop's AES layer. If the plaintext
  is *recognised* (``recognized == 0`` and the running digest matches) the cell is for this
  relay; otherwise it goes on, unchanged, to the next hop. At the last hop an unrecognised cell
  means tampering: DESTROY (PROTOCOL).
* **RELAY** from the far side: add this hop's backward layer and pass it towards the origin.
  A RELAY_EARLY in that direction is a violation (section 5.6).
* **EXTEND2** (recognised, and only inside RELAY_EARLY): open or reuse a link to the named
  relay, send CREATE2 with the client's handshake, and relay the CREATED2 back as
  **EXTENDED2**. A circuit may carry at most 8 RELAY_EARLY cells, which caps circuit length.
* **BEGIN** (recognised): an exit connects to ``host:port`` if its owner's
  :class:`~fogcoord.onion.policy.ExitPolicy` allows it (else END with reason EXITPOLICY), answers
  **CONNECTED**, and moves DATA both ways with SENDME flow control
  (:mod:`fogcoord.onion.streams`).
* **DESTROY** from either side tears the circuit down and is passed on with reason DESTROYED
  (section 5.4: reasons are not propagated, to avoid a side channel); a link that drops takes
  its circuits with it (CHANNEL_CLOSED).

A relay therefore knows only its two neighbours on each circuit: the address of the previous
hop's connection and the next hop it was asked to extend to (or, at an exit, the destination).
Everything else travels under layers of encryption it cannot remove. :attr:`Relay.observed`
records exactly the addresses a relay has seen, which the tests use to check this.

Malformed input never crashes a relay: every decoder raises
:class:`~fogcoord.onion.cells.CellError`, which costs the sender its circuit (DESTROY) or, after
too many bad cells, its link.

Extending the protocol -- the handler registry
----------------------------------------------

Hidden services add relay commands that run on ordinary relays (rend-spec-v3: ESTABLISH_INTRO,
INTRODUCE1, ESTABLISH_RENDEZVOUS, RENDEZVOUS1, ...). :meth:`Relay.register_command` binds a
command name and code to a handler ``handler(circuit, cell)`` (plain or ``async``) that is
called for every *recognised* relay cell with that code arriving from the origin's side of a
circuit. The handler gets the :class:`RelayCircuit`, whose public surface is:

* ``circuit.send(command, data, stream_id=0)`` -- originate a relay cell back to the origin;
* ``circuit.destroy(reason)`` -- tear the circuit down;
* ``circuit.splice(other)`` -- join two circuits that both end here (a rendezvous point):
  from then on, cells arriving on either circuit that this relay does not recognise are given
  this relay's backward layer of the *other* circuit and sent towards its origin, so the two
  origins talk end to end through this relay without it reading their traffic;
* ``circuit.on_close(callback)`` -- cleanup, e.g. dropping an intro-point registration;
* ``circuit.state`` (a dict per circuit), ``circuit.id``, ``circuit.keys_nonce`` (the ntor
  ``KH`` of this hop), ``circuit.is_last_hop``, ``circuit.closed``, ``circuit.relay``;

and ``relay.state`` is a dict shared by all circuits of the relay (e.g. intro points by key,
rendezvous cookies). Unregistered unknown commands are dropped, as section 6.1 requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from fogcoord.onion.cells import (
    HTYPE_NTOR,
    Cell,
    CellCommand,
    CellError,
    DestroyReason,
    EndReason,
    Extend2,
    RelayCell,
    RelayCommand,
    create2_payload,
    created2_payload,
    destroy_payload,
    parse_create2,
    parse_created2,
    parse_destroy,
)
from fogcoord.onion.directory import FLAG_EXIT, RelayInfo
from fogcoord.onion.identity import RelayIdentity
from fogcoord.onion.link import Link, open_link
from fogcoord.onion.ntor import HandshakeError, server_handshake
from fogcoord.onion.policy import ExitPolicy
from fogcoord.onion.relaycrypto import HopCrypto
from fogcoord.onion.streams import CircuitClosed, CircuitEnd, Stream, pipe

log = logging.getLogger(__name__)

MAX_RELAY_EARLY = 8
MAX_BAD_CELLS_PER_LINK = 64
MAX_CIRCUITS_PER_LINK = 4096

RelayHandler = Callable[["RelayCircuit", RelayCell], Awaitable[None] | None]
"""A handler for a registered relay command: ``handler(circuit, cell)``."""

CloseCallback = Callable[["RelayCircuit"], None]

_circuit_serial = itertools.count(1)


class RelayCircuit:
    """This relay's hop of one circuit. See the module docstring for the handler-facing API."""

    def __init__(
        self, relay: Relay, link: Link, circ_id: int, crypto: HopCrypto, nonce: bytes
    ) -> None:
        self.relay = relay
        self.id = next(_circuit_serial)
        self.prev_link = link
        self.prev_id = circ_id
        self.next_link: Link | None = None
        self.next_id = 0
        self.crypto = crypto
        self.keys_nonce = nonce
        self.extending = False
        self.early_cells = 0
        self.closed = False
        self.spliced: RelayCircuit | None = None
        self.exit_end: _ExitEnd | None = None
        self.state: dict[str, Any] = {}
        self._on_close: list[CloseCallback] = []

    @property
    def is_last_hop(self) -> bool:
        return self.next_link is None and not self.extending

    def send(self, command: int, data: bytes = b"", stream_id: int = 0) -> bytes:
        """Originate a relay cell at this hop towards the origin; the running digest after it."""
        return self.originate(RelayCell(command, stream_id, data))

    def originate(self, cell: RelayCell) -> bytes:
        if self.closed:
            raise CircuitClosed(DestroyReason.DESTROYED, "the circuit is closed")
        payload, digest = self.crypto.originate_backward(cell)
        self.prev_link.send(Cell(self.prev_id, CellCommand.RELAY, payload))
        return digest

    def destroy(self, reason: int = DestroyReason.NONE) -> None:
        self.relay._destroy(self, reason)

    def splice(self, other: RelayCircuit) -> None:
        """Join this circuit's end to ``other``'s (both must end at this relay)."""
        if other is self or other.relay is not self.relay:
            raise ValueError("can only splice two different circuits of the same relay")
        if self.closed or other.closed:
            raise CircuitClosed(DestroyReason.DESTROYED, "cannot splice a closed circuit")
        if not (self.is_last_hop and other.is_last_hop):
            raise ValueError("only circuits that end at this relay can be spliced")
        if self.spliced is not None or other.spliced is not None:
            raise ValueError("a circuit is already spliced")
        self.spliced = other
        other.spliced = self

    def on_close(self, callback: CloseCallback) -> None:
        self._on_close.append(callback)

    def _backward_raw(self, plain: bytes) -> None:
        """Send a cell that another circuit's origin built, adding this hop's backward layer."""
        payload = self.crypto.add_backward(plain)
        self.prev_link.send(Cell(self.prev_id, CellCommand.RELAY, payload))


class _ExitEnd(CircuitEnd):
    """The streams a circuit opens at this relay."""

    def __init__(self, circuit: RelayCircuit) -> None:
        super().__init__()
        self.circuit = circuit

    def emit(self, cell: RelayCell) -> bytes:
        return self.circuit.originate(cell)

    def violation(self, why: str) -> None:
        log.info("relay %s: circuit %d: %s", self.circuit.relay.nickname, self.circuit.id, why)
        self.circuit.relay._destroy(self.circuit, DestroyReason.PROTOCOL)


class Relay:
    """A TCP onion router. ``await start()``, publish :meth:`descriptor`, ``await stop()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        owner: str = "",
        bandwidth: int = 1000,
        exit: bool = False,
        exit_policy: ExitPolicy | None = None,
        identity: RelayIdentity | None = None,
        nickname: str = "",
        connect_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.owner = owner
        self.bandwidth = bandwidth
        self.exit = exit
        self.exit_policy = (
            (exit_policy or ExitPolicy.loopback()) if exit else ExitPolicy.reject_all()
        )
        self.identity = identity or RelayIdentity()
        self.nickname = nickname or self.identity.fingerprint[:8]
        self.connect_timeout = connect_timeout
        self.state: dict[str, Any] = {}
        """Shared by every circuit's handlers (see the module docstring)."""
        self.observed: set[tuple[str, int]] = set()
        """Every address this relay has exchanged traffic with: previous hops, next hops and
        exit destinations."""
        self._node_id = self.identity.node_id
        self._server: asyncio.Server | None = None
        self._links: set[Link] = set()
        self._out_links: dict[tuple[str, int], Link] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[Link]] = {}
        self._circuits: set[RelayCircuit] = set()
        self._handlers: dict[int, tuple[str, RelayHandler]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exit_writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop at once, as a relay that dies would: close the listener and every link."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close(abort=True)
        for circ in list(self._circuits):
            self._destroy(circ, DestroyReason.HIBERNATING, notify=False)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def descriptor(self) -> RelayInfo:
        """What the directory should publish about this relay."""
        return RelayInfo(
            id=self.identity.fingerprint,
            address=self.host,
            port=self.port,
            ed25519=self.identity.ed25519_public.hex(),
            onion_key=self.identity.onion_public.hex(),
            flags=(FLAG_EXIT,) if self.exit else (),
            bandwidth=self.bandwidth,
            owner=self.owner,
            exit_policy=self.exit_policy.to_strings() if self.exit else (),
        )

    @property
    def circuit_count(self) -> int:
        return len(self._circuits)

    def buffered_bytes(self) -> int:
        """Bytes this relay holds in user space: unread stream data and unsent link/TCP output."""
        total = sum(link.buffered() for link in self._links)
        for circ in self._circuits:
            if circ.exit_end is not None:
                total += sum(s.buffered for s in circ.exit_end.streams.values())
        for writer in self._exit_writers:
            if not writer.transport.is_closing():
                total += writer.transport.get_write_buffer_size()
        return total

    # -- handler registry ---------------------------------------------------------------------

    def register_command(self, name: str, code: int, handler: RelayHandler) -> None:
        """Handle recognised relay cells with command ``code`` (see the module docstring)."""
        if not 0 < code <= 0xFF:
            raise ValueError(f"relay command code {code} does not fit in a byte")
        if code in RelayCommand.__members__.values():
            raise ValueError(f"relay command {code} is a core command")
        if code in self._handlers:
            raise ValueError(f"relay command {code} is already registered")
        if any(existing == name for existing, _ in self._handlers.values()):
            raise ValueError(f"relay command name {name!r} is already registered")
        self._handlers[code] = (name, handler)

    def command_code(self, name: str) -> int:
        for code, (existing, _) in self._handlers.items():
            if existing == name:
                return code
        raise KeyError(name)

    # -- links --------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(reader, writer, initiator=False)
        self.observed.add(link.peer)
        await self._serve(link)

    async def _serve(self, link: Link) -> None:
        self._links.add(link)
        try:
            await link.run(
                lambda cell: self._on_cell(link, cell), lambda err: self._on_bad(link, err)
            )
        finally:
            self._link_closed(link)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _link_to(self, host: str, port: int) -> Link:
        key = (host, port)
        link = self._out_links.get(key)
        if link is not None and not link.closed:
            return link
        pending = self._connecting.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(host, port))
            self._connecting[key] = pending
            pending.add_done_callback(lambda _: self._connecting.pop(key, None))
        return await asyncio.shield(pending)

    async def _connect(self, host: str, port: int) -> Link:
        local = self.host if _same_family_ipv4(self.host, host) else None
        link = await open_link(host, port, local_host=local, timeout=self.connect_timeout)
        self.observed.add((host, port))
        self._out_links[(host, port)] = link
        self._spawn(self._serve(link))
        return link

    def _link_closed(self, link: Link) -> None:
        link.close()
        self._links.discard(link)
        for key, out in list(self._out_links.items()):
            if out is link:
                del self._out_links[key]
        for circ, _from_prev in list(link.circuits.values()):
            self._destroy(circ, DestroyReason.CHANNEL_CLOSED)
        link.circuits.clear()

    def _on_bad(self, link: Link, err: CellError) -> None:
        link.bad_cells += 1
        if link.bad_cells > MAX_BAD_CELLS_PER_LINK:
            log.info("relay %s: closing link from %s: %s", self.nickname, link.peer, err)
            link.close(abort=True)

    # -- cells --------------------------------------------------------------------------------

    def _on_cell(self, link: Link, cell: Cell) -> None:
        entry = link.circuits.get(cell.circ_id)
        try:
            if entry is None:
                self._on_new(link, cell)
                return
            circ, from_prev = entry
            command = cell.command
            if command in (CellCommand.RELAY, CellCommand.RELAY_EARLY):
                if from_prev:
                    self._forward(circ, cell)
                else:
                    self._backward(circ, cell)
            elif command == CellCommand.DESTROY:
                parse_destroy(cell.payload)
                if from_prev:
                    self._destroy(circ, DestroyReason.DESTROYED, notify_prev=False)
                else:
                    self._destroy(circ, DestroyReason.DESTROYED, notify_next=False)
            elif command == CellCommand.CREATED2 and not from_prev and circ.extending:
                self._extended(circ, cell)
            elif command == CellCommand.PADDING:
                pass
            else:
                # CREATE2 on a live id, CREATED2 out of turn: the sender is confused or hostile.
                self._destroy(circ, DestroyReason.PROTOCOL)
        except CellError as exc:
            self._on_bad(link, exc)
            if entry is not None:
                self._destroy(entry[0], DestroyReason.PROTOCOL)
        except Exception:
            log.exception("relay %s: internal error on a cell", self.nickname)
            if entry is not None:
                self._destroy(entry[0], DestroyReason.INTERNAL)

    def _on_new(self, link: Link, cell: Cell) -> None:
        if cell.command != CellCommand.CREATE2:
            # Cells for unknown circuits are dropped (section 5.5.1); so is a stray DESTROY.
            if cell.command not in (CellCommand.DESTROY, CellCommand.PADDING):
                self._on_bad(link, CellError(f"{cell.command.name} for an unknown circuit"))
            return
        if not link.peer_may_create(cell.circ_id):
            self._on_bad(link, CellError(f"circuit id {cell.circ_id:#x} is not the peer's"))
            _refuse(link, cell.circ_id, DestroyReason.PROTOCOL)
            return
        if len(link.circuits) >= MAX_CIRCUITS_PER_LINK:
            _refuse(link, cell.circ_id, DestroyReason.RESOURCELIMIT)
            return
        try:
            htype, hdata = parse_create2(cell.payload)
            if htype != HTYPE_NTOR:
                raise HandshakeError(f"unsupported handshake type {htype}")
            reply, keys = server_handshake(hdata, self._node_id, self.identity.onion_key)
        except (CellError, HandshakeError) as exc:
            self._on_bad(link, CellError(str(exc)))
            _refuse(link, cell.circ_id, DestroyReason.PROTOCOL)
            return
        circ = RelayCircuit(self, link, cell.circ_id, HopCrypto(keys), keys.nonce)
        link.circuits[cell.circ_id] = (circ, True)
        self._circuits.add(circ)
        link.send(Cell(cell.circ_id, CellCommand.CREATED2, created2_payload(reply)))

    def _forward(self, circ: RelayCircuit, cell: Cell) -> None:
        early = cell.command == CellCommand.RELAY_EARLY
        if early:
            circ.early_cells += 1
            if circ.early_cells > MAX_RELAY_EARLY:
                self._destroy(circ, DestroyReason.PROTOCOL)
                return
        plain = circ.crypto.peel_forward(cell.payload)
        found = circ.crypto.recognize_forward(plain)
        if found is not None:
            self._handle(circ, found[0], found[1], early)
        elif circ.next_link is not None:
            circ.next_link.send(Cell(circ.next_id, cell.command, plain))
        elif circ.spliced is not None:
            circ.spliced._backward_raw(plain)
        else:
            # The last hop could not recognise it: the cell was altered on the way (6.1).
            self._destroy(circ, DestroyReason.PROTOCOL)

    def _backward(self, circ: RelayCircuit, cell: Cell) -> None:
        if cell.command == CellCommand.RELAY_EARLY:
            self._destroy(circ, DestroyReason.PROTOCOL)
            return
        circ._backward_raw(cell.payload)

    def _handle(self, circ: RelayCircuit, rc: RelayCell, digest: bytes, early: bool) -> None:
        command = rc.command
        if command == RelayCommand.EXTEND2:
            self._extend(circ, rc, early)
        elif command == RelayCommand.TRUNCATE:
            self._truncate(circ)
        elif command in (
            RelayCommand.BEGIN,
            RelayCommand.DATA,
            RelayCommand.END,
            RelayCommand.CONNECTED,
            RelayCommand.SENDME,
        ):
            end = circ.exit_end
            if end is None:
                if command != RelayCommand.BEGIN:
                    return  # no stream was ever opened here: nothing to act on
                end = circ.exit_end = _ExitEnd(circ)
                end.begin_handler = self._exit_begin
            end.handle(rc, digest)
        elif command in self._handlers:
            self._run_handler(circ, rc)
        # Anything else (DROP, unknown codes) is dropped, as section 6.1 requires.

    def _run_handler(self, circ: RelayCircuit, rc: RelayCell) -> None:
        name, handler = self._handlers[rc.command]
        try:
            result = handler(circ, rc)
        except CellError:
            self._destroy(circ, DestroyReason.PROTOCOL)
            return
        if inspect.isawaitable(result):
            self._spawn(self._await_handler(circ, name, result))

    async def _await_handler(self, circ: RelayCircuit, name: str, result: Awaitable[None]) -> None:
        try:
            await result
        except CellError:
            self._destroy(circ, DestroyReason.PROTOCOL)
        except CircuitClosed:
            pass
        except Exception:
            log.exception("relay %s: handler %s failed", self.nickname, name)
            self._destroy(circ, DestroyReason.INTERNAL)

    # -- extending ----------------------------------------------------------------------------

    def _extend(self, circ: RelayCircuit, rc: RelayCell, early: bool) -> None:
        if not early or circ.next_link is not None or circ.extending or circ.spliced:
            # EXTEND2 outside RELAY_EARLY, or on a circuit that already continues (5.6).
            self._destroy(circ, DestroyReason.PROTOCOL)
            return
        ext = Extend2.decode(rc.data)
        if ext.htype != HTYPE_NTOR or (ext.address, ext.port) == (self.host, self.port):
            self._destroy(circ, DestroyReason.PROTOCOL)
            return
        circ.extending = True
        self._spawn(self._send_create(circ, ext))

    async def _send_create(self, circ: RelayCircuit, ext: Extend2) -> None:
        try:
            link = await self._link_to(ext.address, ext.port)
        except (OSError, TimeoutError):
            self._destroy(circ, DestroyReason.CONNECTFAILED)
            return
        if circ.closed:
            return
        if link.closed:
            self._destroy(circ, DestroyReason.CONNECTFAILED)
            return
        circ.next_link = link
        circ.next_id = link.new_circ_id()
        link.circuits[circ.next_id] = (circ, False)
        link.send(Cell(circ.next_id, CellCommand.CREATE2, create2_payload(ext.hdata, ext.htype)))

    def _extended(self, circ: RelayCircuit, cell: Cell) -> None:
        hdata = parse_created2(cell.payload)
        circ.extending = False
        circ.send(RelayCommand.EXTENDED2, created2_payload(hdata))

    def _truncate(self, circ: RelayCircuit) -> None:
        if circ.next_link is not None:
            circ.next_link.circuits.pop(circ.next_id, None)
            circ.next_link.send(
                Cell(circ.next_id, CellCommand.DESTROY, destroy_payload(DestroyReason.REQUESTED))
            )
        circ.next_link = None
        circ.next_id = 0
        circ.extending = False
        circ.send(RelayCommand.TRUNCATED, bytes((DestroyReason.REQUESTED,)))

    # -- teardown -----------------------------------------------------------------------------

    def _destroy(
        self,
        circ: RelayCircuit,
        reason: int,
        *,
        notify: bool = True,
        notify_prev: bool = True,
        notify_next: bool = True,
    ) -> None:
        if circ.closed:
            return
        circ.closed = True
        self._circuits.discard(circ)
        payload = destroy_payload(reason)
        if circ.prev_link.circuits.get(circ.prev_id, (None,))[0] is circ:
            del circ.prev_link.circuits[circ.prev_id]
        if notify and notify_prev:
            circ.prev_link.send(Cell(circ.prev_id, CellCommand.DESTROY, payload))
        if circ.next_link is not None:
            if circ.next_link.circuits.get(circ.next_id, (None,))[0] is circ:
                del circ.next_link.circuits[circ.next_id]
            if notify and notify_next:
                circ.next_link.send(Cell(circ.next_id, CellCommand.DESTROY, payload))
        if circ.exit_end is not None:
            circ.exit_end.close_end(CircuitClosed(reason))
        partner, circ.spliced = circ.spliced, None
        if partner is not None:
            partner.spliced = None
            self._destroy(partner, DestroyReason.DESTROYED, notify=notify)
        for callback in circ._on_close:
            try:
                callback(circ)
            except Exception:
                log.exception("relay %s: on_close callback failed", self.nickname)

    # -- exit ---------------------------------------------------------------------------------

    async def _exit_begin(self, stream: Stream, host: str, port: int) -> None:
        if not self.exit or not self.exit_policy.allows_port(port):
            stream.refuse(EndReason.EXITPOLICY)
            return
        try:
            addresses = await _resolve(host, port)
        except OSError:
            stream.refuse(EndReason.RESOLVEFAILED)
            return
        allowed = [a for a in addresses if self.exit_policy.allows(a, port)]
        if not allowed:
            stream.refuse(EndReason.EXITPOLICY)
            return
        target = allowed[0]
        local = (self.host, 0) if _same_family_ipv4(self.host, target) else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target, port, local_addr=local), self.connect_timeout
            )
        except ConnectionRefusedError:
            stream.refuse(EndReason.CONNECTREFUSED)
            return
        except TimeoutError:
            stream.refuse(EndReason.TIMEOUT)
            return
        except OSError:
            stream.refuse(EndReason.NOROUTE)
            return
        self.observed.add((target, port))
        self._exit_writers.add(writer)
        try:
            stream.accept(target)
            await pipe(stream, reader, writer)
        finally:
            self._exit_writers.discard(writer)
            writer.close()


def _refuse(link: Link, circ_id: int, reason: int) -> None:
    link.send(Cell(circ_id, CellCommand.DESTROY, destroy_payload(reason)))


async def _resolve(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for family, *_rest, sockaddr in infos:
        address = str(sockaddr[0])
        if family in (socket.AF_INET, socket.AF_INET6) and address not in seen:
            seen.append(address)
    seen.sort(key=lambda a: ":" in a)  # IPv4 first
    return seen


def _same_family_ipv4(local: str, remote: str) -> bool:
    """Whether to bind outgoing connections to ``local`` (only a concrete IPv4 to IPv4)."""
    try:
        ours = ipaddress.ip_address(local)
        theirs = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return ours.version == 4 and theirs.version == 4 and not ours.is_unspecified


__all__ = ["MAX_RELAY_EARLY", "Relay", "RelayCircuit", "RelayHandler"]
