"""Hidden-service directories: relays that store and serve descriptors over circuits.

In rend-spec-v3 a service uploads its descriptor to the directories the hash ring makes
responsible for it (section 2.2.3, [WHERE-HSDESC]), and a client fetches it from one of them;
both do so through anonymous circuits, so a directory learns neither who published nor who
asked (section 2.2.6). Tor speaks HTTP over a BEGIN_DIR stream for this (``POST
/tor/hs/3/publish`` and ``GET /tor/hs/3/<key>``). Here two relay commands take its place, handled
at the directory relay itself, the last hop of the circuit:

* **HSDIR_STORE** carries a descriptor, **HSDIR_STORED** answers with a status;
* **HSDIR_FETCH** carries an onion address, **HSDIR_FOUND** answers with a status and, if the
  directory has a live one, the descriptor.

A descriptor may be up to 50,000 bytes (section 2.4) while a relay cell carries 498, so STORE and
FOUND bodies travel as a *chunked message*: the bytes ``LENGTH (4, big-endian) | BODY`` cut into
consecutive relay cells of the same command, each full except the last. The receiver knows from
the first four bytes how much is coming, refuses a length over its limit before buffering
anything, and refuses a cell that runs past the announced end. Relay cells on one circuit arrive
in order and intact (their running digests guarantee it), so no sequence numbers are needed.

The directory stores into a :class:`~fogcoord.onion.descriptor.DescriptorStore`, which verifies
every descriptor against the key inside its address and refuses any revision not above the
highest it has accepted (section 2.4, ``revision-counter``): a replayed or stale descriptor gets
status STALE, a forged one INVALID.
"""

from __future__ import annotations

import asyncio
import struct
import time
from enum import IntEnum
from typing import Any, TypeVar

from fogcoord.onion.cells import RELAY_DATA_LEN, CellError, RelayCell
from fogcoord.onion.client import Circuit
from fogcoord.onion.descriptor import (
    MAX_DESCRIPTOR_BYTES,
    Descriptor,
    DescriptorError,
    DescriptorStore,
    DescriptorVerificationError,
    StaleRevisionError,
)
from fogcoord.onion.directory import Consensus, RelayInfo
from fogcoord.onion.hashring import TimePeriod, responsible_nodes
from fogcoord.onion.hsaddr import OnionAddressError, canonical_onion_address
from fogcoord.onion.relay import Relay, RelayCircuit
from fogcoord.onion.streams import OnionError

HSDIR_STORE = 0xD0
HSDIR_STORED = 0xD1
HSDIR_FETCH = 0xD2
HSDIR_FOUND = 0xD3
"""Relay command codes, outside the ranges tor-spec and rend-spec-v3 assign."""

LENGTH_PREFIX = 4
MAX_MESSAGE_BYTES = MAX_DESCRIPTOR_BYTES + 1
"""A FOUND body is a status byte and a descriptor; a STORE body is the descriptor alone."""

_UPLOAD_STATE = "hsdir.upload"

T = TypeVar("T")


class HSDirStatus(IntEnum):
    """The first byte of an HSDIR_STORED or HSDIR_FOUND body."""

    OK = 0
    NOT_FOUND = 1
    STALE = 2
    """The directory already holds this service's descriptor at this revision or a later one."""
    INVALID = 3
    """The descriptor does not verify: bad signature, wrong key, expired."""
    MALFORMED = 4
    TOO_LARGE = 5


class HSDirError(OnionError):
    """A directory refused an upload or a fetch; ``status`` says why."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = int(status)
        try:
            name = HSDirStatus(self.status).name
        except ValueError:
            name = f"status {self.status}"
        text = f"hidden-service directory refused ({name})"
        super().__init__(f"{text}: {message}" if message else text)


class MessageTooLarge(CellError):
    """A chunked message announces more bytes than the receiver accepts."""


def chunk_message(body: bytes) -> list[bytes]:
    """``body`` with its length prefix, cut into relay-cell-sized pieces."""
    framed = struct.pack(">I", len(body)) + body
    return [framed[i : i + RELAY_DATA_LEN] for i in range(0, len(framed), RELAY_DATA_LEN)]


class Reassembler:
    """Collects one chunked message; :meth:`feed` returns the body once it is complete."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._expected: int | None = None

    def feed(self, data: bytes) -> bytes | None:
        """Add one cell's data. Raises :class:`CellError` for a length over the limit, an
        empty cell, or data past the announced end."""
        if not data:
            raise CellError("empty chunk")
        self._buf += data
        if self._expected is None:
            if len(self._buf) < LENGTH_PREFIX:
                # Every chunk but the last is full, so the prefix always arrives whole.
                raise CellError("the first chunk is shorter than the length prefix")
            (length,) = struct.unpack_from(">I", self._buf)
            if length > self.limit:
                raise MessageTooLarge(f"message of {length} bytes exceeds the limit {self.limit}")
            self._expected = LENGTH_PREFIX + length
        if len(self._buf) > self._expected:
            raise CellError("a chunk runs past the announced length")
        if len(data) != RELAY_DATA_LEN and len(self._buf) != self._expected:
            raise CellError("a short chunk before the end of the message")
        if len(self._buf) < self._expected:
            return None
        body = bytes(self._buf[LENGTH_PREFIX:])
        self._buf.clear()
        self._expected = None
        return body


