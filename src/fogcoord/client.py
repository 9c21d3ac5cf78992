"""A typed async client for the coordinator's HTTP API.

CLI commands that talk to a running coordinator go through it, so a Python user can drive
everything the CLI can::

    async with FogClient("http://127.0.0.1:8400", api_key) as fog:
        print(await fog.services())
"""

from __future__ import annotations

import os
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote as _quote

import httpx
from pydantic import BaseModel, TypeAdapter

from fogcoord.api.schemas import (
    AuctionCreate,
    BidCreate,
    BidPlaced,
    DeviceRegistered,
    DeviceRegistration,
    DeviceView,
    Heartbeat,
    KeyCreate,
    LedgerHead,
    Liveness,
    QuoteRequest,
    Readiness,
    ServicesView,
    TransferCreate,
    WalletCreate,
    WhoAmI,
)
from fogcoord.auth.models import ApiKeyInfo, IssuedKey, PrincipalKind, Scope
from fogcoord.contracts.harvesting import DeviceCapability, DeviceHealth, SuitabilityScore
from fogcoord.contracts.jobs import JobSubmission, JobView, TaskView
from fogcoord.contracts.marketplace import (
    Ask,
    AuctionResult,
    AuctionStatus,
    AuctionView,
    MarketMetrics,
    PricingQuote,
)
from fogcoord.contracts.studies import EncodedArray, StudySpec, StudyView
from fogcoord.contracts.tokenomics import EscrowHold, Transaction, TransactionResult, WalletInfo

M = TypeVar("M", bound=BaseModel)
DEFAULT_URL = "http://127.0.0.1:8400"
URL_ENV = "FOGCOORD_URL"
KEY_ENV = "FOGCOORD_API_KEY"


