"""Authentication as a lifecycle service: the key store plus the first operator key."""

from __future__ import annotations

import asyncio

from fogcoord.auth.models import Identity, IssuedKey, PrincipalKind
from fogcoord.auth.store import KeyStore
from fogcoord.clock import Clock
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.lifecycle import ServiceBase
from fogcoord.storage.service import StorageService


class AuthService(ServiceBase):
    service_type = "auth"

    def __init__(
        self,
        storage: StorageService,
        *,
        operator_key: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__("auth", dependencies=("storage",), clock=clock)
        self._storage = storage
        self._operator_key = operator_key
        self._store: KeyStore | None = None
        self.bootstrap_key: IssuedKey | None = None
        """Set when start-up created the first operator: print it once, it is not kept."""

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            raise RuntimeError("auth service is not started")
        return self._store

    async def on_start(self) -> None:
        self._store = await asyncio.to_thread(KeyStore, self._storage.engine, self.clock)
        await asyncio.to_thread(self._bootstrap)

    def _bootstrap(self) -> None:
        store = self.store
        if store.has_operator():
            return
        operator = store.create_principal(PrincipalKind.OPERATOR, "operator")
        issued = store.issue_key(operator.principal_id, key=self._operator_key)
        if self._operator_key is None:
            self.bootstrap_key = issued

    def authenticate(self, key: str) -> Identity:
        return self.store.authenticate(key)

    async def check_health(self) -> HealthStatus:
        return HealthStatus.passing("key store open")
