"""The agent protocol: register, heartbeat (HTTP or WebSocket), deregister, list devices.

A device is registered by its owner (the authenticated principal, never a field of the body),
proves it holds its Ed25519 key by signing the registration, and receives its own API key. From
then on the device speaks only with that key, and only for itself.
"""

from __future__ import annotations

import asyncio
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, Query, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from fogcoord.api.schemas import DeviceRegistered, DeviceRegistration, DeviceView, Heartbeat
from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, PrincipalKind, Scope
from fogcoord.contracts.errors import (
    Conflict,
    FogError,
    Forbidden,
    NotFound,
    Unauthenticated,
    ValidationFailed,
)
from fogcoord.contracts.harvesting import DeviceCapability, DeviceHealth, SuitabilityScore
from fogcoord.coordinator import Coordinator

router = APIRouter(prefix="/v1/devices", tags=["devices"])


def registration_message(device_id: str, public_key: str) -> bytes:
    """The bytes a device signs to prove it holds the private half of ``public_key``.

    A registration without a ``device_id`` (the coordinator assigns one) signs an empty id.
    """
    return f"fogcoord-register|{device_id}|{public_key}".encode()


def _verify_possession(device_id: str, body: DeviceRegistration) -> None:
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(body.public_key))
        key.verify(bytes.fromhex(body.signature), registration_message(device_id, body.public_key))
    except (InvalidSignature, ValueError):
        raise ValidationFailed(
            "signature", "not a valid Ed25519 signature of the registration by public_key"
        ) from None


def _may_see(coord: Coordinator, device_id: str, who: Identity) -> None:
    """Owner, the device itself or an operator; others are told the device does not exist."""
    reg = coord.harvesting.registry
    r = reg.row(device_id)
    meta = reg.meta[r] if r is not None else None
    if meta is None:
        raise NotFound("device", device_id)
    me = who.principal.principal_id
    if me not in (meta.owner, meta.principal_id) and not who.allows(Scope.ADMIN):
        raise NotFound("device", device_id)


@router.post("", response_model=DeviceRegistered, status_code=201, summary="Register a device")
async def register(
    body: DeviceRegistration,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.DEVICES_WRITE)),
) -> DeviceRegistered:
    if who.principal.kind is PrincipalKind.DEVICE:
        raise Forbidden("a device cannot register devices; its owner registers it")
    # the signature covers the id the device sent: it cannot know one assigned here
    _verify_possession(body.device_id or "", body)
    device_id = body.device_id or f"dev-{uuid.uuid4().hex[:16]}"
    if device_id in coord.harvesting.registry:
        raise Conflict(f"device {device_id!r} is already registered", device=device_id)
    store = coord.auth.store
    principal = await asyncio.to_thread(store.create_principal, PrincipalKind.DEVICE, device_id)
    issued = await asyncio.to_thread(store.issue_key, principal.principal_id)
    cap = DeviceCapability(
        device_id=device_id,
        owner=who.principal.principal_id,
        **body.model_dump(exclude={"device_id", "signature"}),
    )
    try:
        device = await coord.harvesting.register_device(cap, principal_id=principal.principal_id)
    except FogError:
        await asyncio.to_thread(store.revoke, issued.info.key_id)
        raise
    health = await coord.harvesting.monitor_device_health(device_id)
    return DeviceRegistered(device=device, device_key=issued.key, health=health)


def _device_self(coord: Coordinator, device_id: str, who: Identity) -> None:
    if coord.harvesting.device_of(who.principal.principal_id) != device_id:
        if device_id not in coord.harvesting.registry:
            raise NotFound("device", device_id)
        raise Forbidden("a device may only report for itself", device=device_id)


@router.post("/{device_id}/heartbeat", response_model=DeviceHealth, summary="Report live state")
async def heartbeat(
    device_id: str,
    body: Heartbeat,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.DEVICES_WRITE)),
) -> DeviceHealth:
    _device_self(coord, device_id, who)
    return await coord.harvesting.heartbeat(device_id, **body.model_dump())


