"""Per-participant privacy budgets: RDP accounting, all-or-nothing charges, persistence."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import sqlalchemy as sa
from dp_accounting import GaussianDpEvent, SelfComposedDpEvent  # type: ignore[import-untyped]
from dp_accounting.rdp import RdpAccountant, compute_epsilon  # type: ignore[import-untyped]
from dp_accounting.rdp.rdp_privacy_accountant import (  # type: ignore[import-untyped]
    DEFAULT_RDP_ORDERS,
)
from sqlalchemy.engine import Engine

from fogcoord.contracts.errors import Conflict, NotFound, ValidationFailed
from fogcoord.contracts.privacy import PrivacyBudgetExhausted
from fogcoord.privacy.budgets import DEFAULT_ORDERS, BudgetBook, charges_t

DELTA = 1e-5


def book(engine: Engine, budget: float = 10.0) -> BudgetBook:
    return BudgetBook(engine, budget_epsilon=budget, delta=DELTA)


def accountant_epsilon(noise: float, rounds: int, steps: int = 1) -> float:
    acc = RdpAccountant()
    acc.compose(SelfComposedDpEvent(GaussianDpEvent(noise), rounds * steps))
    return float(acc.get_epsilon(DELTA))


# --- accounting, no storage needed ----------------------------------------------------------


@pytest.fixture
def memory_book() -> BudgetBook:
    return book(sa.create_engine("sqlite://"))


def test_default_orders_are_dp_accountings() -> None:
    assert list(DEFAULT_ORDERS) == [float(a) for a in DEFAULT_RDP_ORDERS]


def test_round_curve_is_the_gaussian_mechanism_without_amplification(
    memory_book: BudgetBook,
) -> None:
    alpha = np.array(memory_book.orders)
    np.testing.assert_allclose(memory_book.round_curve(2.0), alpha / (2 * 2.0**2), rtol=1e-12)
    np.testing.assert_allclose(
        memory_book.round_curve(2.0, steps=3), 3 * alpha / (2 * 2.0**2), rtol=1e-12
    )


def test_epsilon_of_one_round_matches_the_reference(memory_book: BudgetBook) -> None:
    eps = memory_book.epsilon_of(memory_book.round_curve(1.0))
    assert eps == pytest.approx(4.7285, abs=1e-3)
    assert eps == pytest.approx(accountant_epsilon(1.0, 1), abs=1e-12)


def test_epsilon_of_is_dp_accountings_conversion(memory_book: BudgetBook) -> None:
    rng = np.random.default_rng(11)
    orders = memory_book.orders
    curves = [
        np.zeros(len(orders)),
        np.full(len(orders), 1e-12),  # the KL branch: epsilon 0
        np.array(orders) * 1e-9,
        np.array([-1e-3, *([1.0] * (len(orders) - 1))]),  # a negative (numerical) divergence
    ]
    curves += [np.array(orders) * s for s in rng.uniform(1e-4, 5.0, 20)]
    curves += [rng.uniform(0, 50, len(orders)) for _ in range(20)]
    for curve in curves:
        ours = memory_book.epsilon_of(curve)
        theirs = compute_epsilon(orders, curve, DELTA)[0]
        assert ours == pytest.approx(float(theirs), abs=1e-12, rel=1e-12)


def test_bad_parameters_are_rejected(memory_book: BudgetBook) -> None:
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ValidationFailed):
        BudgetBook(engine, budget_epsilon=0.0, delta=DELTA)
    with pytest.raises(ValidationFailed):
        BudgetBook(engine, budget_epsilon=1.0, delta=0.0)
    with pytest.raises(ValidationFailed):
        BudgetBook(engine, budget_epsilon=1.0, delta=DELTA, orders=[0.5, 2.0])
    for noise, steps in ((0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)):
        with pytest.raises(ValidationFailed):
            memory_book.round_curve(noise, steps)
    with pytest.raises(ValidationFailed):
        memory_book.epsilon_of([1.0, 2.0])
    with pytest.raises(ValidationFailed):
        memory_book.initialize("abc")
    with pytest.raises(ValidationFailed):
        memory_book.initialize([""])


# --- on every backend ------------------------------------------------------------------------


def test_initialize_is_idempotent(backend_engine: Engine) -> None:
    b = book(backend_engine)
    assert b.initialize(["a", "b", "a"]) == {"a": 10.0, "b": 10.0}
    spent = b.charge(["a"], 2.0, "r1")["a"]
    again = b.initialize(["a", "b", "c"])
    assert again["a"] == pytest.approx(10.0 - spent)
    assert again["b"] == again["c"] == 10.0
    assert [row["participant_id"] for row in b.view()] == ["a", "b", "c"]
    assert b.view()[0]["rounds"] == 1


def test_charging_adds_exactly_the_round_curve(backend_engine: Engine) -> None:
    b = book(backend_engine)
    b.initialize(["a", "b"])
    b.charge(["a"], 3.0, "r0")
    before = b.curve_of("a")
    b.charge(["a", "b"], 1.7, "r1", steps=2)
    round_curve = b.round_curve(1.7, steps=2)
    np.testing.assert_array_equal(b.curve_of("a"), before + round_curve)
    np.testing.assert_array_equal(b.curve_of("b"), round_curve)


@pytest.mark.parametrize("noise", [0.8, 1.1, 4.0])
def test_k_rounds_spend_what_dp_accounting_says(backend_engine: Engine, noise: float) -> None:
    b = book(backend_engine, budget=1e6)
    b.initialize(["p"])
    for k in range(1, 9):
        spent = b.charge(["p"], noise, f"round-{k}")["p"]
        assert spent == pytest.approx(accountant_epsilon(noise, k), abs=1e-6)
        assert b.remaining("p") == pytest.approx(1e6 - spent)


def test_a_round_that_would_exceed_a_budget_charges_nobody(backend_engine: Engine) -> None:
    one = accountant_epsilon(2.0, 1)
    two = accountant_epsilon(2.0, 2)
    b = book(backend_engine, budget=(one + two) / 2)  # room for one round at noise 2, not two
    b.initialize(["veteran", "newcomer", "other"])
    b.charge(["veteran"], 2.0, "r1")
    curves = {p: b.curve_of(p) for p in ("veteran", "newcomer")}

    assert b.can_afford(["newcomer", "veteran", "other", "stranger"], 2.0) == [
        "newcomer",
        "other",
    ]
    with pytest.raises(PrivacyBudgetExhausted) as caught:
        b.charge(["newcomer", "veteran"], 2.0, "r2")
    err = caught.value
    assert isinstance(err, Conflict)
    assert err.participants == ["veteran"]
    assert err.needed == pytest.approx(two - one)
    assert err.remaining == pytest.approx((one + two) / 2 - one)
    assert err.needed > err.remaining
    body = err.to_dict()
    assert body["error"] == "privacy_budget_exhausted"
    assert err.http_status == 409
    assert body["participants"] == ["veteran"]

    for p, curve in curves.items():
        np.testing.assert_array_equal(b.curve_of(p), curve)
    rounds = {row["participant_id"]: row["rounds"] for row in b.view()}
    assert rounds == {"veteran": 1, "newcomer": 0, "other": 0}
    with backend_engine.connect() as conn:
        charged = conn.execute(sa.select(charges_t.c.round_id).distinct()).scalars().all()
    assert charged == ["r1"]
    # with the veteran left out, the round goes through
    assert b.charge(["newcomer"], 2.0, "r2") == {"newcomer": pytest.approx(one)}


def test_spending_persists_across_books(backend_engine: Engine) -> None:
    b = book(backend_engine)
    b.initialize(["a", "b"])
    b.charge(["a", "b"], 1.5, "r1")
    spent = b.charge(["a"], 1.5, "r2")["a"]

    reopened = book(backend_engine, budget=99.0)  # the budget a participant got is kept
    assert reopened.remaining("a") == pytest.approx(10.0 - spent)
    assert reopened.initialize(["a", "c"]) == {"a": pytest.approx(10.0 - spent), "c": 99.0}
    np.testing.assert_array_equal(reopened.curve_of("a"), b.curve_of("a"))
    after = reopened.charge(["a"], 1.5, "r3")["a"]
    assert after == pytest.approx(accountant_epsilon(1.5, 3), abs=1e-6)
    # the retry of an old round is recognised by the new book too
    assert reopened.charge(["b"], 1.5, "r1") == {"b": pytest.approx(accountant_epsilon(1.5, 1))}


def test_round_ids_are_idempotent(backend_engine: Engine) -> None:
    b = book(backend_engine)
    b.initialize(["a", "b"])
    first = b.charge(["a"], 2.0, "r1")
    assert b.charge(["a"], 2.0, "r1") == first
    # a retry that adds a participant charges only the newcomer
    both = b.charge(["a", "b"], 2.0, "r1")
    assert both == {"a": first["a"], "b": pytest.approx(first["a"])}
    assert {row["participant_id"]: row["rounds"] for row in b.view()} == {"a": 1, "b": 1}
    with pytest.raises(ValidationFailed):
        b.charge(["a"], 3.0, "r1")
    with pytest.raises(ValidationFailed):
        b.charge(["a"], 2.0, "r1", steps=2)


def test_unknown_participants(backend_engine: Engine) -> None:
    b = book(backend_engine)
    b.initialize(["a"])
    with pytest.raises(NotFound):
        b.charge(["a", "ghost"], 2.0, "r1")
    assert b.view()[0]["rounds"] == 0  # nobody charged
    with pytest.raises(NotFound):
        b.remaining("ghost")
    with pytest.raises(NotFound):
        b.curve_of("ghost")
    assert b.can_afford(["ghost"], 2.0) == []


def test_a_book_with_other_orders_refuses_the_stored_curves(backend_engine: Engine) -> None:
    book(backend_engine).initialize(["a"])
    other = BudgetBook(backend_engine, budget_epsilon=10.0, delta=DELTA, orders=[2.0, 4.0, 8.0])
    with pytest.raises(ValueError, match="other orders"):
        other.charge(["a"], 2.0, "r1")


def test_view_reports_budget_spending_and_rounds(backend_engine: Engine) -> None:
    b = book(backend_engine)
    b.initialize(["b", "a"])
    spent = b.charge(["a"], 2.0, "r1")["a"]
    assert b.view() == [
        {
            "participant_id": "a",
            "budget_epsilon": 10.0,
            "spent_epsilon": pytest.approx(spent),
            "remaining_epsilon": pytest.approx(10.0 - spent),
            "rounds": 1,
            "delta": DELTA,
        },
        {
            "participant_id": "b",
            "budget_epsilon": 10.0,
            "spent_epsilon": 0.0,
            "remaining_epsilon": 10.0,
            "rounds": 0,
            "delta": DELTA,
        },
    ]


def test_many_participants_in_one_round(backend_engine: Engine) -> None:
    b = book(backend_engine)
    ids = [f"p{i:04d}" for i in range(1_200)]  # more than one IN (...) chunk
    b.initialize(ids)
    spent = b.charge(ids, 5.0, "r1")
    assert len(spent) == len(ids)
    one = accountant_epsilon(5.0, 1)
    assert all(v == pytest.approx(one) for v in spent.values())
    assert len(b.can_afford(ids, 5.0)) == len(ids)


def test_concurrent_charges_all_land(backend_engine: Engine) -> None:
    b = book(backend_engine, budget=1e6)
    ids = [f"p{i}" for i in range(20)]
    b.initialize(ids)
    threads, per_thread = 6, 4
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for r in range(per_thread):
                b.charge(ids[t : t + 10], 3.0, f"t{t}-r{r}")
                b.can_afford(ids, 3.0)
                b.view()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    expected = {
        pid: sum(per_thread for t in range(threads) if pid in ids[t : t + 10]) for pid in ids
    }
    rounds = {row["participant_id"]: row["rounds"] for row in b.view()}
    assert rounds == expected
    for pid in ("p0", "p9", "p14"):
        k = expected[pid]
        np.testing.assert_allclose(b.curve_of(pid), k * b.round_curve(3.0), rtol=1e-12)
        assert b.remaining(pid) == pytest.approx(1e6 - accountant_epsilon(3.0, k), abs=1e-6)