def _reply(circuit: RelayCircuit, command: int, status: HSDirStatus, body: bytes = b"") -> None:
    for chunk in chunk_message(bytes((status,)) + body):
        circuit.send(command, chunk)


def install_hsdir(relay: Relay, store: DescriptorStore) -> None:
    """Make ``relay`` a hidden-service directory that keeps descriptors in ``store``."""

    def on_store(circuit: RelayCircuit, cell: RelayCell) -> None:
        upload = circuit.state.get(_UPLOAD_STATE)
        if upload is None:
            upload = circuit.state[_UPLOAD_STATE] = Reassembler(MAX_DESCRIPTOR_BYTES)
        try:
            data = upload.feed(cell.data)
        except CellError as exc:
            # Answer before hanging up so the uploader learns why; what is left of the transfer
            # cannot be told apart from a new one, hence the circuit goes too.
            too_large = isinstance(exc, MessageTooLarge)
            status = HSDirStatus.TOO_LARGE if too_large else HSDirStatus.MALFORMED
            _reply(circuit, HSDIR_STORED, status, str(exc).encode())
            circuit.destroy()
            return
        if data is None:
            return
        try:
            descriptor = Descriptor.from_bytes(data)
            store.put(descriptor.address, descriptor)
        except StaleRevisionError as exc:
            _reply(circuit, HSDIR_STORED, HSDirStatus.STALE, str(exc).encode())
        except DescriptorVerificationError as exc:
            _reply(circuit, HSDIR_STORED, HSDirStatus.INVALID, str(exc).encode())
        except DescriptorError as exc:
            _reply(circuit, HSDIR_STORED, HSDirStatus.MALFORMED, str(exc).encode())
        else:
            _reply(circuit, HSDIR_STORED, HSDirStatus.OK, str(descriptor.revision_counter).encode())

    def on_fetch(circuit: RelayCircuit, cell: RelayCell) -> None:
        try:
            address = canonical_onion_address(cell.data.decode("ascii"))
        except (UnicodeDecodeError, OnionAddressError) as exc:
            _reply(circuit, HSDIR_FOUND, HSDirStatus.MALFORMED, str(exc).encode())
            return
        descriptor = store.get(address)
        if descriptor is None:
            _reply(circuit, HSDIR_FOUND, HSDirStatus.NOT_FOUND)
        else:
            _reply(circuit, HSDIR_FOUND, HSDirStatus.OK, descriptor.to_bytes())

    relay.register_command("HSDIR_STORE", HSDIR_STORE, on_store)
    relay.register_command("HSDIR_FETCH", HSDIR_FETCH, on_fetch)


# -- the uploader's and fetcher's side ----------------------------------------------------------

_NEVER_SENT = 0xFF
"""A relay command no party sends towards an origin: waiting for it only ends when the circuit
closes or the wait times out, which is how :func:`await_on_circuit` notices a dead circuit."""


def relay_waiter(
    circuit: Circuit, command: int, timeout: float | None = None
) -> asyncio.Task[RelayCell]:
    """A task for the next relay cell with ``command``, registered at once (so it may be created
    right before sending what it answers, whatever the event loop's scheduling). Its failure is
    retrieved even if nobody awaits it, since a circuit can close just as it is cancelled."""
    expected = circuit.expect_relay(command)

    async def wait() -> RelayCell:
        try:
            _hop, cell = await asyncio.wait_for(expected, timeout or circuit.timeout)
        finally:
            expected.cancel()
        return cell

    task = asyncio.ensure_future(wait())
    task.add_done_callback(_retrieve)
    return task


def _retrieve(task: asyncio.Task[RelayCell]) -> None:
    if not task.cancelled():
        task.exception()