@router.delete("/{device_id}", status_code=204, summary="Deregister a device")
async def deregister(
    device_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.DEVICES_WRITE)),
) -> None:
    _may_see(coord, device_id, who)
    meta = coord.harvesting.registry.meta[coord.harvesting.registry.rows[device_id]]
    if (
        meta is not None
        and meta.owner != who.principal.principal_id
        and not who.allows(Scope.ADMIN)
    ):
        raise Forbidden("only the device's owner or an operator may deregister it")
    await coord.harvesting.deregister_device(device_id)
    if meta is not None:
        for key in await asyncio.to_thread(coord.auth.store.list_keys, meta.principal_id):
            if key.revoked_at is None:
                await asyncio.to_thread(coord.auth.store.revoke, key.key_id)


@router.get("", response_model=list[DeviceCapability], summary="List devices (filters)")
async def list_devices(
    owner: str | None = None,
    region: str | None = None,
    online: bool | None = None,
    charging: bool | None = None,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.SERVICES_READ)),
) -> list[DeviceCapability]:
    if not who.allows(Scope.ADMIN):
        owner = who.principal.principal_id
    return coord.harvesting.list_devices(
        owner=owner, region=region, online=online, charging=charging, limit=limit, offset=offset
    )


@router.get("/{device_id}", response_model=DeviceView, summary="One device and its health")
async def get_device(
    device_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.SERVICES_READ)),
) -> DeviceView:
    _may_see(coord, device_id, who)
    r = coord.harvesting.registry.rows[device_id]
    return DeviceView(
        device=coord.harvesting.registry.capability(r),
        health=await coord.harvesting.monitor_device_health(device_id),
    )


@router.get("/{device_id}/suitability", response_model=SuitabilityScore, summary="Score breakdown")
async def suitability(
    device_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.SERVICES_READ)),
) -> SuitabilityScore:
    _may_see(coord, device_id, who)
    return await coord.harvesting.assess_device_suitability(device_id)


@router.websocket("/{device_id}/channel")
async def channel(websocket: WebSocket, device_id: str) -> None:
    """A device's long-lived channel: heartbeats up, work down.

    Authenticate with ``Authorization: Bearer <device key>``. Each text frame is JSON: the agent
    sends ``{"type": "heartbeat", "battery_percent": .., "charging": .., "thermal_celsius": ..}``
    and gets ``{"type": "health", ...}`` back; a bad frame gets ``{"type": "error", ...}`` and
    the channel stays open.
    """
    coord: Coordinator = websocket.app.state.coordinator
    auth = websocket.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
    try:
        who = coord.auth.authenticate(key)
        if not who.allows(Scope.DEVICES_WRITE):
            raise Forbidden("this key lacks the 'devices:write' scope")
        _device_self(coord, device_id, who)
    except (Unauthenticated, Forbidden, NotFound) as exc:
        await websocket.close(
            code=4401 if isinstance(exc, Unauthenticated) else 4403, reason=exc.code
        )
        return
    await websocket.accept()
    coord.channels.connected(device_id, websocket)
    try:
        while True:
            try:
                message = await websocket.receive_json()
            except (ValueError, KeyError):  # not JSON, or a binary frame: answer, stay open
                reply: dict[str, object] = {
                    "type": "error",
                    "error": "validation_failed",
                    "detail": "a frame must be a JSON text message",
                }
            else:
                reply = await _handle(coord, device_id, message)
            await websocket.send_json(reply)
    except WebSocketDisconnect:
        pass
    finally:
        coord.channels.disconnected(device_id, websocket)
        if not coord.channels.is_connected(device_id):
            coord.jobs.device_gone(device_id)


async def _handle(coord: Coordinator, device_id: str, message: object) -> dict[str, object]:
    if isinstance(message, dict) and message.get("type") == "task_result":
        return await coord.jobs.on_result(device_id, message)
    if isinstance(message, dict) and message.get("type") == "study_result":
        return coord.studies.on_reply(device_id, message)
    if not isinstance(message, dict) or message.get("type") != "heartbeat":
        return {"type": "error", "error": "validation_failed", "detail": "unknown message type"}
    try:
        beat = Heartbeat.model_validate({k: v for k, v in message.items() if k != "type"})
        health = await coord.harvesting.heartbeat(device_id, **beat.model_dump())
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        return {"type": "error", "error": "validation_failed", "detail": f"{field}: {first['msg']}"}
    except FogError as exc:
        return {"type": "error", **exc.to_dict()}
    return {"type": "health", **health.model_dump(mode="json")}
