"""Child process for ``orchestration.rss``: an initialized orchestrator sitting idle.

Run as ``python -m benchmarks._idle_orchestrator`` from the directory holding ``benchmarks``.
It builds the orchestration service with its registry and in-process bus, initializes the
services, prints one JSON ready line on stdout and idles (its event loop and health loop alive)
until stdin closes, then shuts the services down.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

HEAVY = ("fastapi", "starlette", "uvicorn", "wasmtime", "numpy")
"""Packages the orchestration service does not need; importing them inflates the figure."""


async def main() -> None:
    from benchmarks._services import build_orchestrator

    orchestrator = await build_orchestrator()
    registry = await orchestrator.initialize_services()
    await orchestrator.health_check_all_services()
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY and "." not in m)
    ready = {
        "ready": True,
        "pid": os.getpid(),
        "services": [s.service_id for s in registry.services],
        "heavy_modules": heavy,
        "modules": len(sys.modules),
    }
    print(json.dumps(ready), flush=True)

    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def on_stdin() -> None:
        if not closed.done():
            closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        await closed
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await orchestrator.shutdown_services()


if __name__ == "__main__":
    asyncio.run(main())