class FogApiError(Exception):
    """The API answered with an error: ``code`` is its stable machine-readable code."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class FogClient:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; the decoded JSON body, or :class:`FogApiError`."""
        response = await self._http.request(method, path, **kwargs)
        _raise_for(response)
        if not response.content:
            return None
        return response.json()

    async def _get(self, model: type[M], path: str, **kwargs: Any) -> M:
        return model.model_validate(await self.request("GET", path, **kwargs))

    # --- system --------------------------------------------------------------------------------

    async def healthz(self) -> Liveness:
        return await self._get(Liveness, "/healthz")

    async def readyz(self) -> Readiness:
        """Readiness even when not ready (503 carries the same body)."""
        response = await self._http.get("/readyz")
        return Readiness.model_validate(response.json())

    async def services(self) -> ServicesView:
        return await self._get(ServicesView, "/v1/services")

    async def whoami(self) -> WhoAmI:
        return await self._get(WhoAmI, "/v1/whoami")

    # --- keys ----------------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        kind: PrincipalKind | None = None,
        name: str | None = None,
        principal_id: str | None = None,
        scopes: list[Scope] | None = None,
    ) -> IssuedKey:
        body = KeyCreate(kind=kind, name=name, principal_id=principal_id, scopes=scopes)
        data = await self.request("POST", "/v1/keys", json=body.model_dump(mode="json"))
        return IssuedKey.model_validate(data)

    async def list_keys(self, principal_id: str | None = None) -> list[ApiKeyInfo]:
        params = {"principal_id": principal_id} if principal_id else None
        data = await self.request("GET", "/v1/keys", params=params)
        return TypeAdapter(list[ApiKeyInfo]).validate_python(data)

    async def revoke_key(self, key_id: str) -> ApiKeyInfo:
        return ApiKeyInfo.model_validate(await self.request("DELETE", f"/v1/keys/{key_id}"))

    # --- wallets and transfers -----------------------------------------------------------------

    async def create_wallet(
        self, wallet_id: str | None = None, *, funding_wallet: str | None = None
    ) -> WalletInfo:
        body = WalletCreate(wallet_id=wallet_id, funding_wallet=funding_wallet)
        data = await self.request("POST", "/v1/wallets", json=body.model_dump(mode="json"))
        return WalletInfo.model_validate(data)

    async def wallets(self) -> list[WalletInfo]:
        return TypeAdapter(list[WalletInfo]).validate_python(
            await self.request("GET", "/v1/wallets")
        )

    async def wallet(self, wallet_id: str) -> WalletInfo:
        return await self._get(WalletInfo, f"/v1/wallets/{wallet_id}")

    async def history(
        self, wallet_id: str, *, limit: int = 50, before: str | None = None
    ) -> list[Transaction]:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        data = await self.request("GET", f"/v1/wallets/{wallet_id}/history", params=params)
        return TypeAdapter(list[Transaction]).validate_python(data)

    async def holds(self, wallet_id: str) -> list[EscrowHold]:
        data = await self.request("GET", f"/v1/wallets/{wallet_id}/holds")
        return TypeAdapter(list[EscrowHold]).validate_python(data)

    async def send(
        self,
        transaction_id: str,
        from_wallet: str,
        to_wallet: str,
        amount: Decimal | str,
        memo: str = "",
    ) -> TransactionResult:
        """Pay; safe to retry with the same ``transaction_id`` (never pays twice)."""
        body = TransferCreate(
            transaction_id=transaction_id,
            from_wallet=from_wallet,
            to_wallet=to_wallet,
            amount=Decimal(amount),
            memo=memo,
        )
        data = await self.request("POST", "/v1/transfers", json=body.model_dump(mode="json"))
        return TransactionResult.model_validate(data)

    async def transfer(self, transaction_id: str) -> Transaction:
        return await self._get(Transaction, f"/v1/transfers/{transaction_id}")

    async def ledger(self) -> LedgerHead:
        return await self._get(LedgerHead, "/v1/ledger")

    # --- devices (the agent protocol) ----------------------------------------------------------

    async def register_device(self, body: DeviceRegistration) -> DeviceRegistered:
        """Register a device owned by this client's principal; the reply carries its own key."""
        data = await self.request(
            "POST", "/v1/devices", json=body.model_dump(mode="json", exclude_none=True)
        )
        return DeviceRegistered.model_validate(data)

    async def heartbeat(self, device_id: str, beat: Heartbeat) -> DeviceHealth:
        """Report a device's live state over HTTP (with the device's own key)."""
        data = await self.request(
            "POST", f"/v1/devices/{device_id}/heartbeat", json=beat.model_dump(mode="json")
        )
        return DeviceHealth.model_validate(data)

    async def deregister_device(self, device_id: str) -> None:
        await self.request("DELETE", f"/v1/devices/{device_id}")

    async def devices(
        self,
        *,
        owner: str | None = None,
        region: str | None = None,
        online: bool | None = None,
        charging: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[DeviceCapability]:
        """Devices visible to this key (an operator sees all; others only their own)."""
        filters: dict[str, Any] = {"owner": owner, "region": region}
        filters.update(online=online, charging=charging, limit=limit, offset=offset)
        params = {
            k: (str(v).lower() if isinstance(v, bool) else v)
            for k, v in filters.items()
            if v is not None
        }
        data = await self.request("GET", "/v1/devices", params=params)
        return TypeAdapter(list[DeviceCapability]).validate_python(data)

    async def device(self, device_id: str) -> DeviceView:
        return await self._get(DeviceView, f"/v1/devices/{device_id}")

    async def suitability(self, device_id: str) -> SuitabilityScore:
        return await self._get(SuitabilityScore, f"/v1/devices/{device_id}/suitability")

    # --- market --------------------------------------------------------------------------------

    async def quote(
        self, gflop: float, *, storage_gb: float = 0.0, network_bound: bool = False
    ) -> PricingQuote:
        body = QuoteRequest(gflop=gflop, storage_gb=storage_gb, network_bound=network_bound)
        data = await self.request("POST", "/v1/quotes", json=body.model_dump(mode="json"))
        return PricingQuote.model_validate(data)

    async def create_auction(
        self,
        slots: int,
        gflop: float,
        max_price_per_gflop: Decimal | str,
        *,
        duration_minutes: float | None = None,
        allow_partial: bool = False,
        job_id: str | None = None,
        wallet: str | None = None,
        quote_id: str | None = None,
        storage_gb: float = 0.0,
        network_bound: bool = False,
    ) -> AuctionView:
        """Open a reverse auction as this client's principal, paying from ``wallet``."""
        body = AuctionCreate(
            slots=slots,
            gflop=gflop,
            max_price_per_gflop=Decimal(max_price_per_gflop),
            duration_minutes=duration_minutes,
            allow_partial=allow_partial,
            job_id=job_id,
            wallet=wallet,
            quote_id=quote_id,
            storage_gb=storage_gb,
            network_bound=network_bound,
        )
        data = await self.request(
            "POST", "/v1/auctions", json=body.model_dump(mode="json", exclude_none=True)
        )
        return AuctionView.model_validate(data)

    async def auctions(
        self, status: AuctionStatus | str | None = None, *, limit: int = 100
    ) -> list[AuctionView]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = AuctionStatus(status).value
        data = await self.request("GET", "/v1/auctions", params=params)
        return TypeAdapter(list[AuctionView]).validate_python(data)

    async def auction(self, auction_id: str) -> AuctionView:
        return await self._get(AuctionView, _auction_path(auction_id))

    async def asks(self, auction_id: str) -> list[Ask]:
        """The asks of one of this principal's auctions, best first."""
        data = await self.request("GET", f"{_auction_path(auction_id)}/asks")
        return TypeAdapter(list[Ask]).validate_python(data)

    async def submit_bid(
        self, auction_id: str, provider: str, price_per_gflop: Decimal | str
    ) -> BidPlaced:
        """Ask ``price_per_gflop`` for device ``provider``; a refused ask is a 409 ``bid_refused``
        :class:`FogApiError` whose ``body["rule"]`` names the rule it broke."""
        body = BidCreate(provider=provider, price_per_gflop=Decimal(price_per_gflop))
        data = await self.request(
            "POST", f"{_auction_path(auction_id)}/bids", json=body.model_dump(mode="json")
        )
        return BidPlaced.model_validate(data)

    async def settle_auction(self, auction_id: str) -> AuctionResult:
        data = await self.request("POST", f"{_auction_path(auction_id)}/settle")
        return AuctionResult.model_validate(data)

    async def cancel_auction(self, auction_id: str) -> AuctionResult:
        data = await self.request("POST", f"{_auction_path(auction_id)}/cancel")
        return AuctionResult.model_validate(data)

    async def market_metrics(self) -> MarketMetrics:
        return await self._get(MarketMetrics, "/v1/market/metrics")

    # --- jobs ----------------------------------------------------------------------------------

    async def submit_job(self, body: JobSubmission) -> JobView:
        data = await self.request("POST", "/v1/jobs", json=body.model_dump(mode="json"))
        return JobView.model_validate(data)

    async def jobs(self, state: str | None = None) -> list[JobView]:
        params = {"state": state} if state else {}
        data = await self.request("GET", "/v1/jobs", params=params)
        return [JobView.model_validate(j) for j in data]

    async def job(self, job_id: str) -> JobView:
        return await self._get(JobView, _job_path(job_id))

    async def job_tasks(self, job_id: str, offset: int = 0, limit: int = 1000) -> list[TaskView]:
        data = await self.request(
            "GET", f"{_job_path(job_id)}/tasks", params={"offset": offset, "limit": limit}
        )
        return [TaskView.model_validate(t) for t in data]

    async def job_output(self, job_id: str, index: int) -> bytes:
        """The verified output of task ``index``, as the raw bytes the module wrote."""
        return await self.request_bytes("GET", f"{_job_path(job_id)}/tasks/{int(index)}/output")

    async def job_results(self, job_id: str) -> bytes:
        """Every verified output and a manifest, as a zip archive."""
        return await self.request_bytes("GET", f"{_job_path(job_id)}/results")

    async def cancel_job(self, job_id: str) -> JobView:
        data = await self.request("POST", f"{_job_path(job_id)}/cancel")
        return JobView.model_validate(data)

    # --- studies -------------------------------------------------------------------------------

    async def create_study(self, spec: StudySpec) -> StudyView:
        data = await self.request("POST", "/v1/studies", json=spec.model_dump(mode="json"))
        return StudyView.model_validate(data)

    async def study(self, study_id: str) -> StudyView:
        return await self._get(StudyView, f"/v1/studies/{_quote(study_id, safe='')}")

    async def studies(self) -> list[StudyView]:
        return [StudyView.model_validate(s) for s in await self.request("GET", "/v1/studies")]

    async def study_model(self, study_id: str) -> dict[str, EncodedArray]:
        data = await self.request("GET", f"/v1/studies/{_quote(study_id, safe='')}/model")
        return {k: EncodedArray.model_validate(v) for k, v in data.items()}

    async def cancel_study(self, study_id: str) -> StudyView:
        data = await self.request("POST", f"/v1/studies/{_quote(study_id, safe='')}/cancel")
        return StudyView.model_validate(data)

    async def request_bytes(self, method: str, path: str, **kwargs: Any) -> bytes:
        """Like :meth:`request`, for endpoints that answer raw bytes."""
        response = await self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.content


def _raise_for(response: httpx.Response) -> None:
    """:class:`FogApiError` for an error status, with the body's code and detail."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"error": "http_error", "detail": response.text}
    if not isinstance(body, dict):
        body = {"error": "http_error", "detail": str(body)}
    raise FogApiError(
        response.status_code,
        str(body.get("error", "http_error")),
        str(body.get("detail", "")),
        body,
    )


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{_quote(job_id, safe='')}"


def _auction_path(auction_id: str) -> str:
    # an id is data, never more path: "../keys" must not reach another route
    return f"/v1/auctions/{_quote(auction_id, safe='')}"
