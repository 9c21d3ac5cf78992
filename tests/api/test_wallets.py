"""Wallets, transfers and the ledger head over HTTP: ownership, idempotency, validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fogcoord.api.app import create_app
from fogcoord.auth.models import PrincipalKind, Scope
from fogcoord.client import FogApiError, FogClient
from fogcoord.contracts.tokenomics import TransactionStatus
from fogcoord.coordinator import Coordinator
from tests.helpers import make_config, running_api

TEN = 10_000_000
FEE = 420


@dataclass
class User:
    principal_id: str
    key: str
    client: FogClient


@dataclass
class Api:
    coord: Coordinator
    admin: FogClient
    alice: User
    bob: User
    carol: User

    def micro(self, wallet: str) -> int:
        account = self.coord.tokenomics.ledger.account(wallet)
        assert account is not None, wallet
        return account.balance

    def snapshot(self) -> tuple[dict[str, tuple[int, int, int, int]], int]:
        ledger = self.coord.tokenomics.ledger
        accounts = {
            a.id: (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            for a in ledger.state.accounts.values()
        }
        return accounts, ledger.head[0]


def client_for(coord: Coordinator, key: str) -> FogClient:
    transport = httpx.ASGITransport(app=create_app(coord, manage_lifecycle=False))
    return FogClient("http://test", key, transport=transport)


async def new_user(
    coord: Coordinator,
    admin: FogClient,
    name: str,
    kind: PrincipalKind = PrincipalKind.REQUESTER,
    scopes: list[Scope] | None = None,
) -> User:
    issued = await admin.create_key(kind=kind, name=name, scopes=scopes)
    return User(issued.principal.principal_id, issued.key, client_for(coord, issued.key))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_config(tmp_path)) as (coord, admin, _):
        alice = await new_user(coord, admin, "alice")
        bob = await new_user(coord, admin, "bob")
        carol = await new_user(coord, admin, "carol", PrincipalKind.DEVICE)
        try:
            for user in (alice, bob, carol):
                await user.client.create_wallet()
            yield Api(coord, admin, alice, bob, carol)
        finally:
            for user in (alice, bob, carol):
                await user.client.close()


async def post_transfer(client: FogClient, body: dict[str, Any]) -> httpx.Response:
    return await client._http.post("/v1/transfers", json=body)


def body(tid: str, src: str, dst: str, amount: Any, **extra: Any) -> dict[str, Any]:
    return {"transaction_id": tid, "from_wallet": src, "to_wallet": dst, "amount": amount, **extra}


# --- wallets -----------------------------------------------------------------------------------


async def test_requester_creates_its_default_and_a_named_wallet(api: Api) -> None:
    alice = api.alice
    default = await alice.client.wallet(alice.principal_id)
    assert (default.wallet_id, default.owner) == (alice.principal_id, alice.principal_id)
    assert default.balance == Decimal(10)
    created = await alice.client._http.post(
        "/v1/wallets",
        json={"wallet_id": "alice-travel", "funding_wallet": alice.principal_id},
    )
    assert created.status_code == 201
    assert created.json()["funding_wallet"] == alice.principal_id
    assert created.json()["owner"] == alice.principal_id
    # creating again changes nothing and grants nothing more
    again = await alice.client.create_wallet("alice-travel", funding_wallet=alice.principal_id)
    assert again.balance == Decimal(10)
    assert api.micro("alice-travel") == TEN
    mine = await alice.client.wallets()
    assert [w.wallet_id for w in mine] == sorted([alice.principal_id, "alice-travel"])
    assert (await alice.client.create_wallet()).balance == Decimal(10)


async def test_wallets_lists_only_the_callers_own(api: Api) -> None:
    await api.bob.client.create_wallet("bob-2")
    assert [w.wallet_id for w in await api.alice.client.wallets()] == [api.alice.principal_id]
    assert {w.wallet_id for w in await api.bob.client.wallets()} == {
        api.bob.principal_id,
        "bob-2",
    }
    assert await api.admin.wallets() == []


async def test_wallet_ids_are_first_come(api: Api) -> None:
    await api.alice.client.create_wallet("shared-name")
    before = api.snapshot()
    for wallet_id in ("shared-name", api.alice.principal_id, "mint", "platform"):
        with pytest.raises(FogApiError) as taken:
            await api.bob.client.create_wallet(wallet_id)
        assert (taken.value.status, taken.value.code) == (409, "conflict")
    assert api.snapshot() == before
    assert api.coord.tokenomics.wallet_owner("shared-name") == api.alice.principal_id


async def test_another_principals_default_wallet_id_cannot_be_squatted(api: Api) -> None:
    before = api.snapshot()
    with pytest.raises(FogApiError) as squat:
        await api.bob.client.create_wallet("req_0123456789abcdef")
    assert squat.value.status == 403
    assert api.snapshot() == before
    assert api.coord.tokenomics.wallet_owner("req_0123456789abcdef") is None


async def test_funding_wallet_must_be_the_callers(api: Api) -> None:
    with pytest.raises(FogApiError) as foreign:
        await api.bob.client.create_wallet("bob-2", funding_wallet=api.alice.principal_id)
    assert (foreign.value.status, foreign.value.body["field"]) == (422, "funding_wallet")
    with pytest.raises(FogApiError) as missing:
        await api.bob.client.create_wallet("bob-2", funding_wallet="ghost")
    assert missing.value.status == 404
    assert api.coord.tokenomics.wallet_owner("bob-2") is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"wallet_id": "has space"}, "wallet_id"),
        ({"wallet_id": "escrow:job"}, "wallet_id"),
        ({"wallet_id": "x" * 65}, "wallet_id"),
        ({"wallet_id": ""}, "wallet_id"),
        ({"wallet_id": "ok", "owner": "someone"}, "owner"),
        ({"wallet_id": 5}, "wallet_id"),
    ],
)
async def test_malformed_wallet_requests_are_422(
    api: Api, payload: dict[str, Any], field: str
) -> None:
    before = api.snapshot()
    response = await api.alice.client._http.post("/v1/wallets", json=payload)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert api.snapshot() == before


# --- ownership ---------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["bob", "carol"])
async def test_another_principal_is_403_and_changes_nothing(api: Api, who: str) -> None:
    alice_wallet = api.alice.principal_id
    await api.coord.tokenomics.hold_escrow("job-1", alice_wallet, 1_000_000)
    other: User = getattr(api, who)
    before = api.snapshot()
    for path in (
        f"/v1/wallets/{alice_wallet}",
        f"/v1/wallets/{alice_wallet}/history",
        f"/v1/wallets/{alice_wallet}/holds",
    ):
        response = await other.client._http.get(path)
        assert response.status_code == 403, path
        assert response.json()["error"] == "forbidden"
    stolen = await post_transfer(
        other.client, body("steal-1", alice_wallet, other.principal_id, "5")
    )
    assert stolen.status_code == 403
    assert api.snapshot() == before
    assert await api.coord.tokenomics.ledger.lookup("steal-1") is None


async def test_the_operator_reads_any_wallet_but_cannot_spend_from_it(api: Api) -> None:
    alice_wallet = api.alice.principal_id
    assert (await api.admin.wallet(alice_wallet)).balance == Decimal(10)
    assert len(await api.admin.history(alice_wallet)) == 1
    assert await api.admin.holds(alice_wallet) == []
    before = api.snapshot()
    response = await post_transfer(api.admin, body("op-1", alice_wallet, api.bob.principal_id, "5"))
    assert response.status_code == 403
    assert api.snapshot() == before


async def test_a_key_without_wallets_write_is_403(api: Api) -> None:
    issued = await api.admin.create_key(
        principal_id=api.alice.principal_id, scopes=[Scope.WALLETS_READ]
    )
    async with client_for(api.coord, issued.key) as reader:
        assert (await reader.wallet(api.alice.principal_id)).balance == Decimal(10)
        before = api.snapshot()
        with pytest.raises(FogApiError) as no_create:
            await reader.create_wallet("alice-2")
        with pytest.raises(FogApiError) as no_send:
            await reader.send("r-1", api.alice.principal_id, api.bob.principal_id, "1")
    assert (no_create.value.status, no_create.value.code) == (403, "forbidden")
    assert no_send.value.status == 403
    assert api.snapshot() == before
    jobs_only = await new_user(api.coord, api.admin, "jobs", scopes=[Scope.JOBS_READ])
    async with jobs_only.client as client:
        for call in (client.wallets(), client.ledger()):
            with pytest.raises(FogApiError) as no_read:
                await call
            assert no_read.value.status == 403


# --- transfers ---------------------------------------------------------------------------------


async def test_transfer_201_then_200_for_a_replay(api: Api) -> None:
    a, b = api.alice.principal_id, api.bob.principal_id
    first = await post_transfer(api.alice.client, body("t-1", a, b, "1.5", memo="lunch"))
    assert first.status_code == 201
    assert first.json()["status"] == "committed"
    assert first.json()["transaction_id"] == "t-1"
    assert api.micro(a) == TEN - 1_500_000 - FEE
    assert api.micro(b) == TEN + 1_500_000
    assert api.micro("platform") == FEE
    replay = await post_transfer(api.alice.client, body("t-1", a, b, "1.5", memo="lunch"))
    assert replay.status_code == 200
    assert replay.json()["status"] == "exists"
    assert replay.json()["block"] == first.json()["block"]
    assert api.micro(a) == TEN - 1_500_000 - FEE
    via_client = await api.alice.client.send("t-1", a, b, Decimal("1.5"), "lunch")
    assert via_client.status is TransactionStatus.EXISTS
    # as a JSON number too
    number = await post_transfer(api.alice.client, body("t-2", a, b, 0.25))
    assert number.status_code == 201
    assert api.micro(b) == TEN + 1_750_000


async def test_transfer_refused_by_the_ledger_is_409(api: Api) -> None:
    a, b = api.alice.principal_id, api.bob.principal_id
    before = api.snapshot()[0]
    poor = await post_transfer(api.alice.client, body("t-1", a, b, "9.99"))
    assert poor.status_code == 409
    assert poor.json()["error"] == "transfer_failed"
    assert poor.json()["result"] == "exceeds_credits"
    assert poor.json()["transaction_id"] == "t-1"
    assert api.snapshot()[0] == before

    await post_transfer(api.alice.client, body("t-2", a, b, "1"))
    paid = api.snapshot()[0]
    changed = await post_transfer(api.alice.client, body("t-2", a, b, "2"))
    assert changed.status_code == 409
    assert changed.json()["error"] == "transfer_failed"
    assert changed.json()["result"] == "exists_with_different_amount"
    assert api.snapshot()[0] == paid


@pytest.mark.parametrize(
    ("amount", "field"),
    [
        ("-1", "amount"),
        (-1, "amount"),
        ("0", "amount"),
        (0, "amount"),
        ("0.0000001", "amount"),
        (1e-7, "amount"),
        ("1.1234567", "amount"),
        ("1e30", "amount"),
        (1e30, "amount"),
        ("9999999999999.999999", "amount"),  # fits 19 digits, but not the ledger's 64 bits
        ("NaN", "amount"),
        ("Infinity", "amount"),
        ("ten", "amount"),
        (None, "amount"),
    ],
)
async def test_malformed_amounts_are_422(api: Api, amount: Any, field: str) -> None:
    a, b = api.alice.principal_id, api.bob.principal_id
    before = api.snapshot()
    response = await post_transfer(api.alice.client, body("bad-1", a, b, amount))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"
    assert response.json()["field"] == field
    assert api.snapshot() == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"transaction_id": "has space"}, "transaction_id"),
        ({"transaction_id": "colon:id"}, "transaction_id"),
        ({"transaction_id": "x" * 65}, "transaction_id"),
        ({"transaction_id": ""}, "transaction_id"),
        ({"from_wallet": ""}, "from_wallet"),
        ({"to_wallet": "x" * 65}, "to_wallet"),
        ({"memo": "m" * 201}, "memo"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_malformed_transfer_fields_are_422(
    api: Api, overrides: dict[str, Any], field: str
) -> None:
    payload = body("bad-1", api.alice.principal_id, api.bob.principal_id, "1") | overrides
    before = api.snapshot()
    response = await post_transfer(api.alice.client, payload)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert api.snapshot() == before


async def test_missing_fields_are_422(api: Api) -> None:
    response = await post_transfer(
        api.alice.client, {"transaction_id": "t", "from_wallet": api.alice.principal_id}
    )
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"to_wallet", "amount"}


async def test_unknown_wallets_are_404(api: Api) -> None:
    a = api.alice.principal_id
    before = api.snapshot()
    for payload in (body("t-1", "ghost", a, "1"), body("t-2", a, "ghost", "1")):
        response = await post_transfer(api.alice.client, payload)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    for escrowish in ("mint", "escrow:job-1"):
        response = await post_transfer(api.alice.client, body("t-3", a, escrowish, "1"))
        assert response.status_code == 404
    for path in ("/v1/wallets/ghost", "/v1/wallets/ghost/history", "/v1/wallets/ghost/holds"):
        assert (await api.alice.client._http.get(path)).status_code == 404
    assert api.snapshot() == before


async def test_a_transfer_is_visible_to_its_parties_and_the_operator(api: Api) -> None:
    a, b = api.alice.principal_id, api.bob.principal_id
    await api.alice.client.send("t-1", a, b, "2", "rent")
    for viewer in (api.alice.client, api.bob.client, api.admin):
        seen = await viewer.transfer("t-1")
        assert (seen.from_wallet, seen.to_wallet, seen.amount, seen.memo) == (
            a,
            b,
            Decimal(2),
            "rent",
        )
    fee = await api.alice.client.transfer("fee:t-1")
    assert (fee.to_wallet, fee.amount) == ("platform", Decimal("0.00042"))
    for hidden in ("t-1", "fee:t-1", "grant:" + a):
        with pytest.raises(FogApiError) as not_yours:
            await api.carol.client.transfer(hidden)
        assert not_yours.value.status == 404
    with pytest.raises(FogApiError) as missing:
        await api.admin.transfer("nope")
    assert missing.value.status == 404


async def test_history_and_holds_through_the_api(api: Api) -> None:
    a, b = api.alice.principal_id, api.bob.principal_id
    for i in range(3):
        await api.alice.client.send(f"t-{i}", a, b, "0.1")
    history = await api.alice.client.history(a, limit=4)
    assert [t.transaction_id for t in history] == ["fee:t-2", "t-2", "fee:t-1", "t-1"]
    rest = await api.alice.client.history(a, before="t-1")
    assert [t.transaction_id for t in rest] == ["fee:t-0", "t-0", f"grant:{a}"]
    for bad in ("?limit=0", "?limit=1001", "?before=" + "x" * 97):
        response = await api.alice.client._http.get(f"/v1/wallets/{a}/history{bad}")
        assert response.status_code == 422
    unknown_cursor = await api.alice.client._http.get(f"/v1/wallets/{a}/history?before=ghost")
    assert (unknown_cursor.status_code, unknown_cursor.json()["field"]) == (422, "before")

    await api.coord.tokenomics.hold_escrow("job-1", a, 2_000_000)
    await api.coord.tokenomics.capture_escrow("job-1", 500_000)
    (hold,) = await api.alice.client.holds(a)
    assert (hold.job_id, hold.state, hold.held, hold.captured) == (
        "job-1",
        "posted",
        Decimal(2),
        Decimal("0.5"),
    )
    assert hold.remaining == Decimal("0.5")
    assert await api.bob.client.holds(b) == []


async def test_ledger_head(api: Api) -> None:
    head = await api.alice.client.ledger()
    number, block_hash = api.coord.tokenomics.ledger.head
    assert (head.block, head.hash) == (number, block_hash)
    assert head.confirmation_blocks == 3
    assert head.accounts == len(api.coord.tokenomics.ledger.state.accounts)
    result = await api.alice.client.send("t-1", api.alice.principal_id, api.bob.principal_id, "1")
    after = await api.bob.client.ledger()
    assert after.block == result.block
    assert after.block > head.block
    assert after.hash != head.hash
