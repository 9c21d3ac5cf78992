"""Fixed-size cells and the relay-cell header (tor-spec sections 3, 5.1, 5.4, 6.1-6.3, 7.3).

Everything that crosses a link between two onion routers is a *cell* of exactly 514 bytes::

    CircID   [4 bytes]   which circuit on this link (0 = the link itself)
    Command  [1 byte]    CREATE2, CREATED2, RELAY, RELAY_EARLY, DESTROY, PADDING
    Payload  [509 bytes] padded

Fixed sizes are the point: an observer of a link cannot tell a handshake from data, nor one
application's bytes from another's. The payload of a RELAY or RELAY_EARLY cell is onion
encrypted end to end; once every layer meant for a hop is peeled off it reads (section 6.1)::

    Relay command [1]  Recognized [2]  StreamID [2]  Digest [4]  Length [2]  Data [Length]

followed by padding up to 509 bytes, so at most 498 bytes of application data travel in a cell.

Parsing is strict: every decoder here raises :class:`CellError` (and nothing else) on input
that does not follow the format, so a relay can turn any malformed input into a DESTROY or a
closed connection without a crash. Variable-length cells (VERSIONS, CERTS, ...) belong to the
link handshake this implementation leaves out (links are plain TCP on loopback), so their
command bytes are rejected like any other unknown command.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass
from enum import IntEnum

CIRCID_LEN = 4
CELL_LEN = 514
PAYLOAD_LEN = 509
RELAY_HEADER_LEN = 11
RELAY_DATA_LEN = PAYLOAD_LEN - RELAY_HEADER_LEN
"""498: the most application bytes one relay cell carries."""

HTYPE_NTOR = 0x0002
NTOR_ONIONSKIN_LEN = 84
NTOR_REPLY_LEN = 64


class CellError(ValueError):
    """Bytes that are not a well-formed cell, or a cell payload that breaks its format."""


class CellCommand(IntEnum):
    """Fixed-length cell commands (tor-spec section 3) this implementation speaks."""

    PADDING = 0
    RELAY = 3
    DESTROY = 4
    RELAY_EARLY = 9
    CREATE2 = 10
    CREATED2 = 11


_CELL_COMMANDS = frozenset(int(c) for c in CellCommand)


class DestroyReason(IntEnum):
    """Why a circuit was torn down: the one-byte DESTROY payload (tor-spec section 5.4)."""

    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    REQUESTED = 3
    HIBERNATING = 4
    RESOURCELIMIT = 5
    CONNECTFAILED = 6
    OR_IDENTITY = 7
    CHANNEL_CLOSED = 8
    FINISHED = 9
    TIMEOUT = 10
    DESTROYED = 11
    NOSUCHSERVICE = 12


class RelayCommand(IntEnum):
    """Relay commands of tor-spec section 6.1 that the core protocol uses.

    Codes 32-40 belong to hidden services (rend-spec-v3); relays accept them through
    :meth:`fogcoord.onion.relay.Relay.register_command` rather than this enum.
    """

    BEGIN = 1
    DATA = 2
    END = 3
    CONNECTED = 4
    SENDME = 5
    EXTEND = 6
    EXTENDED = 7
    TRUNCATE = 8
    TRUNCATED = 9
    DROP = 10
    RESOLVE = 11
    RESOLVED = 12
    BEGIN_DIR = 13
    EXTEND2 = 14
    EXTENDED2 = 15


class EndReason(IntEnum):
    """Why a stream closed: the first byte of a RELAY_END payload (tor-spec section 6.3)."""

    MISC = 1
    RESOLVEFAILED = 2
    CONNECTREFUSED = 3
    EXITPOLICY = 4
    DESTROY = 5
    DONE = 6
    TIMEOUT = 7
    NOROUTE = 8
    HIBERNATING = 9
    INTERNAL = 10
    RESOURCELIMIT = 11
    CONNRESET = 12
    TORPROTOCOL = 13
    NOTDIRECTORY = 14


def reason_name(enum: type[IntEnum], value: int) -> str:
    """The symbolic name of ``value`` in ``enum``, or ``UNKNOWN(n)``: peers may send new codes."""
    try:
        return enum(value).name
    except ValueError:
        return f"UNKNOWN({value})"


# --- cells ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    """One fixed-length cell. ``payload`` is at most 509 bytes; :meth:`encode` pads it."""

    circ_id: int
    command: CellCommand
    payload: bytes = b""

    def encode(self) -> bytes:
        if not 0 <= self.circ_id <= 0xFFFFFFFF:
            raise CellError(f"circuit id {self.circ_id} does not fit in 4 bytes")
        if len(self.payload) > PAYLOAD_LEN:
            raise CellError(f"payload of {len(self.payload)} bytes exceeds {PAYLOAD_LEN}")
        head = self.circ_id.to_bytes(4, "big") + bytes((self.command,))
        # Relay payloads are already exactly 509 bytes (their padding is random); the others
        # are padded with NUL as section 3 asks.
        return head + self.payload + bytes(PAYLOAD_LEN - len(self.payload))

    @classmethod
    def decode(cls, frame: bytes) -> Cell:
        if len(frame) != CELL_LEN:
            raise CellError(f"a cell is {CELL_LEN} bytes, got {len(frame)}")
        command = frame[4]
        if command not in _CELL_COMMANDS:
            raise CellError(f"unknown cell command {command}")
        return cls(int.from_bytes(frame[:4], "big"), CellCommand(command), bytes(frame[5:]))


def create2_payload(hdata: bytes, htype: int = HTYPE_NTOR) -> bytes:
    """HTYPE | HLEN | HDATA (section 5.1)."""
    if len(hdata) > PAYLOAD_LEN - 4:
        raise CellError("handshake data too long for a CREATE2 cell")
    return struct.pack(">HH", htype, len(hdata)) + hdata


def parse_create2(payload: bytes) -> tuple[int, bytes]:
    """``(htype, hdata)`` of a CREATE2 payload."""
    if len(payload) < 4:
        raise CellError("CREATE2 payload too short")
    htype, hlen = struct.unpack_from(">HH", payload)
    if 4 + hlen > len(payload):
        raise CellError(f"CREATE2 HLEN {hlen} runs past the payload")
    return htype, bytes(payload[4 : 4 + hlen])


def created2_payload(hdata: bytes) -> bytes:
    """HLEN | HDATA: the payload of CREATED2 and of RELAY_EXTENDED2 (section 5.1.2)."""
    if len(hdata) > RELAY_DATA_LEN - 2:
        raise CellError("handshake reply too long")
    return struct.pack(">H", len(hdata)) + hdata


def parse_created2(payload: bytes) -> bytes:
    if len(payload) < 2:
        raise CellError("CREATED2 payload too short")
    (hlen,) = struct.unpack_from(">H", payload)
    if 2 + hlen > len(payload):
        raise CellError(f"CREATED2 HLEN {hlen} runs past the payload")
    return bytes(payload[2 : 2 + hlen])


def destroy_payload(reason: int) -> bytes:
    return bytes((reason & 0xFF,))


def parse_destroy(payload: bytes) -> int:
    """The reason byte; an empty payload means NONE."""
    return payload[0] if payload else int(DestroyReason.NONE)


# --- relay cells ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayCell:
    """The plaintext of a RELAY/RELAY_EARLY payload once all layers for a hop are removed.

    ``command`` is an ``int`` because relays must carry codes this module does not name (the
    hidden-service commands among them); :class:`RelayCommand` names the core ones.
    """

    command: int
    stream_id: int = 0
    data: bytes = b""
    recognized: int = 0
    digest: bytes = bytes(4)

    def encode(self) -> bytes:
        """The 509-byte payload: header, data, then 4 zero bytes and random padding.

        The random tail keeps cell contents unpredictable (tor-spec section 6.1, proposal 289).
        """
        if not 0 <= self.command <= 0xFF:
            raise CellError(f"relay command {self.command} does not fit in a byte")
        if not 0 <= self.stream_id <= 0xFFFF:
            raise CellError(f"stream id {self.stream_id} does not fit in 2 bytes")
        if len(self.digest) != 4:
            raise CellError("the relay digest field is 4 bytes")
        n = len(self.data)
        if n > RELAY_DATA_LEN:
            raise CellError(f"relay data of {n} bytes exceeds {RELAY_DATA_LEN}")
        head = struct.pack(">BHH4sH", self.command, self.recognized, self.stream_id, self.digest, n)
        spare = RELAY_DATA_LEN - n
        pad = bytes(spare) if spare <= 4 else bytes(4) + os.urandom(spare - 4)
        return head + self.data + pad

    @classmethod
    def decode(cls, payload: bytes) -> RelayCell:
        if len(payload) != PAYLOAD_LEN:
            raise CellError(f"a relay payload is {PAYLOAD_LEN} bytes, got {len(payload)}")
        command, recognized, stream_id, digest, length = struct.unpack_from(">BHH4sH", payload)
        if length > RELAY_DATA_LEN:
            raise CellError(f"relay length {length} exceeds {RELAY_DATA_LEN}")
        data = bytes(payload[RELAY_HEADER_LEN : RELAY_HEADER_LEN + length])
        return cls(command, stream_id, data, recognized, digest)


# --- EXTEND2 / EXTENDED2 (section 5.1.2) ----------------------------------------------------

LSTYPE_IPV4 = 0x00
LSTYPE_IPV6 = 0x01
LSTYPE_LEGACY_ID = 0x02
LSTYPE_ED25519_ID = 0x03


@dataclass(frozen=True, slots=True)
class Extend2:
    """Where to extend to and the handshake to send there."""

    address: str
    port: int
    hdata: bytes
    node_id: bytes | None = None
    """The 20-byte identity digest (sent as a "legacy identity" link specifier)."""
    ed25519_id: bytes | None = None
    htype: int = HTYPE_NTOR

    def encode(self) -> bytes:
        specs: list[tuple[int, bytes]] = []
        ip = ipaddress.ip_address(self.address)
        if not 0 < self.port <= 0xFFFF:
            raise CellError(f"port {self.port} out of range")
        if isinstance(ip, ipaddress.IPv4Address):
            specs.append((LSTYPE_IPV4, ip.packed + struct.pack(">H", self.port)))
        # The spec's recommended order is [00], [02], [03], [01].
        if self.node_id is not None:
            specs.append((LSTYPE_LEGACY_ID, self.node_id))
        if self.ed25519_id is not None:
            specs.append((LSTYPE_ED25519_ID, self.ed25519_id))
        if isinstance(ip, ipaddress.IPv6Address):
            specs.append((LSTYPE_IPV6, ip.packed + struct.pack(">H", self.port)))
        out = bytearray((len(specs),))
        for lstype, lspec in specs:
            out += bytes((lstype, len(lspec))) + lspec
        out += struct.pack(">HH", self.htype, len(self.hdata)) + self.hdata
        if len(out) > RELAY_DATA_LEN:
            raise CellError("EXTEND2 body does not fit in a relay cell")
        return bytes(out)

    @classmethod
    def decode(cls, body: bytes) -> Extend2:
        if not body:
            raise CellError("empty EXTEND2 body")
        nspec = body[0]
        pos = 1
        address: str | None = None
        port = 0
        node_id: bytes | None = None
        ed_id: bytes | None = None
        for _ in range(nspec):
            if pos + 2 > len(body):
                raise CellError("EXTEND2 link specifier list is truncated")
            lstype, lslen = body[pos], body[pos + 1]
            pos += 2
            lspec = body[pos : pos + lslen]
            if len(lspec) != lslen:
                raise CellError("EXTEND2 link specifier runs past the body")
            pos += lslen
            if lstype == LSTYPE_IPV4 and address is None:
                if lslen != 6:
                    raise CellError("IPv4 link specifier must be 6 bytes")
                address = str(ipaddress.IPv4Address(lspec[:4]))
                port = int.from_bytes(lspec[4:6], "big")
            elif lstype == LSTYPE_IPV6 and address is None:
                if lslen != 18:
                    raise CellError("IPv6 link specifier must be 18 bytes")
                address = str(ipaddress.IPv6Address(lspec[:16]))
                port = int.from_bytes(lspec[16:18], "big")
            elif lstype == LSTYPE_LEGACY_ID:
                if node_id is not None or lslen != 20:
                    raise CellError("bad or repeated legacy identity link specifier")
                node_id = bytes(lspec)
            elif lstype == LSTYPE_ED25519_ID:
                if ed_id is not None or lslen != 32:
                    raise CellError("bad or repeated Ed25519 identity link specifier")
                ed_id = bytes(lspec)
            # Unrecognised specifiers are ignored, as section 5.1.2 requires.
        if address is None or port == 0:
            raise CellError("EXTEND2 names no address to extend to")
        if pos + 4 > len(body):
            raise CellError("EXTEND2 handshake header is truncated")
        htype, hlen = struct.unpack_from(">HH", body, pos)
        pos += 4
        hdata = bytes(body[pos : pos + hlen])
        if len(hdata) != hlen:
            raise CellError("EXTEND2 handshake data runs past the body")
        return cls(address, port, hdata, node_id, ed_id, htype)


# --- streams (section 6.2-6.3) --------------------------------------------------------------


def begin_body(host: str, port: int) -> bytes:
    """ADDRPORT NUL FLAGS, the host lower-cased against fingerprinting; IPv6 in brackets."""
    if not 0 < port <= 0xFFFF:
        raise CellError(f"port {port} out of range")
    if not host or "\0" in host or len(host) > 255:
        raise CellError("bad host name")
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}".encode("ascii", errors="strict") + b"\0" + bytes(4)


def parse_begin(body: bytes) -> tuple[str, int]:
    end = body.find(b"\0")
    if end < 0:
        raise CellError("BEGIN address is not NUL-terminated")
    try:
        text = body[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise CellError("BEGIN address is not ASCII") from exc
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or len(port_text) > 5:
        raise CellError(f"BEGIN address {text!r} is not host:port")
    port = int(port_text)
    if not 0 < port <= 0xFFFF:
        raise CellError(f"BEGIN port {port} out of range")
    if host.startswith("["):
        if not host.endswith("]"):
            raise CellError("unbalanced brackets in BEGIN address")
        host = host[1:-1]
    if not host or any(c.isspace() for c in host):
        raise CellError("bad BEGIN host")
    return host.lower(), port


def connected_body(address: str, ttl: int = 0) -> bytes:
    """The IPv4 form of RELAY_CONNECTED, or the 0.0.0.0-type-6 IPv6 form."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.packed + struct.pack(">I", ttl)
    return bytes(4) + b"\x06" + ip.packed + struct.pack(">I", ttl)


