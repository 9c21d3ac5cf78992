"""The live dashboard: a static page, its snapshot and its Server-Sent Events stream.

The page itself holds no secret: it reads an API key from its own URL (or asks for one) and
passes it as ``?key=`` to the two data routes, because ``EventSource`` cannot send headers.
Those two routes therefore also accept the key as a query parameter; every other route keeps to
headers only.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.security import (
    APIKeyHeader,
    APIKeyQuery,
    HTTPAuthorizationCredentials,
    HTTPBearer,
)

from fogcoord.api.security import coordinator
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import Forbidden, NotFound, Unauthenticated
from fogcoord.coordinator import Coordinator

router = APIRouter(tags=["dashboard"])

HEARTBEAT_S = 15.0
"""Idle time after which the stream sends a comment line, so that proxies keep it open."""
RETRY_MS = 2_000
"""How long a disconnected ``EventSource`` waits before it reconnects."""

STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PAGE_HEADERS = {
    # the page only ever talks to its own origin; the key in its URL must not travel further
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_query = APIKeyQuery(
    name="key", auto_error=False, description="API key (for EventSource, which sends no headers)"
)


async def stats_reader(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    header_key: str | None = Depends(_header),
    query_key: str | None = Depends(_query),
) -> Identity:
    """Like ``require(Scope.STATS_READ)``, with the key also accepted as ``?key=``."""
    key = bearer.credentials if bearer is not None else header_key or query_key
    if not key:
        raise Unauthenticated()
    who = coordinator(request).auth.authenticate(key)
    if not who.allows(Scope.STATS_READ):
        raise Forbidden(
            f"this key lacks the {Scope.STATS_READ.value!r} scope", scope=Scope.STATS_READ.value
        )
    return who


@cache
def _asset(name: str) -> bytes:
    return resources.files("fogcoord.api").joinpath("static", name).read_bytes()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(_asset("dashboard.html"), headers=PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    media = STATIC.get(name)
    if media is None:
        raise NotFound("static file", name)
    return Response(_asset(name), media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/v1/stats/snapshot", summary="Everything the dashboard shows, with recent history")
async def snapshot(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(stats_reader),
) -> Response:
    await _first_collection(coord)
    return Response(dumps(await coord.stats.snapshot()), media_type="application/json")


async def _first_collection(coord: Coordinator) -> None:
    # until the first scheduled collection (up to an interval after start) there would be no
    # figures to show: a page opened early collects them once instead of showing nothing
    if not coord.stats.latest:
        await coord.stats.collect_metrics()


@router.get(
    "/v1/stats/stream",
    summary="Live updates as Server-Sent Events",
    description=(
        "First an `event: snapshot` (as `/v1/stats/snapshot`), then one message per update: "
        "`event: event` (a bus event), `event: metrics` (after each collection), `event: alert` "
        f"(an alert's transition). A comment line is sent after {HEARTBEAT_S:g} s of quiet."
    ),
    response_class=StreamingResponse,
)
async def stream(
    request: Request,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(stats_reader),
) -> StreamingResponse:
    return StreamingResponse(
        event_stream(coord, request), media_type="text/event-stream", headers=SSE_HEADERS
    )


def frame(event: str, data: Any) -> str:
    """One Server-Sent Events message."""
    return f"event: {event}\ndata: {dumps(data)}\n\n"


async def event_stream(
    coord: Coordinator, request: Request | None = None, *, heartbeat_s: float = HEARTBEAT_S
) -> AsyncGenerator[str, None]:
    """The stream's text: a snapshot, then every live update, with heartbeats when quiet."""
    live = coord.stats.live()
    pending = asyncio.get_running_loop().create_task(_next(live))
    try:
        # the listener registers at its first step: before the snapshot is taken, so that
        # nothing published after the snapshot can be missed
        await asyncio.sleep(0)
        yield f"retry: {RETRY_MS}\n\n"
        await _first_collection(coord)
        yield frame("snapshot", await coord.stats.snapshot())
        while True:
            done, _ = await asyncio.wait({pending}, timeout=heartbeat_s)
            if not done:
                if request is not None and await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:  # the stats service is stopping
                return
            pending = asyncio.get_running_loop().create_task(_next(live))
            yield frame(str(item.get("type", "message")), item)
    finally:
        # no awaiting here: a cancelled response task may be cancelled again at every await
        if pending.done():
            if isinstance(live, AsyncGenerator):
                _close_later(live.aclose())
        else:
            pending.cancel()  # closes the live iterator from inside, which unregisters it


async def _next(live: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await live.__anext__()


_closing: set[asyncio.Task[None]] = set()


def _close_later(closing: Awaitable[None]) -> None:
    async def run() -> None:
        await closing

    task = asyncio.get_running_loop().create_task(run())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def dumps(data: Any) -> str:
    """Compact JSON a browser can parse: infinities and NaN (which JSON lacks) become null."""
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), separators=(",", ":"), allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data
