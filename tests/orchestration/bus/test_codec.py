from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, ClassVar

import msgpack
import pytest
from pydantic import BaseModel, ConfigDict

from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.orchestration.bus.codec import ENCODINGS, codec_for, decode, encode


class CodecTestItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    price: Decimal
    weight: float


class CodecTestInvoice(ServiceEvent):
    durable: ClassVar[bool] = True

    items: tuple[CodecTestItem, ...]
    total: Decimal
    rate: float
    memo: str
    labels: dict[str, int]
    parent: CodecTestItem | None = None


def an_invoice() -> CodecTestInvoice:
    items = (
        CodecTestItem(name="gpu ✓", price=Decimal("0.000000000000000001"), weight=1 / 3),
        CodecTestItem(name="", price=Decimal("-12.50"), weight=-0.0),
    )
    return CodecTestInvoice(
        source="tokenomics",
        target="ledger",
        timestamp=1_700_000_000.5,
        items=items,
        total=Decimal("99999999999999999999.99"),
        rate=2.5e-8,
        memo='line\n"quoted"\t\\ 日本',
        labels={"a": 1, "b": -(2**53)},
        parent=items[0],
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_keeps_class_and_values(encoding: str) -> None:
    invoice = an_invoice()
    data = encode(invoice, encoding)
    assert isinstance(data, bytes)
    back = decode(data, encoding)
    assert type(back) is CodecTestInvoice
    assert back == invoice
    assert isinstance(back, CodecTestInvoice)
    assert str(back.items[1].price) == "-12.50"
    assert back.items[0].weight == 1 / 3
    assert back.event_id == invoice.event_id


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_of_the_base_event(encoding: str) -> None:
    event = ServiceEvent(source="x")
    codec = codec_for(encoding)
    assert codec.name == encoding
    back = codec.decode(codec.encode(event))
    assert type(back) is ServiceEvent
    assert back == event


def test_json_is_the_wire_envelope() -> None:
    invoice = an_invoice()
    assert json.loads(encode(invoice, "json")) == invoice.to_wire()
    assert msgpack.unpackb(encode(invoice, "msgpack")) == invoice.to_wire()


GARBAGE = [b"", b"\xff\xfe\x00garbage", b"not json at all", b"\xc1", b"\x92\x01\x02\x03"]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_is_a_validation_error(encoding: str, data: bytes) -> None:
    with pytest.raises(ValidationFailed) as info:
        decode(data, encoding)
    assert info.value.fields["field"].startswith("event")


def _pack(encoding: str, wire: Any) -> bytes:
    if encoding == "json":
        return json.dumps(wire).encode()
    packed: bytes = msgpack.packb(wire)
    return packed


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("wire", "field", "reason"),
    [
        ([1, 2], "event", "envelope"),
        ({"type": "codec_test_invoice"}, "event", "envelope"),
        ({"type": "codec_test_invoice", "data": {}, "extra": 1}, "event", "envelope"),
        ({"type": 7, "data": {}}, "event.type", "string"),
        ({"type": "codec_test_invoice", "data": [1]}, "event.data", "object"),
        ({"type": "no_such_event_anywhere", "data": {}}, "event.type", "unknown event type"),
        ({"type": "codec_test_invoice", "data": {"memo": "x"}}, "event.data", "invalid"),
        (
            {"type": "service_event", "data": {"event_id": "e", "surprise": True}},
            "event.data",
            "invalid",
        ),
    ],
)
def test_bad_envelopes_are_validation_errors(
    encoding: str, wire: Any, field: str, reason: str
) -> None:
    with pytest.raises(ValidationFailed, match=reason) as info:
        decode(_pack(encoding, wire), encoding)
    assert info.value.fields["field"] == field
    assert info.value.code == "validation_failed"


def test_json_refuses_nan_instead_of_writing_invalid_json() -> None:
    class CodecTestReading(ServiceEvent):
        value: float

    with pytest.raises(ValidationFailed, match="json"):
        encode(CodecTestReading(value=float("nan")), "json")


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ValueError, match="encoding"):
        codec_for("xml")
