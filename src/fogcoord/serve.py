"""Running the coordinator under uvicorn with clean signal handling.

The first SIGINT/SIGTERM stops accepting requests and shuts services down gracefully (the bus is
drained for at most ``orchestration.shutdown_grace_seconds``); a second one forces an immediate
exit. uvicorn's own signal capture is replaced because it re-raises the signal after shutdown,
which would turn a clean Ctrl-C into a non-zero exit.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager

import uvicorn

from fogcoord.api.app import create_app
from fogcoord.config import FogConfig
from fogcoord.coordinator import Coordinator

FORCED_EXIT_CODE = 130


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path of a long-running server.

    Everything built at start-up (services, registries, the loaded ledger and devices) is moved
    out of the collector's generations (``gc.freeze``), and the youngest generation is collected
    less often: a server's allocations are mostly short-lived and freed by reference counting,
    while every collection of a generation holding thousands of connections pauses all requests.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


OnReady = Callable[[Coordinator, int], Awaitable[bool]]
"""Called once the API listens, with the bound port; returning False stops the server."""


async def serve(config: FogConfig, *, on_ready: OnReady | None = None) -> int:
    """Serve until a signal arrives (or ``on_ready`` says stop); returns the exit code."""
    coord = Coordinator(config)
    app = create_app(coord, manage_lifecycle=False)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
            # agents keep one connection each and use it every few seconds (bids, HTTP
            # heartbeats): closing idle ones after uvicorn's default 5 s races their reuse
            timeout_keep_alive=75,
        )
    )
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            server.should_exit = True
            return
        server.force_exit = True
        print("second signal: forcing exit", file=sys.stderr, flush=True)
        os._exit(FORCED_EXIT_CODE)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await coord.start()
        tune_gc()
        serve_task = asyncio.create_task(server.serve())
        # uvicorn exposes start-up only as a flag, so poll it briefly.
        while not server.started and not serve_task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if server.started and on_ready is not None:
            port = config.server.port
            if port == 0 and server.servers:
                port = int(server.servers[0].sockets[0].getsockname()[1])
            if not await on_ready(coord, port):
                server.should_exit = True
        await serve_task
    finally:
        await coord.stop(graceful=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0 if server.started else 1