def end_body(reason: int) -> bytes:
    return bytes((reason & 0xFF,))


def parse_end(body: bytes) -> int:
    """The reason; an empty END means MISC (section 6.3)."""
    return body[0] if body else int(EndReason.MISC)


SENDME_VERSION = 1
SENDME_DIGEST_LEN = 20


def sendme_body(digest: bytes | None) -> bytes:
    """Circuit-level SENDMEs are authenticated (version 1, section 7.3.1); stream ones empty."""
    if digest is None:
        return b""
    return struct.pack(">BH", SENDME_VERSION, SENDME_DIGEST_LEN) + digest[:SENDME_DIGEST_LEN]


def parse_sendme(body: bytes) -> tuple[int, bytes]:
    """``(version, digest)`` of a circuit-level SENDME; version 0 has an empty digest."""
    if not body:
        return 0, b""
    if len(body) < 3:
        raise CellError("SENDME body too short")
    version, dlen = struct.unpack_from(">BH", body)
    data = body[3 : 3 + dlen]
    if len(data) != dlen:
        raise CellError("SENDME data runs past the body")
    if version == 0:
        return 0, b""
    if version == 1:
        if dlen < SENDME_DIGEST_LEN:
            raise CellError("version-1 SENDME digest is too short")
        return 1, bytes(data[:SENDME_DIGEST_LEN])
    raise CellError(f"unknown SENDME version {version}")
