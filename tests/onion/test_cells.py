"""Cell formats: round trips, and strict parsing that fails only with CellError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.onion.cells import (
    CELL_LEN,
    PAYLOAD_LEN,
    RELAY_DATA_LEN,
    Cell,
    CellCommand,
    CellError,
    DestroyReason,
    EndReason,
    Extend2,
    RelayCell,
    RelayCommand,
    begin_body,
    connected_body,
    create2_payload,
    created2_payload,
    destroy_payload,
    end_body,
    parse_begin,
    parse_create2,
    parse_created2,
    parse_destroy,
    parse_end,
    parse_sendme,
    reason_name,
    sendme_body,
)


def test_cell_is_514_bytes_and_round_trips() -> None:
    cell = Cell(0x80000001, CellCommand.CREATE2, b"hello")
    frame = cell.encode()
    assert len(frame) == CELL_LEN == 514
    assert frame[:4] == bytes.fromhex("80000001")
    assert frame[4] == 10
    back = Cell.decode(frame)
    assert back.circ_id == cell.circ_id
    assert back.command is CellCommand.CREATE2
    assert back.payload == b"hello" + bytes(PAYLOAD_LEN - 5)


def test_cell_rejects_bad_frames() -> None:
    with pytest.raises(CellError, match="514"):
        Cell.decode(bytes(513))
    with pytest.raises(CellError, match="unknown cell command 7"):
        Cell.decode(bytes(4) + b"\x07" + bytes(PAYLOAD_LEN))  # VERSIONS: not spoken here
    with pytest.raises(CellError):
        Cell(1, CellCommand.RELAY, bytes(PAYLOAD_LEN + 1)).encode()
    with pytest.raises(CellError):
        Cell(1 << 32, CellCommand.RELAY).encode()


def test_relay_cell_round_trip_and_padding() -> None:
    cell = RelayCell(RelayCommand.DATA, 7, b"abc")
    payload = cell.encode()
    assert len(payload) == PAYLOAD_LEN
    # header: cmd, recognized, stream, digest, length; then data, then four zero bytes of padding
    assert payload[:11] == bytes.fromhex("0200000007000000000003")
    assert payload[11:14] == b"abc"
    assert payload[14:18] == bytes(4)
    assert payload[18:] != cell.encode()[18:]  # the rest of the padding is random
    assert RelayCell.decode(payload) == cell
    full = RelayCell(RelayCommand.DATA, 1, bytes(RELAY_DATA_LEN))
    assert RelayCell.decode(full.encode()) == full
    with pytest.raises(CellError):
        RelayCell(RelayCommand.DATA, 1, bytes(RELAY_DATA_LEN + 1)).encode()
    with pytest.raises(CellError, match="length"):
        RelayCell.decode(bytes(9) + (499).to_bytes(2, "big") + bytes(PAYLOAD_LEN - 11))


def test_handshake_payloads() -> None:
    assert parse_create2(create2_payload(b"x" * 84)) == (2, b"x" * 84)
    assert parse_created2(created2_payload(b"y" * 64)) == b"y" * 64
    with pytest.raises(CellError):
        parse_create2(b"\x00\x02\x01\x00")  # HLEN 256 with no data
    with pytest.raises(CellError):
        parse_created2(b"\x00")
    assert parse_destroy(destroy_payload(DestroyReason.PROTOCOL)) == DestroyReason.PROTOCOL
    assert parse_destroy(b"") == DestroyReason.NONE


def test_extend2_round_trip() -> None:
    ext = Extend2("127.2.0.1", 9001, b"h" * 84, node_id=b"i" * 20, ed25519_id=b"e" * 32)
    body = ext.encode()
    assert body[0] == 3  # IPv4, legacy id, Ed25519 id
    assert Extend2.decode(body) == ext
    v6 = Extend2("::1", 443, b"h" * 84)
    assert Extend2.decode(v6.encode()) == v6


def test_extend2_rejects_malformed_bodies() -> None:
    good = Extend2("127.2.0.1", 9001, b"h" * 84).encode()
    with pytest.raises(CellError, match="truncated"):
        Extend2.decode(good[:11])
    with pytest.raises(CellError, match="runs past"):
        Extend2.decode(good[:5])
    with pytest.raises(CellError, match="runs past"):
        Extend2.decode(good[:-1])
    with pytest.raises(CellError, match="no address"):
        Extend2.decode(b"\x00" + good[9:])
    with pytest.raises(CellError, match="6 bytes"):
        Extend2.decode(b"\x01\x00\x05" + bytes(5) + bytes(4))
    dup = b"\x02" + b"\x02\x14" + bytes(20) + b"\x02\x14" + bytes(20)
    with pytest.raises(CellError, match="repeated"):
        Extend2.decode(dup)
    unknown_spec = b"\x02" + b"\x09\x01z" + good[1:]
    assert Extend2.decode(unknown_spec).port == 9001  # unknown specifiers are ignored


def test_begin_connected_end_sendme() -> None:
    assert begin_body("LocalHost", 80) == b"localhost:80\x00" + bytes(4)
    assert parse_begin(begin_body("LocalHost", 80)) == ("localhost", 80)
    assert parse_begin(begin_body("::1", 8080)) == ("::1", 8080)
    for bad in (b"host:80", b":80\0", b"host:0\0", b"host:99999\0", b"host\0", b"\xff:1\0"):
        with pytest.raises(CellError):
            parse_begin(bad)
    assert connected_body("127.0.0.1", 60) == bytes([127, 0, 0, 1, 0, 0, 0, 60])
    assert len(connected_body("::1")) == 25
    assert parse_end(end_body(EndReason.EXITPOLICY)) == EndReason.EXITPOLICY
    assert parse_end(b"") == EndReason.MISC
    assert parse_sendme(sendme_body(b"d" * 20)) == (1, b"d" * 20)
    assert parse_sendme(sendme_body(None)) == (0, b"")
    with pytest.raises(CellError, match="version 2"):
        parse_sendme(b"\x02\x00\x00")
    with pytest.raises(CellError, match="too short"):
        parse_sendme(b"\x01\x00\x03abc")


def test_reason_names_tolerate_new_codes() -> None:
    assert reason_name(DestroyReason, 1) == "PROTOCOL"
    assert reason_name(EndReason, 200) == "UNKNOWN(200)"


# --- fuzzing: anything but CellError is a bug ------------------------------------------------

PARSERS = [
    Cell.decode,
    RelayCell.decode,
    Extend2.decode,
    parse_begin,
    parse_create2,
    parse_created2,
    parse_sendme,
]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=600))
def test_fuzzed_bytes_raise_only_cell_error(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(CellError):
            parse(data)


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from([0, 3, 4, 9, 10, 11]),
    payload=st.binary(min_size=PAYLOAD_LEN, max_size=PAYLOAD_LEN),
)
def test_fuzzed_payloads_of_known_commands(command: int, payload: bytes) -> None:
    frame = (5).to_bytes(4, "big") + bytes([command]) + payload
    cell = Cell.decode(frame)
    assert cell.encode() == frame
    for parse in PARSERS[1:]:
        with contextlib.suppress(CellError):
            parse(payload)


@settings(max_examples=200, deadline=None)
@given(
    command=st.integers(0, 255),
    stream_id=st.integers(0, 0xFFFF),
    data=st.binary(max_size=RELAY_DATA_LEN),
)
def test_relay_cells_round_trip(command: int, stream_id: int, data: bytes) -> None:
    cell = RelayCell(command, stream_id, data)
    assert RelayCell.decode(cell.encode()) == cell


@settings(max_examples=100, deadline=None)
@given(
    host=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,60}", fullmatch=True),
    port=st.integers(1, 65535),
)
def test_begin_round_trips(host: str, port: int) -> None:
    assert parse_begin(begin_body(host, port)) == (host, port)
