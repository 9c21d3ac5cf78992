"""Bytes on the wire for a :class:`ServiceEvent`: JSON or MessagePack.

Both encodings carry ``event.to_wire()`` (``{"type": ..., "data": ...}``, the data in pydantic's
JSON mode, so ``Decimal`` travels as a string and nested models as objects); decoding looks the
type up in the event registry and validates the data back into that exact class. Anything that
cannot be decoded raises :class:`~fogcoord.contracts.errors.ValidationFailed`.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol

import msgpack
from pydantic import ValidationError

from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.events import ServiceEvent, event_class

Encoding = Literal["json", "msgpack"]
ENCODINGS: tuple[Encoding, ...] = ("json", "msgpack")


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    def encode(self, event: ServiceEvent) -> bytes: ...

    def decode(self, data: bytes) -> ServiceEvent: ...


def _event_from_wire(wire: Any, encoding: str) -> ServiceEvent:
    if not isinstance(wire, dict) or set(wire) != {"type", "data"}:
        raise ValidationFailed("event", f"{encoding} payload is not a {{type, data}} envelope")
    event_type, data = wire["type"], wire["data"]
    if not isinstance(event_type, str):
        raise ValidationFailed("event.type", "must be a string")
    if not isinstance(data, dict):
        raise ValidationFailed("event.data", "must be an object")
    try:
        cls = event_class(event_type)
    except KeyError:
        raise ValidationFailed("event.type", f"unknown event type {event_type!r}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(
            "event.data", f"invalid {event_type!r}: {exc.error_count()} error(s): {exc}"
        ) from None


class JsonCodec:
    name = "json"

    def encode(self, event: ServiceEvent) -> bytes:
        try:
            text = json.dumps(
                event.to_wire(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except ValueError as exc:
            raise ValidationFailed("event", f"cannot encode as json: {exc}") from None
        return text.encode("utf-8")

    def decode(self, data: bytes) -> ServiceEvent:
        try:
            wire = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValidationFailed("event", f"undecodable json: {exc}") from None
        return _event_from_wire(wire, self.name)


class MsgpackCodec:
    name = "msgpack"

    def encode(self, event: ServiceEvent) -> bytes:
        try:
            packed: bytes = msgpack.packb(event.to_wire(), use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationFailed("event", f"cannot encode as msgpack: {exc}") from None
        return packed

    def decode(self, data: bytes) -> ServiceEvent:
        try:
            wire: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ValidationFailed("event", f"undecodable msgpack: {exc!r}") from None
        return _event_from_wire(wire, self.name)


def codec_for(encoding: str) -> Codec:
    """The codec named by ``orchestration.messaging.encoding``."""
    if encoding == "json":
        return JsonCodec()
    if encoding == "msgpack":
        return MsgpackCodec()
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def encode(event: ServiceEvent, encoding: str = "json") -> bytes:
    return codec_for(encoding).encode(event)


def decode(data: bytes, encoding: str = "json") -> ServiceEvent:
    return codec_for(encoding).decode(data)
