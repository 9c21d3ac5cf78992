from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fogcoord.api.app import create_app
from fogcoord.auth.models import PrincipalKind, Scope
from fogcoord.client import FogApiError, FogClient
from fogcoord.coordinator import Coordinator
from tests.helpers import make_config, running_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Coordinator, FogClient, str]]:
    async with running_api(make_config(tmp_path)) as ctx:
        yield ctx


def anon(coord: Coordinator, key: str | None = None) -> FogClient:
    transport = httpx.ASGITransport(app=create_app(coord, manage_lifecycle=False))
    return FogClient("http://test", key or "", transport=transport)


async def test_probes_are_open(api: tuple[Coordinator, FogClient, str]) -> None:
    coord, _, _ = api
    async with anon(coord) as client:
        assert (await client.healthz()).status == "ok"
        ready = await client.readyz()
    assert ready.ready
    assert set(ready.services) == {
        "storage",
        "auth",
        "tokenomics",
        "harvesting",
        "marketplace",
        "privacy",
        "jobs",
        "stats",
        "studies",
    }


async def test_readyz_is_503_when_a_service_is_critical(
    api: tuple[Coordinator, FogClient, str],
) -> None:
    coord, client, _ = api
    await coord.storage.stop()
    response = await client._http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["services"]["storage"]["state"] == "critical"


async def test_services_lists_registry_with_health_and_breakers(
    api: tuple[Coordinator, FogClient, str],
) -> None:
    _, client, _ = api
    view = await client.services()
    ids = [s.service_id for s in view.services]
    assert ids == [
        "storage",
        "auth",
        "harvesting",
        "privacy",
        "stats",
        "tokenomics",
        "marketplace",
        "studies",
        "jobs",
    ]
    assert view.start_levels == [
        ["storage"],
        ["auth", "harvesting", "privacy", "stats", "tokenomics"],
        ["marketplace", "studies"],
        ["jobs"],
    ]
    assert all(s.breaker.value == "closed" for s in view.services)
    assert all(s.health is not None and s.health.state.value == "passing" for s in view.services)


async def test_missing_and_wrong_keys_are_401(api: tuple[Coordinator, FogClient, str]) -> None:
    coord, _, _ = api
    async with anon(coord) as client:
        with pytest.raises(FogApiError) as missing:
            await client.services()
    assert (missing.value.status, missing.value.code) == (401, "unauthenticated")
    async with anon(coord, "fc_0123456789abcdef_" + "x" * 43) as client:
        with pytest.raises(FogApiError) as wrong:
            await client.whoami()
    assert wrong.value.status == 401
    async with anon(coord, "not-a-key") as client:
        with pytest.raises(FogApiError) as malformed:
            await client.whoami()
    assert malformed.value.status == 401


async def test_key_without_scope_is_403_and_changes_nothing(
    api: tuple[Coordinator, FogClient, str],
) -> None:
    coord, admin, _ = api
    issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name="alice")
    before = await admin.list_keys()
    async with anon(coord, issued.key) as alice:
        assert (await alice.whoami()).principal.name == "alice"
        with pytest.raises(FogApiError) as denied:
            await alice.create_key(kind=PrincipalKind.OPERATOR, name="mallory")
        with pytest.raises(FogApiError) as denied_revoke:
            await alice.revoke_key(before[0].key_id)
    assert (denied.value.status, denied.value.code) == (403, "forbidden")
    assert denied_revoke.value.status == 403
    assert await admin.list_keys() == before


async def test_limited_scopes_are_enforced(api: tuple[Coordinator, FogClient, str]) -> None:
    coord, admin, _ = api
    issued = await admin.create_key(
        kind=PrincipalKind.REQUESTER, name="reader", scopes=[Scope.JOBS_READ]
    )
    assert issued.info.scopes == (Scope.JOBS_READ,)
    async with anon(coord, issued.key) as reader:
        with pytest.raises(FogApiError) as denied:
            await reader.services()
    assert denied.value.status == 403


async def test_scopes_beyond_the_kind_are_refused(api: tuple[Coordinator, FogClient, str]) -> None:
    _, admin, _ = api
    with pytest.raises(FogApiError) as refused:
        await admin.create_key(kind=PrincipalKind.DEVICE, name="phone", scopes=[Scope.ADMIN])
    assert refused.value.status == 422
    assert refused.value.body["field"] == "scopes"


async def test_revoked_key_stops_working_at_once(api: tuple[Coordinator, FogClient, str]) -> None:
    coord, admin, _ = api
    issued = await admin.create_key(kind=PrincipalKind.DEVICE, name="phone-1")
    async with anon(coord, issued.key) as phone:
        await phone.whoami()
        revoked = await admin.revoke_key(issued.info.key_id)
        assert revoked.revoked_at is not None
        with pytest.raises(FogApiError) as gone:
            await phone.whoami()
    assert gone.value.status == 401


async def test_second_key_for_existing_principal(api: tuple[Coordinator, FogClient, str]) -> None:
    _, admin, _ = api
    first = await admin.create_key(kind=PrincipalKind.REQUESTER, name="bob")
    second = await admin.create_key(principal_id=first.principal.principal_id)
    assert second.principal == first.principal
    assert second.key != first.key
    keys = await admin.list_keys(first.principal.principal_id)
    assert {k.key_id for k in keys} == {first.info.key_id, second.info.key_id}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "kind"),
        ({"kind": "emperor", "name": "x"}, "kind"),
        ({"kind": "requester", "name": ""}, "name"),
        ({"kind": "requester", "name": "a", "extra": 1}, "extra"),
        ({"kind": "requester", "principal_id": "p"}, "kind"),
        ({"kind": "requester", "name": "a", "scopes": ["fly"]}, "scopes.0"),
    ],
)
async def test_malformed_key_requests_are_422_with_the_field(
    api: tuple[Coordinator, FogClient, str], body: dict[str, object], field: str
) -> None:
    _, admin, _ = api
    before = await admin.list_keys()
    with pytest.raises(FogApiError) as bad:
        await admin.request("POST", "/v1/keys", json=body)
    assert bad.value.status == 422
    assert bad.value.body["field"] == field
    assert await admin.list_keys() == before


async def test_unknown_principal_and_key_are_404(api: tuple[Coordinator, FogClient, str]) -> None:
    _, admin, _ = api
    with pytest.raises(FogApiError) as no_principal:
        await admin.create_key(principal_id="req_doesnotexist")
    with pytest.raises(FogApiError) as no_key:
        await admin.revoke_key("0123456789abcdef")
    with pytest.raises(FogApiError) as no_route:
        await admin.request("GET", "/v1/nothing-here")
    assert no_principal.value.status == no_key.value.status == no_route.value.status == 404


async def test_openapi_documents_the_routes(api: tuple[Coordinator, FogClient, str]) -> None:
    _, admin, _ = api
    spec = await admin.request("GET", "/openapi.json")
    assert {"/healthz", "/readyz", "/v1/services", "/v1/keys", "/v1/whoami"} <= set(spec["paths"])