async def await_on_circuit(
    circuit: Circuit, answer: asyncio.Future[T], timeout: float | None = None
) -> T:
    """``answer``'s result, or the :class:`CircuitClosed` of ``circuit`` if it dies first, or
    :class:`TimeoutError` after ``timeout`` (default: the circuit's)."""
    if answer.done():  # arrived before the circuit closed behind it: the answer stands
        return answer.result()
    watch = relay_waiter(circuit, _NEVER_SENT, timeout)
    pending: set[asyncio.Future[Any]] = {answer, watch}
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    try:
        watch.result()
    except asyncio.CancelledError:  # pragma: no cover - the wait above returned first
        raise TimeoutError("no answer") from None
    # Only a misbehaving relay sends this command; treat it as the violation it is.
    circuit.violation("unexpected relay command")
    raise HSDirError(HSDirStatus.MALFORMED, "unexpected relay command")


def collect_chunked(circuit: Circuit, command: int) -> asyncio.Future[bytes]:
    """A future for the next chunked message of ``command`` from the circuit's last hop."""
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    collect = Reassembler()
    last = circuit.hops - 1

    def on_chunk(hop: int, cell: RelayCell) -> None:
        if answer.done():
            return
        if hop != last:
            # Only the directory itself answers; a cell from another hop is not its answer.
            answer.set_exception(HSDirError(HSDirStatus.MALFORMED, "answer from the wrong hop"))
            return
        try:
            body = collect.feed(cell.data)
        except CellError as exc:
            answer.set_exception(HSDirError(HSDirStatus.MALFORMED, str(exc)))
            return
        if body is not None:
            answer.set_result(body)

    circuit.on_relay(command, on_chunk)
    return answer


def hsdir_nodes(consensus: Consensus) -> dict[str, bytes]:
    """The directory nodes of the hash ring: every relay of the consensus that carries traffic,
    by id, with its Ed25519 identity (every relay of this network serves as an HSDir)."""
    return {r.id: r.ed25519_bytes for r in consensus.relays if r.bandwidth > 0}


def responsible_hsdirs(
    consensus: Consensus,
    address: str,
    replication_factor: int,
    *,
    now: float | None = None,
) -> list[RelayInfo]:
    """The relays that store ``address``'s descriptor in the time period containing ``now``
    (section 2.2.3): ``replication_factor`` replicas, one directory each."""
    period = TimePeriod.at(time.time() if now is None else now)
    ids = responsible_nodes(hsdir_nodes(consensus), address, replication_factor, period)
    return [consensus.get(relay_id) for relay_id in ids]


def _status(body: bytes) -> tuple[int, bytes]:
    if not body:
        raise HSDirError(HSDirStatus.MALFORMED, "empty answer")
    return body[0], body[1:]


async def upload_descriptor(
    circuit: Circuit, descriptor: bytes, *, timeout: float | None = None
) -> None:
    """Store ``descriptor`` (wire bytes) at ``circuit``'s last hop, a directory relay.

    Raises :class:`HSDirError` if the directory refuses it (status STALE, INVALID, ...),
    :class:`CircuitClosed` or :class:`TimeoutError` if it never answers.
    """
    if len(descriptor) > MAX_DESCRIPTOR_BYTES:
        raise HSDirError(HSDirStatus.TOO_LARGE, f"{len(descriptor)} bytes")
    answer = collect_chunked(circuit, HSDIR_STORED)
    for chunk in chunk_message(descriptor):
        circuit.send_relay(HSDIR_STORE, chunk)
    status, message = _status(await await_on_circuit(circuit, answer, timeout))
    if status != HSDirStatus.OK:
        raise HSDirError(status, message.decode("utf-8", "replace"))


async def fetch_descriptor_bytes(
    circuit: Circuit, address: str, *, timeout: float | None = None
) -> bytes | None:
    """The descriptor a directory (``circuit``'s last hop) holds for ``address``, or None.

    The bytes are as the directory sent them: parse and verify them before use.
    """
    canonical = canonical_onion_address(address)
    answer = collect_chunked(circuit, HSDIR_FOUND)
    circuit.send_relay(HSDIR_FETCH, canonical.encode("ascii"))
    status, body = _status(await await_on_circuit(circuit, answer, timeout))
    if status == HSDirStatus.NOT_FOUND:
        return None
    if status != HSDirStatus.OK:
        raise HSDirError(status, body.decode("utf-8", "replace"))
    return body


__all__ = [
    "HSDIR_FETCH",
    "HSDIR_FOUND",
    "HSDIR_STORE",
    "HSDIR_STORED",
    "HSDirError",
    "HSDirStatus",
    "MessageTooLarge",
    "Reassembler",
    "await_on_circuit",
    "chunk_message",
    "collect_chunked",
    "fetch_descriptor_bytes",
    "hsdir_nodes",
    "install_hsdir",
    "relay_waiter",
    "responsible_hsdirs",
    "upload_descriptor",
]
