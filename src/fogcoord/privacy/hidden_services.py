"""Hidden services hosted by the coordinator for their owners, paid per access.

An owner asks for a service in front of a TCP target; the coordinator keeps the service's
Ed25519 key (so the address survives restarts), publishes its descriptor through the relays
(introduction points, HSDirs on the hash ring, an only-increasing revision counter) and answers
introductions. The address exists at once; "published" becomes true when the descriptor is
stored. Each access costs ``access_fee_tokens``: a client buys a one-use ticket, paid from its
wallet to the owner's through tokenomics, and presents it (encrypted to the service) when it
introduces itself; a client without a valid ticket is refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlalchemy.engine import Engine

from fogcoord.contracts.errors import Forbidden, NotFound
from fogcoord.onion.client import OnionClient
from fogcoord.onion.descriptor import RevisionCounter
from fogcoord.onion.directory import Consensus
from fogcoord.onion.hidden import ClientInfo, OnionService
from fogcoord.onion.hsaddr import onion_address

log = logging.getLogger(__name__)

metadata = sa.MetaData()
services_t = sa.Table(
    "privacy_hidden_services",
    metadata,
    sa.Column("address", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(96), nullable=False),
    sa.Column("private_key", sa.LargeBinary, nullable=False),
    sa.Column("target_host", sa.String(255), nullable=False),
    sa.Column("target_port", sa.Integer, nullable=False),
    sa.Column("intro_points", sa.Integer, nullable=False),
)

Pay = Callable[[str, str, str], Awaitable[None]]
"""(payer principal, service owner, ticket id): move the access fee, or raise."""


@dataclass
class Hosted:
    address: str
    owner: str
    service: OnionService
    target: tuple[str, int]
    tickets: set[bytes] = field(default_factory=set)
    task: asyncio.Task[Any] | None = None
    error: str = ""


class HiddenServiceHost:
    def __init__(
        self,
        engine: Engine,
        consensus: Callable[[], Consensus],
        pay: Pay,
        *,
        replication_factor: int,
    ) -> None:
        metadata.create_all(engine)
        self.engine = engine
        self.revisions = RevisionCounter(engine)
        self._consensus = consensus
        self._pay = pay
        self.replication_factor = replication_factor
        self.hosted: dict[str, Hosted] = {}

    def _client(self) -> OnionClient:
        return OnionClient(self._consensus(), timeout=10.0)

    async def create(
        self, owner: str, host: str, port: int, intro_points: int, key: Ed25519PrivateKey | None
    ) -> Hosted:
        service_key = key or Ed25519PrivateKey.generate()
        address = onion_address(
            service_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        if key is None:
            raw = service_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            await asyncio.to_thread(self._save, address, owner, raw, host, port, intro_points)
        tickets: set[bytes] = set()

        async def admit(info: ClientInfo) -> bool:
            if info.credential in tickets:
                tickets.discard(info.credential)  # one use per ticket
                return True
            return False

        service = OnionService(
            self._client(),
            service_key,
            (host, port),
            revision_counter=self.revisions,
            intro_points=intro_points,
            replication_factor=self.replication_factor,
            on_access=admit,
        )
        hosted = Hosted(address, owner, service, (host, port), tickets)
        self.hosted[address] = hosted
        hosted.task = asyncio.get_running_loop().create_task(self._publish(hosted))
        return hosted

    async def _publish(self, hosted: Hosted) -> None:
        try:
            await hosted.service.publish()
        except Exception as exc:  # reported on the service's view; a later republish retries
            hosted.error = str(exc) or type(exc).__name__
            log.warning("hidden service %s not published: %s", hosted.address, hosted.error)

    def _save(self, address: str, owner: str, raw: bytes, host: str, port: int, intro: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                services_t.insert().values(
                    address=address,
                    owner=owner,
                    private_key=raw,
                    target_host=host,
                    target_port=port,
                    intro_points=intro,
                )
            )

    async def restore(self) -> None:
        """Host again every service of an earlier run (same keys, same addresses)."""

        def rows() -> list[dict[str, Any]]:
            with self.engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(services_t.select())]

        for row in await asyncio.to_thread(rows):
            key = Ed25519PrivateKey.from_private_bytes(bytes(row["private_key"]))
            try:
                await self.create(
                    row["owner"], row["target_host"], row["target_port"], row["intro_points"], key
                )
            except Exception as exc:
                log.warning("hidden service %s not restored: %s", row["address"], exc)

    async def refresh(self) -> int:
        """The relays changed: every service adopts the new consensus and republishes if its
        responsible directories changed or an introduction point is gone (or it never
        published); how many republished."""
        consensus = self._consensus()
        count = 0
        for hosted in list(self.hosted.values()):
            try:
                if await hosted.service.republish_if_changed(consensus):
                    count += 1
                hosted.error = ""
            except Exception as exc:  # kept on the service's view; the next change retries
                hosted.error = str(exc) or type(exc).__name__
        return count

    def get(self, address: str) -> Hosted:
        hosted = self.hosted.get(address)
        if hosted is None:
            raise NotFound("hidden service", address)
        return hosted

    async def buy_ticket(self, address: str, payer: str) -> str:
        hosted = self.get(address)
        ticket = secrets.token_bytes(16)
        await self._pay(payer, hosted.owner, ticket.hex())
        hosted.tickets.add(ticket)
        return ticket.hex()

    async def remove(self, address: str, who: str, *, admin: bool) -> None:
        hosted = self.get(address)
        if hosted.owner != who and not admin:
            raise Forbidden("only the service's owner or an operator may remove it")
        await self._close(hosted)
        del self.hosted[address]

        def delete() -> None:
            with self.engine.begin() as conn:
                conn.execute(services_t.delete().where(services_t.c.address == address))

        await asyncio.to_thread(delete)

    async def _close(self, hosted: Hosted) -> None:
        if hosted.task is not None and not hosted.task.done():
            hosted.task.cancel()
        await hosted.service.close()
        await hosted.service.client.close()

    async def close(self) -> None:
        for hosted in list(self.hosted.values()):
            await self._close(hosted)
