"""Federated studies over HTTP: 422s naming the field, a study visible only to its requester,
and the create / list / get / model / cancel round trip (no devices: the study waits)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fogcoord.api.app import create_app
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogApiError, FogClient
from fogcoord.contracts.studies import (
    Aggregation,
    EncodedArray,
    StudySpec,
    StudyState,
    decode_model,
    encode_model,
)
from fogcoord.coordinator import Coordinator
from fogcoord.trainers.logreg import initial_model
from tests.helpers import make_config, running_api


@dataclass
class Api:
    coord: Coordinator
    admin: FogClient
    alice: FogClient
    alice_id: str
    alice_wallet: str
    bob: FogClient
    bob_wallet: str


def client_for(coord: Coordinator, key: str) -> FogClient:
    transport = httpx.ASGITransport(app=create_app(coord, manage_lifecycle=False))
    return FogClient("http://test", key, transport=transport)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_config(tmp_path)) as (coord, admin, _):
        clients = []
        ids = []
        for name in ("alice", "bob"):
            issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name=name)
            clients.append(client_for(coord, issued.key))
            ids.append(issued.principal.principal_id)
        alice, bob = clients
        alice_wallet = (await alice.create_wallet()).wallet_id
        bob_wallet = (await bob.create_wallet()).wallet_id
        try:
            yield Api(coord, admin, alice, ids[0], alice_wallet, bob, bob_wallet)
        finally:
            for c in clients:
                await c.close()


def model_json() -> dict[str, Any]:
    return {k: v.model_dump() for k, v in encode_model(initial_model({})).items()}


def body(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "logreg",
        "model": model_json(),
        "trainer": "logreg",
        "rounds": 3,
        "clients_per_round": 5,
        "clip_norm": 1.0,
        "epsilon": 4.0,
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


async def refused(call: Awaitable[Any]) -> FogApiError:
    with pytest.raises(FogApiError) as caught:
        await call
    return caught.value


async def create(client: FogClient, data: dict[str, Any]) -> Any:
    return await client.request("POST", "/v1/studies", json=data)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"clients_per_round": 1}, "clients_per_round"),
        ({"aggregation": "federated-magic"}, "aggregation"),
        ({"robust_method": "mean"}, "robust_method"),
        ({"rounds": 0}, "rounds"),
        ({"clip_norm": 0}, "clip_norm"),
        ({"epsilon": -1}, "epsilon"),
        ({"delta": 1.5}, "delta"),
        ({"trainer": "has spaces"}, "trainer"),
        ({"model": {}}, "model"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_specs_are_422_naming_the_field(
    api: Api, over: dict[str, Any], field: str
) -> None:
    error = await refused(create(api.alice, body(**over)))
    assert error.status == 422
    assert error.code == "validation_failed"
    assert field in error.body["field"]


async def test_a_model_array_must_decode(api: Api) -> None:
    good = EncodedArray.of(np.zeros((2, 3), dtype=np.float32))
    cases = {
        "not base64": {"dtype": "float32", "shape": [2, 3], "b64": "not base64!"},
        "shape mismatch": {"dtype": "float32", "shape": [4, 3], "b64": good.b64},
        "dtype mismatch": {"dtype": "float64", "shape": [2, 3], "b64": good.b64},
    }
    for case, array in cases.items():
        error = await refused(create(api.alice, body(model={"w": array})))
        assert error.status == 422, case
        assert error.body["field"] == "model", case
    # an integer dtype or a negative dimension is refused by the schema itself
    for array in (
        {"dtype": "int32", "shape": [2, 3], "b64": good.b64},
        {"dtype": "float32", "shape": [-2, 3], "b64": good.b64},
    ):
        error = await refused(create(api.alice, body(model={"w": array})))
        assert error.status == 422
        assert error.body["field"].startswith("model.w.")
    assert await api.alice.studies() == []


async def test_secure_aggregation_needs_three_clients(api: Api) -> None:
    for aggregation in ("secure", "grouped"):
        error = await refused(create(api.alice, body(aggregation=aggregation, clients_per_round=2)))
        assert error.status == 422
        assert error.body["field"] == "clients_per_round"


async def test_a_study_is_paid_from_the_callers_own_wallet(api: Api) -> None:
    bobs = await refused(create(api.alice, body(wallet=api.bob_wallet)))
    assert bobs.status == 403
    missing = await refused(create(api.alice, body(wallet="no-such-wallet")))
    assert missing.status == 404


# --- round trip ------------------------------------------------------------------------------


async def test_create_list_get_model_cancel(api: Api) -> None:
    spec = StudySpec.model_validate(body(payment_per_round="0.02", aggregation="grouped"))
    before = (await api.alice.wallet(api.alice_wallet)).balance
    view = await api.alice.create_study(spec)
    assert view.study_id.startswith("study-")
    assert view.requester == api.alice_id
    assert view.state is StudyState.RUNNING  # waiting for devices
    assert view.aggregation is Aggregation.GROUPED
    assert (view.rounds, view.rounds_done, view.clients_per_round) == (3, 0, 5)
    assert view.epsilon_per_round == 4.0
    assert view.delta == api.coord.config.privacy.differential_privacy.default_delta
    assert view.held == Decimal("0.02") * 5 * 3
    assert view.paid == 0
    assert view.history == ()
    assert (await api.alice.wallet(api.alice_wallet)).balance == before - view.held

    assert [s.study_id for s in await api.alice.studies()] == [view.study_id]
    got = await api.alice.study(view.study_id)
    assert got.state is StudyState.RUNNING
    assert got.study_id == view.study_id

    model = decode_model(await api.alice.study_model(view.study_id))
    start = initial_model({})
    assert set(model) == set(start)
    for name, array in start.items():
        np.testing.assert_array_equal(model[name], array)
        assert model[name].dtype == array.dtype

    cancelled = await api.alice.cancel_study(view.study_id)
    assert cancelled.state is StudyState.CANCELLED
    assert cancelled.reason
    assert (await api.alice.study(view.study_id)).state is StudyState.CANCELLED
    # the escrow came back whole
    assert (await api.alice.wallet(api.alice_wallet)).balance == before
    again = await refused(api.alice.cancel_study(view.study_id))
    assert again.status == 409


async def test_another_requester_cannot_see_a_study(api: Api) -> None:
    view = await api.alice.create_study(StudySpec.model_validate(body()))
    sid = view.study_id
    for call in (
        api.bob.study(sid),
        api.bob.study_model(sid),
        api.bob.cancel_study(sid),
    ):
        error = await refused(call)
        assert error.status == 404
        assert error.code == "not_found"
    assert await api.bob.studies() == []
    assert (await api.alice.study(sid)).state is StudyState.RUNNING  # bob cancelled nothing
    # an operator sees every study
    assert sid in [s.study_id for s in await api.admin.studies()]
    assert (await api.admin.study(sid)).requester == api.alice_id
    unknown = await refused(api.alice.study("study-0000000000000000"))
    assert unknown.status == 404


async def test_the_model_travels_as_little_endian_base64(api: Api) -> None:
    weights = np.arange(6, dtype=np.float64).reshape(2, 3)
    raw = {
        "dtype": "float64",
        "shape": [2, 3],
        "b64": base64.b64encode(weights.astype("<f8").tobytes()).decode(),
    }
    data = await create(api.alice, body(model={"weights": raw}))
    model = decode_model(await api.alice.study_model(data["study_id"]))
    np.testing.assert_array_equal(model["weights"], weights)
    await api.alice.cancel_study(data["study_id"])
