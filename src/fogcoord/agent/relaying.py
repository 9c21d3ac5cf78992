"""Running an onion relay beside (or instead of) the agent: serve cells, stay in the consensus.

The relay listens on TCP, registers its descriptor with the coordinator (the directory authority),
signed with its own Ed25519 identity key, and refreshes the registration so the consensus keeps
it while it runs; it withdraws itself when stopped. The coordinator records the authenticated
principal as the relay's owner, which path selection uses to keep one owner off two hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fogcoord.client import FogApiError, FogClient
from fogcoord.onion.descriptor import DescriptorStore
from fogcoord.onion.directory import registration_message
from fogcoord.onion.hidden import install_hs_relay
from fogcoord.onion.hsdir import install_hsdir
from fogcoord.onion.policy import ExitPolicy
from fogcoord.onion.relay import Relay

log = logging.getLogger(__name__)

REFRESH_S = 60.0


def signed_registration(relay: Relay) -> dict[str, Any]:
    """The registration body: the descriptor and the relay's signature over it."""
    info = relay.descriptor().to_dict()
    info.pop("owner", None)  # the coordinator sets the owner from the authenticated key
    signature = relay.identity.signing_key.sign(registration_message(info)).hex()
    return {"relay": info, "signature": signature}


class RelayRunner:
    def __init__(
        self,
        coordinator_url: str,
        api_key: str | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        exit_relay: bool = False,
        exit_policy: list[str] | None = None,
        bandwidth: int = 1000,
        max_services_per_node: int = 5,
    ) -> None:
        self.url = coordinator_url
        self.api_key = api_key
        policy = ExitPolicy.parse(exit_policy) if exit_policy else None
        self.relay = Relay(host, port, bandwidth=bandwidth, exit=exit_relay, exit_policy=policy)
        # every relay can serve as an HSDir, an introduction point and a rendezvous point
        install_hsdir(self.relay, DescriptorStore())
        install_hs_relay(self.relay, max_services_per_node=max_services_per_node)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.relay.start()
        await self.register()
        self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def register(self) -> dict[str, Any]:
        async with FogClient(self.url, self.api_key) as fog:
            data: dict[str, Any] = await fog.request(
                "POST", "/v1/onion/relays", json=signed_registration(self.relay)
            )
        return data

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.register()
            except (FogApiError, OSError) as exc:
                log.warning("could not refresh the relay's registration: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(FogApiError, OSError):
            async with FogClient(self.url, self.api_key) as fog:
                await fog.request("DELETE", f"/v1/onion/relays/{self.relay.identity.fingerprint}")
        await self.relay.stop()
