"""Jobs and privacy over HTTP: 422s naming the field, the sandbox's refusals, a job visible only
to its requester, and the privacy methods that answer 501 until they are built."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fogcoord.api.app import create_app
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogApiError, FogClient
from fogcoord.compute.examples import load_example, primes_input
from fogcoord.contracts.jobs import JobState, JobSubmission
from fogcoord.coordinator import Coordinator
from tests.helpers import make_config, running_api


@dataclass
class Api:
    coord: Coordinator
    admin: FogClient
    alice: FogClient
    alice_id: str
    bob: FogClient


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
        await alice.create_wallet()
        await bob.create_wallet()
        try:
            yield Api(coord, admin, alice, ids[0], bob)
        finally:
            for c in clients:
                await c.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "primes",
        "module_wat": load_example("primes").decode(),
        "inputs_b64": [b64(primes_input(0, 1000)), b64(primes_input(1000, 2000))],
        "fuel_limit": 100_000_000,
        "max_price_per_gflop": "0.01",
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


async def refused(call: Awaitable[Any]) -> FogApiError:
    with pytest.raises(FogApiError) as caught:
        await call
    return caught.value


async def post_job(client: FogClient, data: dict[str, Any]) -> Any:
    return await client.request("POST", "/v1/jobs", json=data)


# --- submission --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"fuel_limit": 0}, "fuel_limit"),
        ({"inputs_b64": []}, "inputs_b64"),
        ({"max_price_per_gflop": "-1"}, "max_price_per_gflop"),
        ({"replication": 0}, "replication"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"colour": "blue"}, "colour"),
        ({"inputs_b64": ["AAAA", "%%%"]}, "inputs_b64.1"),
        ({"module_wat": None, "module_wasm_b64": "this is not base64"}, "module_wasm_b64"),
    ],
)
async def test_a_bad_body_is_a_422_naming_the_field(
    api: Api, over: dict[str, Any], field: str
) -> None:
    error = await refused(post_job(api.alice, body(**over)))
    assert (error.status, error.code) == (422, "validation_failed")
    assert error.body["field"] == field
    assert await api.alice.jobs() == []


async def test_both_or_neither_module_field_is_a_422(api: Api) -> None:
    both = body(module_wasm_b64=b64(b"\0asm\1\0\0\0"))
    neither = body(module_wat=None)
    for data in (both, neither):
        error = await refused(post_job(api.alice, data))
        assert (error.status, error.code) == (422, "validation_failed")
        assert "module_wat" in error.detail
        assert "module_wasm_b64" in error.detail


@pytest.mark.parametrize(
    ("wat", "code"),
    [
        ("(module (func", "malformed_module"),
        ('(module (import "env" "system" (func)) (func (export "_start")))', "forbidden_import"),
    ],
)
async def test_a_module_the_sandbox_refuses_is_a_422_and_nothing_is_held(
    api: Api, wat: str, code: str
) -> None:
    before = await api.alice.wallet(api.alice_id)
    error = await refused(post_job(api.alice, body(module_wat=wat)))
    assert (error.status, error.code) == (422, code)
    after = await api.alice.wallet(api.alice_id)
    assert (after.balance, after.pending_out) == (before.balance, Decimal(0))
    assert await api.alice.jobs() == []


async def test_a_binary_module_is_accepted_like_its_text(api: Api) -> None:
    import wasmtime

    wasm = bytes(wasmtime.wat2wasm(load_example("primes").decode()))
    job = await post_job(api.alice, body(module_wat=None, module_wasm_b64=b64(wasm)))
    assert job["state"] == "auctioned"
    assert job["tasks_total"] == 2


# --- visibility --------------------------------------------------------------------------------


async def test_a_job_is_seen_and_cancelled_only_by_its_requester(api: Api) -> None:
    submission = JobSubmission.model_validate(body())
    job = await api.alice.submit_job(submission)
    assert job.state is JobState.AUCTIONED
    assert job.requester == api.alice_id
    held = await api.alice.wallet(api.alice_id)
    assert held.pending_out == job.held > 0

    for call in (
        api.bob.job(job.job_id),
        api.bob.job_tasks(job.job_id),
        api.bob.job_output(job.job_id, 0),
        api.bob.job_results(job.job_id),
        api.bob.cancel_job(job.job_id),
    ):
        error = await refused(call)
        assert (error.status, error.code) == (404, "not_found")
    assert await api.bob.jobs() == []
    assert (await api.alice.job(job.job_id)).state is JobState.AUCTIONED  # bob cancelled nothing
    assert [j.job_id for j in await api.alice.jobs()] == [job.job_id]
    assert [j.job_id for j in await api.admin.jobs()] == [job.job_id]  # operators see all

    tasks = await api.alice.job_tasks(job.job_id)
    assert [t.index for t in tasks] == [0, 1]
    assert all(t.replicas == 0 for t in tasks)
    error = await refused(api.alice.job_output(job.job_id, 0))
    assert (error.status, error.code) == (409, "conflict")  # not verified yet
    error = await refused(api.alice.job_output(job.job_id, 7))
    assert error.status == 404

    cancelled = await api.alice.cancel_job(job.job_id)
    assert cancelled.state is JobState.CANCELLED
    wallet = await api.alice.wallet(api.alice_id)
    assert (wallet.balance, wallet.pending_out) == (held.balance, Decimal(0))
    assert [j.job_id for j in await api.alice.jobs(state="cancelled")] == [job.job_id]
    assert await api.alice.jobs(state="running") == []
    error = await refused(api.alice.cancel_job(job.job_id))
    assert (error.status, error.code) == (409, "conflict")

    archive = zipfile.ZipFile(io.BytesIO(await api.alice.job_results(job.job_id)))
    assert archive.namelist() == ["manifest.json"]  # nothing verified, nothing to download
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["job"]["state"] == "cancelled"
    assert [t["index"] for t in manifest["tasks"]] == [0, 1]


async def test_an_unknown_job_is_a_404(api: Api) -> None:
    error = await refused(api.alice.job("job-does-not-exist"))
    assert (error.status, error.code) == (404, "not_found")


# --- privacy -----------------------------------------------------------------------------------


async def test_privacy_budgets_noise_and_secure_sums_answer(api: Api) -> None:
    budgets = await api.admin.request("POST", "/v1/privacy/budgets", json={"participants": ["p1"]})
    assert budgets == {"p1": pytest.approx(10.0)}
    view = await api.admin.request("GET", "/v1/privacy/budgets")
    assert [b["participant_id"] for b in view] == ["p1"]
    noisy = await api.admin.request(
        "POST", "/v1/privacy/noise", json={"data": [3.0, 4.0], "epsilon": 1.0}
    )
    assert len(noisy) == 2
    total = await api.admin.request(
        "POST",
        "/v1/privacy/aggregate",
        json={"gradients": {"p1": [1.0, 2.0], "p2": [2.0, 3.0], "p3": [0.5, 0.5]}, "clip": 4.0},
    )
    assert total == pytest.approx([3.5, 5.5], abs=1e-3)


async def test_byzantine_detection_judges_compute_results(api: Api) -> None:
    a, b = "a" * 64, "b" * 64
    results = [
        {"participant_id": "d1", "task_id": "t", "output_hash": a, "fuel_used": 10},
        {"participant_id": "d2", "task_id": "t", "output_hash": a, "fuel_used": 10},
        {"participant_id": "d3", "task_id": "t", "output_hash": b, "fuel_used": 10},
        {"participant_id": "d4", "task_id": "t", "output_hash": a, "fuel_used": 12},
    ]
    flags = await api.admin.request("POST", "/v1/privacy/byzantine", json=results)
    by_id = {f["participant_id"]: f["reason"] for f in flags}
    assert sorted(by_id) == ["d3", "d4"]
    assert "output" in by_id["d3"]
    assert "fuel" in by_id["d4"]
    tie = results[:1] + results[2:3]
    assert await api.admin.request("POST", "/v1/privacy/byzantine", json=tie) == []
    error = await refused(
        api.admin.request("POST", "/v1/privacy/byzantine", json=[{"participant_id": "x"}])
    )
    assert (error.status, error.code) == (422, "validation_failed")
