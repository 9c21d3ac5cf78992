"""SqlMarketStore behaves the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fogcoord.marketplace.store import Leg, SqlMarketStore

BIG = 2**62 + 12_345


def auction_row(auction_id: str, escrow_id: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "auction_id": auction_id,
        "requester": "req",
        "wallet": "req-wallet",
        "escrow_id": escrow_id,
        "job_id": None,
        "slots": 3,
        "gflop": "123.5",
        "ceiling": 2_000,
        "floor": 700,
        "step": 10,
        "quote_price": 1_000,
        "hold": BIG,
        "opened_at": 1_700_000_000.25,
        "closes_at": 1_700_000_600.25,
        "allow_partial": True,
        "status": "open",
        "closed": False,
    }
    row.update(over)
    return row


def test_auctions_insert_update_and_load(backend_engine: Engine) -> None:
    store = SqlMarketStore(backend_engine)
    assert store.load_auctions() == []
    store.insert_auction(auction_row("a1", "e1"))
    store.insert_auction(auction_row("a2", "job-2", job_id="job-2", allow_partial=False))
    rows = {r["auction_id"]: r for r in store.load_auctions()}
    assert set(rows) == {"a1", "a2"}
    a1 = rows["a1"]
    assert {k: a1[k] for k in auction_row("a1", "e1")} == auction_row("a1", "e1")
    assert (a1["settling"], a1["result"], a1["owners"]) == (None, None, None)
    assert a1["allow_partial"] is True
    assert rows["a2"]["allow_partial"] is False
    assert rows["a2"]["job_id"] == "job-2"

    plan = json.dumps({"status": "settled", "winners": ["d1"], "price": 900, "capture": BIG})
    store.update_auction("a1", settling=plan)
    assert (
        json.loads(next(r for r in store.load_auctions() if r["auction_id"] == "a1")["settling"])[
            "capture"
        ]
        == BIG
    )
    store.update_auction(
        "a1",
        status="settled",
        result='{"auction_id": "a1"}',
        owners=json.dumps({"d1": "alice"}),
        settling=None,
        closed=True,
    )
    a1 = next(r for r in store.load_auctions() if r["auction_id"] == "a1")
    assert (a1["status"], a1["settling"], a1["closed"]) == ("settled", None, True)
    assert json.loads(a1["owners"]) == {"d1": "alice"}
    assert a1["result"] == '{"auction_id": "a1"}'
    # the other auction was not touched
    assert next(r for r in store.load_auctions() if r["auction_id"] == "a2")["status"] == "open"

    # an escrow (job) has one auction at most
    with pytest.raises(sa.exc.IntegrityError):
        store.insert_auction(auction_row("a3", "job-2"))
    # a second store over the same database sees the same rows
    assert len(SqlMarketStore(backend_engine).load_auctions()) == 2


def legs_of(batch: str) -> list[Leg]:
    return [
        (f"pay:{batch}:p1", "provider", "d1", "alice", 8_500, False),
        (f"pay:{batch}:v1", "validator", "d2", "bob", 1_000, True),
        (f"pay:{batch}:pl", "platform", "", "platform", 500, False),
        (f"pay:{batch}:rf", "refund", "", "req-wallet", BIG, False),
    ]


def test_batches_payouts_and_revenue(backend_engine: Engine) -> None:
    store = SqlMarketStore(backend_engine)
    assert (store.unfinished_batches(), store.paid_tasks("e1"), store.payouts("e1")) == ([], {}, [])
    assert store.revenue_by_role() == {}

    legs = legs_of("b1")
    store.record_batch("b1", "e1", "job-1", 5.5, legs, {"t1": 10_000, "t2": BIG})
    (batch,) = store.unfinished_batches()
    assert (batch["batch_id"], batch["escrow_id"], batch["job_id"], batch["state"]) == (
        "b1",
        "e1",
        "job-1",
        "paying",
    )
    assert batch["created_at"] == 5.5
    assert [tuple(leg) for leg in json.loads(batch["legs"])] == legs
    assert store.paid_tasks("e1") == {"t1": 10_000, "t2": BIG}
    assert store.paid_tasks("other") == {}
    rows = {r["transfer_id"]: r for r in store.payouts("e1")}
    assert {r["state"] for r in rows.values()} == {"intent"}
    assert {(r["role"], r["device"], r["wallet"], r["amount"]) for r in rows.values()} == {
        (role, device, wallet, amount) for _, role, device, wallet, amount, _ in legs
    }
    assert store.revenue_by_role() == {}  # intents are not revenue

    store.batch_paid("b1", legs)
    assert store.unfinished_batches() == []
    states = {r["transfer_id"]: r["state"] for r in store.payouts("e1")}
    assert states == {
        "pay:b1:p1": "paid",
        "pay:b1:v1": "pending",
        "pay:b1:pl": "paid",
        "pay:b1:rf": "paid",
    }
    assert store.revenue_by_role() == {"provider": 8_500, "platform": 500, "refund": BIG}

    store.set_payout_state(["pay:b1:v1"], "posted")
    assert store.revenue_by_role()["validator"] == 1_000
    store.set_payout_state([], "voided")  # nothing to do
    store.set_payout_state(["pay:b1:p1"], "voided")
    assert "provider" not in store.revenue_by_role()

    # a second batch of another escrow; the first escrow's rows are unaffected
    store.record_batch("b2", "e2", "job-2", 6.0, legs_of("b2")[:1], {"t1": 1})
    assert store.paid_tasks("e2") == {"t1": 1}
    assert len(store.payouts("e1")) == 4
    assert [b["batch_id"] for b in store.unfinished_batches()] == ["b2"]
    # an empty batch (every task already paid elsewhere) is recorded too
    store.record_batch("b3", "e2", "job-2", 7.0, [], {})
    assert {b["batch_id"] for b in store.unfinished_batches()} == {"b2", "b3"}


def test_a_task_is_claimed_by_one_batch_only(backend_engine: Engine) -> None:
    store = SqlMarketStore(backend_engine)
    store.record_batch("b1", "e1", "job-1", 1.0, legs_of("b1")[:1], {"t1": 5})
    with pytest.raises(sa.exc.IntegrityError):
        store.record_batch("b2", "e1", "job-1", 2.0, legs_of("b2"), {"t1": 5, "t9": 7})
    # the refused batch left nothing: no batch row, no task claim, no payout intent
    assert [b["batch_id"] for b in store.unfinished_batches()] == ["b1"]
    assert store.paid_tasks("e1") == {"t1": 5}
    assert {r["batch_id"] for r in store.payouts("e1")} == {"b1"}
    with pytest.raises(sa.exc.IntegrityError):  # the same batch id twice
        store.record_batch("b1", "e1", "job-1", 3.0, [], {"t8": 1})
    assert store.paid_tasks("e1") == {"t1": 5}
    # the same task id under another escrow is another task
    store.record_batch("b4", "e2", "job-2", 4.0, [], {"t1": 5})
    assert store.paid_tasks("e2") == {"t1": 5}
