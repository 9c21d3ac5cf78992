"""The pure state machine: every result code and rule on LedgerState / BatchBuilder, no I/O."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest

from fogcoord.tokenomics import blocks
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.engine import LedgerState
from fogcoord.tokenomics.model import (
    MAX_AMOUNT,
    MAX_MEMO,
    Account,
    AccountFlags,
    AccountKind,
    FailedId,
    PendingState,
    TransferRequest,
)
from tests.tokenomics.ledger_support import (
    LINKED,
    PENDING,
    POST,
    VOID,
    Book,
    codes,
    hold,
    pay,
    post,
    state_totals,
    system,
    void,
    wallet,
)


@pytest.fixture
def book() -> Book:
    """mint (unlimited), alice funded with 1000, bob empty, carol with a reserve of 100."""
    b = Book()
    b.accounts(system("mint"), wallet("alice"), wallet("bob"), wallet("carol", reserve=100))
    assert codes(b.run(pay("f1", "mint", "alice", 1000), pay("f2", "mint", "carol", 500))) == [
        "ok",
        "ok",
    ]
    return b


# --- single-phase ---------------------------------------------------------------------------


def test_single_phase_moves_posted_totals_on_both_sides(book: Book) -> None:
    [r] = book.run(pay("t1", "alice", "bob", 300, memo="rent"))
    assert r.code == Code.OK
    assert r.ok
    assert r.transfer is not None
    assert r.transfer.amount == 300
    assert r.transfer.memo == "rent"
    assert r.block == book.state.head_number
    alice, bob, mint = book.acc("alice"), book.acc("bob"), book.acc("mint")
    assert (alice.debits_posted, alice.credits_posted, alice.balance) == (300, 1000, 700)
    assert (bob.debits_posted, bob.credits_posted, bob.balance) == (0, 300, 300)
    assert mint.balance == -1500  # unlimited accounts may go negative
    assert alice.debits_pending == bob.credits_pending == 0


def test_a_limited_account_can_be_emptied_but_not_overdrawn(book: Book) -> None:
    assert codes(book.run(pay("t1", "alice", "bob", 1001))) == [Code.EXCEEDS_CREDITS]
    assert codes(book.run(pay("t2", "alice", "bob", 1000))) == [Code.OK]
    assert book.balance("alice") == 0
    assert codes(book.run(pay("t3", "alice", "bob", 1))) == [Code.EXCEEDS_CREDITS]


def test_the_reserve_is_a_minimum_balance(book: Book) -> None:
    assert book.available("carol") == 400
    assert codes(book.run(pay("t1", "carol", "bob", 401))) == [Code.EXCEEDS_CREDITS]
    assert codes(book.run(pay("t2", "carol", "bob", 400))) == [Code.OK]
    assert book.balance("carol") == 100
    assert book.available("carol") == 0
    assert codes(book.run(hold("t3", "carol", "bob", 1))) == [Code.EXCEEDS_CREDITS]


def test_credits_must_not_exceed_debits(book: Book) -> None:
    sink = Account(
        "sink", AccountKind.SYSTEM, "system", AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    )
    book.accounts(sink)
    assert codes(book.run(pay("t1", "alice", "sink", 1))) == [Code.EXCEEDS_DEBITS]
    assert codes(book.run(pay("t2", "sink", "bob", 50))) == [Code.OK]
    assert codes(book.run(pay("t3", "alice", "sink", 50))) == [Code.OK]
    assert codes(book.run(pay("t4", "alice", "sink", 1))) == [Code.EXCEEDS_DEBITS]


def test_transfers_get_consecutive_seqs_and_blocks_chain(book: Book) -> None:
    before = book.state.next_seq
    head_number, head_hash = book.state.head_number, book.state.head_hash
    results = book.run(pay("t1", "alice", "bob", 1), pay("t2", "alice", "bob", 2))
    seqs = [r.transfer.seq for r in results if r.transfer is not None]
    assert seqs == [before, before + 1]
    assert book.state.next_seq == before + 2
    batch = book.batches[-1]
    assert batch.number == head_number + 1
    assert batch.prev_hash == head_hash
    assert book.state.head_hash == batch.hash
    content = blocks.content_hash(batch.transfers, batch.accounts_created, [])
    assert batch.hash == blocks.block_hash(batch.number, batch.prev_hash, content, batch.timestamp)


# --- validation: nothing is recorded ----------------------------------------------------------

VALIDATION = [
    pytest.param(pay("bad id!", "alice", "bob", 1), Code.ID_INVALID, id="id-charset"),
    pytest.param(pay("", "alice", "bob", 1), Code.ID_INVALID, id="id-empty"),
    pytest.param(pay("x" * 97, "alice", "bob", 1), Code.ID_INVALID, id="id-too-long"),
    pytest.param(pay("v", "alice", "bob", 0), Code.AMOUNT_MUST_NOT_BE_ZERO, id="zero"),
    pytest.param(pay("v", "alice", "bob", -5), Code.AMOUNT_INVALID, id="negative"),
    pytest.param(pay("v", "alice", "bob", MAX_AMOUNT + 1), Code.AMOUNT_INVALID, id="overflow"),
    pytest.param(pay("v", "alice", "bob", None), Code.AMOUNT_INVALID, id="none-on-single"),
    pytest.param(pay("v", "alice", "alice", 1), Code.ACCOUNTS_MUST_BE_DIFFERENT, id="same"),
    pytest.param(pay("v", "alice", "bad acc", 1), Code.ID_INVALID, id="account-id"),
    pytest.param(
        pay("v", "alice", "bob", 1, PENDING | POST), Code.FLAGS_ARE_MUTUALLY_EXCLUSIVE, id="p+post"
    ),
    pytest.param(
        TransferRequest("v", amount=None, flags=POST | VOID, pending_id="p"),
        Code.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        id="post+void",
    ),
    pytest.param(pay("v", "alice", "bob", 1, 16), Code.RESERVED_FLAG, id="reserved-flag"),
    pytest.param(
        TransferRequest("v", amount=None, flags=POST), Code.PENDING_ID_REQUIRED, id="no-pending"
    ),
    pytest.param(
        TransferRequest("v", "alice", "bob", 1, pending_id="p"),
        Code.PENDING_ID_MUST_BE_EMPTY,
        id="pending-id-on-single",
    ),
    pytest.param(post("v", "v"), Code.ID_INVALID, id="post-itself"),
    pytest.param(post("v", "p", amount=-1), Code.AMOUNT_INVALID, id="post-negative"),
    pytest.param(
        TransferRequest("v", amount=None, flags=POST, pending_id="p", timeout=5.0),
        Code.TIMEOUT_RESERVED_FOR_PENDING,
        id="timeout-on-post",
    ),
    pytest.param(
        pay("v", "alice", "bob", 1, timeout=5.0),
        Code.TIMEOUT_RESERVED_FOR_PENDING,
        id="timeout-on-single",
    ),
    pytest.param(hold("v", "alice", "bob", 1, timeout=-1.0), Code.AMOUNT_INVALID, id="neg-timeout"),
    pytest.param(
        hold("v", "alice", "bob", 1, timeout=math.nan), Code.AMOUNT_INVALID, id="nan-timeout"
    ),
    pytest.param(
        hold("v", "alice", "bob", 1, timeout=math.inf), Code.AMOUNT_INVALID, id="inf-timeout"
    ),
    pytest.param(pay("v", "alice", "bob", 1, memo="a\x00b"), Code.MEMO_INVALID, id="memo-nul"),
    pytest.param(
        pay("v", "alice", "bob", 1, memo="caf\u00e9 \ud800"), Code.MEMO_INVALID, id="memo-surrogate"
    ),
    pytest.param(
        pay("v", "alice", "bob", 1, memo="m" * (MAX_MEMO + 1)), Code.MEMO_TOO_LONG, id="memo"
    ),
]


@pytest.mark.parametrize(("request_", "code"), VALIDATION)
def test_validation_failures_record_nothing(
    book: Book, request_: TransferRequest, code: Code
) -> None:
    before = state_totals(book.state)
    builder = book.begin([request_.id])
    assert codes(builder.submit([request_])) == [code]
    assert not Code(code).transient
    assert builder.batch.failed == []
    assert builder.batch.transfers == []
    assert request_.id not in builder.new
    book.land(builder)
    assert state_totals(book.state) == before
    assert request_.id not in book.state.recent
    if request_.id == "v":  # the same id, corrected, goes through
        assert codes(book.run(pay("v", "alice", "bob", 7))) == [Code.OK]


def test_a_memo_at_the_limit_and_any_unicode_is_accepted(book: Book) -> None:
    assert codes(book.run(pay("t", "alice", "bob", 1, memo="m" * MAX_MEMO))) == [Code.OK]
    memo = "café ☕ 支付 \U0001f4b8"
    [r] = book.run(pay("u", "alice", "bob", 1, memo=memo))
    assert r.code == Code.OK
    assert r.transfer is not None
    assert r.transfer.memo == memo


# --- state-dependent failures: the id is remembered -------------------------------------------


def _expired_pending(book: Book) -> str:
    book.run(hold("pe", "alice", "bob", 10, timeout=5.0))
    book.now += 5.0
    assert book.tick() == ["pe"]
    return "pe"


TRANSIENT: list[tuple[str, Callable[[Book], TransferRequest], Code]] = [
    ("debit-not-found", lambda b: pay("x", "ghost", "bob", 1), Code.DEBIT_ACCOUNT_NOT_FOUND),
    ("credit-not-found", lambda b: pay("x", "alice", "ghost", 1), Code.CREDIT_ACCOUNT_NOT_FOUND),
    ("exceeds-credits", lambda b: pay("x", "bob", "alice", 1), Code.EXCEEDS_CREDITS),
    ("pending-not-found", lambda b: post("x", "nope"), Code.PENDING_TRANSFER_NOT_FOUND),
    ("single-is-not-pending", lambda b: post("x", "f1"), Code.PENDING_TRANSFER_NOT_FOUND),
    ("expired", lambda b: post("x", _expired_pending(b)), Code.PENDING_TRANSFER_EXPIRED),
]


@pytest.mark.parametrize(("make", "code"), [pytest.param(m, c, id=n) for n, m, c in TRANSIENT])
def test_transient_failures_are_remembered_and_a_retry_is_refused(
    book: Book, make: Callable[[Book], TransferRequest], code: Code
) -> None:
    request_ = make(book)
    before = state_totals(book.state)
    builder = book.begin([request_.id])
    assert codes(builder.submit([request_])) == [code]
    assert Code(code).transient
    assert [(f.id, f.code) for f in builder.batch.failed] == [("x", code.value)]
    assert isinstance(builder.new["x"], FailedId)
    book.land(builder)
    assert state_totals(book.state) == before
    # fix whatever made it fail: the id stays failed, whatever the body
    book.accounts(wallet("ghost"))
    book.run(pay("fund-bob", "mint", "bob", 1000))
    assert codes(book.run(request_)) == [Code.ID_ALREADY_FAILED]
    assert codes(book.run(pay("x", "mint", "bob", 1))) == [Code.ID_ALREADY_FAILED]
    assert book.balance("bob") == 1000


def test_a_failed_digest_fingerprints_the_body(book: Book) -> None:
    book.run(pay("x1", "bob", "alice", 5), pay("x2", "bob", "alice", 6))
    failed = {f.id: f for f in book.batches[-1].failed}
    assert failed["x1"].digest != failed["x2"].digest
    assert failed["x1"].code == Code.EXCEEDS_CREDITS


def test_overflow_near_the_largest_amount() -> None:
    book = Book()
    book.accounts(system("mint"), system("rich"), system("other"))
    assert codes(book.run(pay("big", "mint", "rich", MAX_AMOUNT))) == [Code.OK]
    assert book.acc("rich").credits_posted == MAX_AMOUNT
    # mint has debited the maximum: one more micro-token would overflow its debits
    assert codes(book.run(pay("o1", "mint", "other", 1))) == [Code.OVERFLOWS_DEBITS]
    # rich has been credited the maximum: nothing more may arrive
    assert codes(book.run(pay("o2", "other", "rich", 1))) == [Code.OVERFLOWS_CREDITS]
    # rich can pay out all of it, once
    assert codes(book.run(pay("o3", "rich", "other", MAX_AMOUNT))) == [Code.OK]
    assert codes(book.run(pay("o4", "rich", "other", 1))) == [Code.OVERFLOWS_DEBITS]
    assert codes(book.run(pay("o5", "other", "mint", MAX_AMOUNT + 1))) == [Code.AMOUNT_INVALID]
    for tid in ("o1", "o2", "o4"):
        assert codes(book.run(pay(tid, "other", "mint", 1))) == [Code.ID_ALREADY_FAILED]


def test_pending_amounts_count_toward_overflow() -> None:
    book = Book()
    book.accounts(system("a"), system("b"), system("c"))
    assert codes(book.run(hold("p", "a", "b", MAX_AMOUNT - 10))) == [Code.OK]
    assert codes(book.run(pay("t1", "a", "c", 11))) == [Code.OVERFLOWS_DEBITS]
    assert codes(book.run(pay("t2", "c", "b", 11))) == [Code.OVERFLOWS_CREDITS]
    assert codes(book.run(pay("t3", "a", "c", 10))) == [Code.OK]
    assert codes(book.run(post("t4", "p"))) == [Code.OK]  # pending to posted never overflows
    assert book.acc("a").debits_posted == MAX_AMOUNT


# --- idempotency ------------------------------------------------------------------------------


def test_the_same_id_and_body_is_exists_and_changes_nothing(book: Book) -> None:
    first = book.run(pay("t1", "alice", "bob", 10, memo="m"))
    before = state_totals(book.state)
    seq = book.state.next_seq
    [again] = book.run(pay("t1", "alice", "bob", 10, memo="m"))
    assert again.code == Code.EXISTS
    assert again.ok
    assert again.transfer == first[0].transfer
    assert again.block == first[0].block
    assert state_totals(book.state) == before
    assert book.state.next_seq == seq
    assert book.batches[-1].transfers == []


DIFFERENT = [
    (pay("t1", "alice", "bob", 10, PENDING), Code.EXISTS_WITH_DIFFERENT_FLAGS),
    (pay("t1", "carol", "bob", 10), Code.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT),
    (pay("t1", "alice", "carol", 10), Code.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT),
    (pay("t1", "alice", "bob", 11), Code.EXISTS_WITH_DIFFERENT_AMOUNT),
    (pay("t1", "alice", "bob", 10, memo="other"), Code.EXISTS_WITH_DIFFERENT_MEMO),
    (TransferRequest("t1", "alice", "bob", 10, pending_id="h1"), Code.PENDING_ID_MUST_BE_EMPTY),
]


@pytest.mark.parametrize(("request_", "code"), DIFFERENT)
def test_the_same_id_with_another_body_says_which_field_differs(
    book: Book, request_: TransferRequest, code: Code
) -> None:
    book.run(pay("t1", "alice", "bob", 10))
    before = state_totals(book.state)
    [r] = book.run(request_)
    assert r.code == code
    assert not r.ok
    assert r.transfer is None
    assert state_totals(book.state) == before
    assert codes(book.run(pay("t1", "alice", "bob", 10))) == [Code.EXISTS]


def test_pending_id_and_timeout_differences(book: Book) -> None:
    book.run(hold("h1", "alice", "bob", 10, timeout=60.0), hold("h2", "alice", "bob", 10))
    book.run(post("c1", "h1", 4))
    assert codes(book.run(hold("h1", "alice", "bob", 10, timeout=30.0))) == [
        Code.EXISTS_WITH_DIFFERENT_TIMEOUT
    ]
    assert codes(book.run(hold("h1", "alice", "bob", 10, timeout=60.0))) == [Code.EXISTS]
    assert codes(book.run(post("c1", "h2", 4))) == [Code.EXISTS_WITH_DIFFERENT_PENDING_ID]
    assert codes(book.run(post("c1", "h1", 5))) == [Code.EXISTS_WITH_DIFFERENT_AMOUNT]
    assert codes(book.run(post("c1", "h1", 4))) == [Code.EXISTS]
    assert codes(book.run(void("c1", "h1"))) == [Code.EXISTS_WITH_DIFFERENT_FLAGS]
    # a post may restate the pending transfer's accounts; empty ones mean "as the pending"
    restated = TransferRequest("c1", "alice", "bob", 4, POST, "h1")
    assert codes(book.run(restated)) == [Code.EXISTS]
    wrong = TransferRequest("c1", "carol", "", 4, POST, "h1")
    assert codes(book.run(wrong)) == [Code.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT]


def test_a_full_post_replayed_without_an_amount_is_exists(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 10))
    [first] = book.run(post("c", "h"))
    assert first.transfer is not None
    assert first.transfer.amount == 10
    assert codes(book.run(post("c", "h"))) == [Code.EXISTS]
    assert codes(book.run(post("c", "h", 10))) == [Code.EXISTS]


def test_ids_known_only_to_the_store_are_answered_from_known(book: Book) -> None:
    [r] = book.run(pay("t1", "alice", "bob", 10))
    book.run(pay("x1", "bob", "mint", 10_000))
    assert r.transfer is not None
    failed = book.batches[-1].failed[0]
    book.state.recent.clear()  # as after a restart: only the id filter remembers
    assert book.state.unknown_ids(["t1", "x1", "fresh"]) == ["t1", "x1"]
    builder = book.state.begin(book.now, {"t1": r.transfer, "x1": failed})
    assert codes(builder.submit([pay("t1", "alice", "bob", 10)])) == [Code.EXISTS]
    assert codes(builder.submit([pay("t1", "alice", "bob", 11)])) == [
        Code.EXISTS_WITH_DIFFERENT_AMOUNT
    ]
    assert codes(builder.submit([pay("x1", "bob", "mint", 1)])) == [Code.ID_ALREADY_FAILED]


# --- two-phase --------------------------------------------------------------------------------


def test_pending_reserves_funds_on_both_sides(book: Book) -> None:
    [r] = book.run(hold("h", "alice", "bob", 600))
    assert r.code == Code.OK
    alice, bob = book.acc("alice"), book.acc("bob")
    assert (alice.debits_pending, alice.debits_posted, alice.balance) == (600, 0, 1000)
    assert (bob.credits_pending, bob.credits_posted) == (600, 0)
    assert alice.available == 400
    info = book.state.pending["h"]
    assert info.state is PendingState.PENDING
    assert info.expires_at is None
    assert codes(book.run(pay("t", "alice", "bob", 401))) == [Code.EXCEEDS_CREDITS]
    assert codes(book.run(hold("h2", "alice", "bob", 401))) == [Code.EXCEEDS_CREDITS]


def test_a_full_post_moves_the_whole_amount(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600))
    [r] = book.run(post("c", "h"))
    assert r.code == Code.OK
    assert r.transfer is not None
    assert (r.transfer.debit_account, r.transfer.credit_account, r.transfer.amount) == (
        "alice",
        "bob",
        600,
    )
    alice, bob = book.acc("alice"), book.acc("bob")
    assert (alice.debits_pending, alice.debits_posted) == (0, 600)
    assert (bob.credits_pending, bob.credits_posted) == (0, 600)
    info = book.state.pending["h"]
    assert (info.state, info.resolved_by) == (PendingState.POSTED, "c")


def test_a_partial_post_releases_the_rest(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600))
    assert codes(book.run(post("c", "h", 250))) == [Code.OK]
    alice, bob = book.acc("alice"), book.acc("bob")
    assert (alice.debits_pending, alice.debits_posted, alice.available) == (0, 250, 750)
    assert (bob.credits_pending, bob.credits_posted) == (0, 250)
    assert codes(book.run(post("c2", "h", 100))) == [Code.PENDING_TRANSFER_ALREADY_POSTED]


def test_a_void_releases_everything(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600))
    [r] = book.run(void("v", "h"))
    assert r.code == Code.OK
    assert r.transfer is not None
    assert r.transfer.amount == 600
    alice, bob = book.acc("alice"), book.acc("bob")
    assert (alice.debits_pending, alice.debits_posted, alice.available) == (0, 0, 1000)
    assert (bob.credits_pending, bob.credits_posted) == (0, 0)
    assert book.state.pending["h"].state is PendingState.VOIDED
    assert codes(book.run(void("v2", "h"))) == [Code.PENDING_TRANSFER_ALREADY_VOIDED]
    assert codes(book.run(post("c2", "h"))) == [Code.PENDING_TRANSFER_ALREADY_VOIDED]


def test_a_second_resolution_is_refused_and_remembered(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600))
    book.run(post("c", "h"))
    before = state_totals(book.state)
    assert codes(book.run(post("c2", "h"))) == [Code.PENDING_TRANSFER_ALREADY_POSTED]
    assert codes(book.run(void("v2", "h"))) == [Code.PENDING_TRANSFER_ALREADY_POSTED]
    assert state_totals(book.state) == before
    assert codes(book.run(post("c2", "h"))) == [Code.ID_ALREADY_FAILED]


def test_resolution_amount_and_account_checks(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600))
    assert codes(book.run(post("c1", "h", 601))) == [Code.EXCEEDS_PENDING_TRANSFER_AMOUNT]
    partial_void = TransferRequest("v1", amount=100, flags=VOID, pending_id="h")
    assert codes(book.run(partial_void)) == [Code.EXCEEDS_PENDING_TRANSFER_AMOUNT]
    other_debit = TransferRequest("c2", "carol", "", None, POST, "h")
    assert codes(book.run(other_debit)) == [Code.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT]
    other_credit = TransferRequest("c3", "", "carol", None, POST, "h")
    assert codes(book.run(other_credit)) == [Code.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT]
    assert book.state.pending["h"].state is PendingState.PENDING
    assert book.acc("alice").debits_pending == 600
    # an amount of 0 on a post means the whole pending amount, like None
    assert codes(book.run(post("c4", "h", 0))) == [Code.OK]
    assert book.acc("bob").credits_posted == 600
    for tid in ("c1", "v1", "c2", "c3"):
        assert codes(book.run(post(tid, "h"))) == [Code.ID_ALREADY_FAILED]


def test_pending_then_post_in_one_batch(book: Book) -> None:
    results = book.run(hold("h", "alice", "bob", 600), post("c", "h", 100))
    assert codes(results) == [Code.OK, Code.OK]
    assert book.acc("alice").balance == 900
    assert book.state.pending["h"].state is PendingState.POSTED


# --- expiry -----------------------------------------------------------------------------------


def test_pending_expires_on_time_and_releases_its_funds(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600, timeout=30.0))
    info = book.state.pending["h"]
    assert info.expires_at == book.now + 30.0
    book.now += 29.0
    assert book.tick() == []
    assert book.acc("alice").debits_pending == 600
    book.now += 1.0
    assert book.tick() == ["h"]
    assert book.state.pending["h"].state is PendingState.EXPIRED
    alice, bob = book.acc("alice"), book.acc("bob")
    assert (alice.debits_pending, alice.debits_posted, alice.available) == (0, 0, 1000)
    assert (bob.credits_pending, bob.credits_posted) == (0, 0)
    assert codes(book.run(post("c", "h"))) == [Code.PENDING_TRANSFER_EXPIRED]
    assert codes(book.run(void("v", "h"))) == [Code.PENDING_TRANSFER_EXPIRED]
    assert book.tick() == []  # expires once


def test_a_post_at_the_deadline_is_too_late_even_before_the_sweep(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600, timeout=10.0))
    book.now += 10.0
    builder = book.state.begin(book.now)  # no expire_due: the post itself sees the deadline
    assert codes(builder.submit([post("c", "h")])) == [Code.PENDING_TRANSFER_EXPIRED]


def test_a_posted_pending_does_not_expire(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600, timeout=10.0))
    book.run(post("c", "h", 100))
    book.now += 100
    assert book.tick() == []
    assert book.state.pending["h"].state is PendingState.POSTED
    assert book.acc("alice").balance == 900


def test_expiry_is_in_the_block_hash(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600, timeout=10.0))
    book.now += 10.0
    book.tick()
    batch = book.batches[-1]
    content = blocks.content_hash([], [], ["h"])
    assert batch.hash == blocks.block_hash(batch.number, batch.prev_hash, content, batch.timestamp)


def test_an_abandoned_batch_puts_its_expiries_back(book: Book) -> None:
    book.run(hold("h", "alice", "bob", 600, timeout=10.0))
    book.now += 10.0
    builder = book.begin()
    assert builder.expired == ["h"]
    assert book.state.expiries == []
    builder.abandon()
    assert book.state.pending["h"].state is PendingState.PENDING
    assert book.acc("alice").debits_pending == 600
    assert book.tick() == ["h"]


def test_a_batch_only_reports_pending_states_it_changed(book: Book) -> None:
    """Re-touching a resolved pending transfer must not re-report it as changed: the store
    would record the expiry again in the later block and the hash chain would break."""
    book.run(hold("h", "alice", "bob", 600, timeout=10.0), hold("k", "alice", "bob", 1))
    book.now += 10.0
    book.tick()
    builder = book.begin(["c"])
    assert codes(builder.submit([post("c", "h"), post("c2", "nope")])) == [
        Code.PENDING_TRANSFER_EXPIRED,
        Code.PENDING_TRANSFER_NOT_FOUND,
    ]
    assert builder.finish().pending_changes == []
    builder = book.begin(["c3"])
    builder.submit([post("c3", "k")])
    assert [p[:2] for p in builder.finish().pending_changes] == [("k", PendingState.POSTED)]


# --- linked chains ----------------------------------------------------------------------------


def _linked(r: TransferRequest) -> TransferRequest:
    return dataclasses.replace(r, flags=r.flags | LINKED)


def test_a_linked_chain_applies_every_leg(book: Book) -> None:
    results = book.run(
        pay("l1", "alice", "bob", 100, LINKED),
        pay("l2", "alice", "carol", 200, LINKED),
        pay("l3", "bob", "carol", 50),
    )
    assert codes(results) == [Code.OK] * 3
    assert (book.balance("alice"), book.balance("bob"), book.balance("carol")) == (700, 50, 750)


def test_a_failing_leg_rolls_the_whole_chain_back_exactly(book: Book) -> None:
    book.run(hold("h", "alice", "carol", 100), pay("before", "alice", "bob", 1))
    before = state_totals(book.state)
    seq = book.state.next_seq
    builder = book.begin()
    results = builder.submit(
        [
            pay("l1", "alice", "bob", 300, LINKED),
            _linked(hold("l2", "alice", "carol", 200, timeout=5.0)),
            post("l3", "h", 40, LINKED),
            pay("l4", "bob", "mint", 10_000, LINKED),  # fails: bob cannot pay that
            pay("l5", "mint", "bob", 5),
        ]
    )
    assert codes(results) == [
        Code.LINKED_EVENT_FAILED,
        Code.LINKED_EVENT_FAILED,
        Code.LINKED_EVENT_FAILED,
        Code.EXCEEDS_CREDITS,
        Code.LINKED_EVENT_FAILED,
    ]
    assert builder.batch.transfers == []
    assert "l2" not in builder.pending
    assert builder.pending["h"].state is PendingState.PENDING
    assert builder.seq == seq
    assert [f.id for f in builder.batch.failed] == ["l4"]  # only the failing leg is remembered
    # a transfer after the chain in the same batch continues the seq
    assert codes(builder.submit([pay("after", "alice", "bob", 1)])) == [Code.OK]
    assert builder.batch.transfers[0].seq == seq
    book.land(builder)
    after = state_totals(book.state)
    after["alice"] = (after["alice"][0], after["alice"][1] - 1, *after["alice"][2:])
    after["bob"] = (*after["bob"][:3], after["bob"][3] - 1)
    assert after == before
    # the other legs were not recorded: they may be sent again; the failing one may not
    again = book.run(pay("l1", "alice", "bob", 300, LINKED), pay("l5", "mint", "bob", 5))
    assert codes(again) == [Code.OK, Code.OK]
    assert codes(book.run(pay("l4", "bob", "mint", 1))) == [Code.ID_ALREADY_FAILED]
    assert codes(book.run(post("l3", "h", 40))) == [Code.OK]


def test_a_chain_failing_validation_records_nothing(book: Book) -> None:
    before = state_totals(book.state)
    results = book.run(
        pay("l1", "alice", "bob", 300, LINKED),
        pay("l2", "alice", "bob", 0, LINKED),
        pay("l3", "alice", "bob", 1),
    )
    assert codes(results) == [
        Code.LINKED_EVENT_FAILED,
        Code.AMOUNT_MUST_NOT_BE_ZERO,
        Code.LINKED_EVENT_FAILED,
    ]
    assert book.batches[-1].failed == []
    assert state_totals(book.state) == before
    again = book.run(
        pay("l1", "alice", "bob", 300, LINKED),
        pay("l2", "alice", "bob", 2, LINKED),
        pay("l3", "alice", "bob", 1),
    )
    assert codes(again) == [Code.OK] * 3


def test_a_chain_with_an_existing_id_that_differs_fails(book: Book) -> None:
    book.run(pay("old", "alice", "bob", 5))
    results = book.run(pay("n1", "alice", "bob", 1, LINKED), pay("old", "alice", "bob", 6))
    assert codes(results) == [Code.LINKED_EVENT_FAILED, Code.EXISTS_WITH_DIFFERENT_AMOUNT]
    results = book.run(pay("n1", "alice", "bob", 1, LINKED), pay("old", "alice", "bob", 5))
    assert codes(results) == [Code.OK, Code.EXISTS]


def test_an_open_chain_is_refused_as_a_whole(book: Book) -> None:
    before = state_totals(book.state)
    results = book.run(
        pay("s", "alice", "bob", 1),
        pay("l1", "alice", "bob", 300, LINKED),
        pay("l2", "alice", "bob", 300, LINKED),
    )
    assert codes(results) == [Code.OK, Code.LINKED_EVENT_CHAIN_OPEN, Code.LINKED_EVENT_CHAIN_OPEN]
    assert book.balance("alice") == before["alice"][3] - before["alice"][1] - 1
    assert [t.id for t in book.batches[-1].transfers] == ["s"]
    assert book.batches[-1].failed == []
    assert codes(book.run(pay("l1", "alice", "bob", 300))) == [Code.OK]


def test_a_single_linked_transfer_is_an_open_chain(book: Book) -> None:
    assert codes(book.run(pay("l", "alice", "bob", 1, LINKED))) == [Code.LINKED_EVENT_CHAIN_OPEN]


def test_chains_in_one_batch_are_independent(book: Book) -> None:
    results = book.run(
        pay("a1", "alice", "bob", 100, LINKED),
        pay("a2", "bob", "carol", 100),
        pay("b1", "alice", "bob", 100, LINKED),
        pay("b2", "bob", "carol", 10_000),
        pay("c1", "alice", "bob", 100, LINKED),
        pay("c2", "bob", "carol", 100),
    )
    assert codes(results) == [
        Code.OK,
        Code.OK,
        Code.LINKED_EVENT_FAILED,
        Code.EXCEEDS_CREDITS,
        Code.OK,
        Code.OK,
    ]
    assert book.balance("alice") == 800
    assert book.balance("bob") == 0
    assert book.balance("carol") == 700


def test_a_chain_can_use_funds_its_earlier_legs_moved(book: Book) -> None:
    results = book.run(
        pay("l1", "alice", "bob", 1000, LINKED),
        _linked(hold("l2", "bob", "carol", 1000)),
        post("l3", "l2", 400),
    )
    assert codes(results) == [Code.OK] * 3
    assert (book.balance("alice"), book.balance("bob"), book.available("bob")) == (0, 600, 600)


# --- accounts ---------------------------------------------------------------------------------


def test_account_creation_codes(book: Book) -> None:
    builder = book.begin()
    assert builder.create_account(wallet("dave")) == Code.OK
    assert builder.create_account(wallet("dave")) == Code.ACCOUNT_EXISTS
    assert builder.create_account(wallet("alice")) == Code.ACCOUNT_EXISTS
    assert builder.create_account(wallet("alice", reserve=5)) == (
        Code.ACCOUNT_EXISTS_WITH_DIFFERENT_FIELDS
    )
    assert builder.create_account(system("alice")) == Code.ACCOUNT_EXISTS_WITH_DIFFERENT_FIELDS
    assert builder.create_account(wallet("bad id")) == Code.ID_INVALID
    smuggled = wallet("eve")
    smuggled.credits_posted = 10**6
    assert builder.create_account(smuggled) == Code.OK
    book.land(builder)
    assert book.acc("eve").credits_posted == 0  # totals only ever come from transfers
    assert book.acc("dave").created_at == book.now
    assert [a.id for a in book.batches[-1].accounts_created] == ["dave", "eve"]


# --- copy-on-write ----------------------------------------------------------------------------


def test_nothing_reaches_the_state_before_commit(book: Book) -> None:
    before = state_totals(book.state)
    head = (book.state.head_number, book.state.head_hash, book.state.next_seq)
    builder = book.begin()
    builder.create_account(wallet("dave"))
    builder.submit([pay("t", "alice", "dave", 10), hold("h", "alice", "bob", 10)])
    builder.submit([pay("x", "bob", "alice", 10**6)])
    builder.finish()
    assert state_totals(book.state) == before
    assert "dave" not in book.state.accounts
    assert "h" not in book.state.pending
    assert "t" not in book.state.recent
    assert "x" not in book.state.recent
    assert "t" not in book.state.seen
    assert (book.state.head_number, book.state.head_hash, book.state.next_seq) == head
    builder.abandon()
    # the same ids go through afterwards
    assert codes(book.run(pay("t", "alice", "bob", 10))) == [Code.OK]
    assert codes(book.run(pay("x", "alice", "bob", 10))) == [Code.OK]


def test_an_empty_batch_is_empty(book: Book) -> None:
    builder = book.begin()
    assert builder.empty()
    builder.submit([pay("v", "alice", "bob", 0)])
    assert builder.empty()
    builder.submit([pay("x", "bob", "alice", 10**6)])
    assert not builder.empty()


# --- the pipelined (parent) builder -----------------------------------------------------------


def test_a_child_builder_sees_the_uncommitted_parent() -> None:
    book = Book()
    book.accounts(system("mint"), wallet("alice"), wallet("bob"))
    book.run(pay("f", "mint", "alice", 1000), hold("old", "alice", "bob", 100))

    parent = book.begin()
    assert parent.create_account(wallet("dave")) == Code.OK
    assert codes(
        parent.submit(
            [
                pay("p1", "alice", "bob", 300),
                hold("ph", "alice", "bob", 200),
                pay("px", "bob", "alice", 10**6),
                post("pc", "old", 60),
            ]
        )
    ) == [Code.OK, Code.OK, Code.EXCEEDS_CREDITS, Code.OK]
    parent_batch = parent.finish()

    child = book.state.begin(book.now - 5.0, {}, parent)
    assert child.timestamp == parent.timestamp  # never earlier than its parent
    assert child.batch.number == parent_batch.number + 1
    assert child.batch.prev_hash == parent_batch.hash
    assert child.seq == parent.seq
    alice = child.account("alice")
    assert alice is not None
    assert (alice.debits_posted, alice.debits_pending, alice.available) == (360, 200, 440)
    assert codes(
        child.submit(
            [
                pay("c1", "alice", "dave", 441),  # one more than the parent left
                pay("c2", "alice", "dave", 440),
                pay("p1", "alice", "bob", 300),
                pay("px", "bob", "alice", 1),
                post("c3", "ph", 50),
                post("c4", "old"),
                pay("c5", "dave", "bob", 1),
                TransferRequest("c2", "alice", "dave", 439),
            ]
        )
    ) == [
        Code.EXCEEDS_CREDITS,
        Code.OK,
        Code.EXISTS,
        Code.ID_ALREADY_FAILED,
        Code.OK,
        Code.PENDING_TRANSFER_ALREADY_POSTED,
        Code.OK,
        Code.EXISTS_WITH_DIFFERENT_AMOUNT,
    ]
    assert child.account("dave") is not None
    assert child.create_account(wallet("dave")) == Code.ACCOUNT_EXISTS
    # nothing of either is visible in the base state yet
    assert "dave" not in book.state.accounts
    assert book.acc("alice").debits_posted == 0
    child_batch = child.finish()
    assert [t.seq for t in child_batch.transfers] == [
        parent.seq,
        parent.seq + 1,
        parent.seq + 2,
    ]

    book.state.commit(parent)
    book.state.commit(child)
    assert book.state.head_number == child_batch.number
    assert book.state.head_hash == child_batch.hash
    assert book.state.next_seq == child.seq
    alice_now, bob, dave = book.acc("alice"), book.acc("bob"), book.acc("dave")
    assert (alice_now.debits_posted, alice_now.debits_pending, alice_now.balance) == (
        360 + 440 + 50,
        0,
        1000 - 850,
    )
    assert (bob.credits_posted, bob.credits_pending, dave.balance) == (300 + 60 + 50 + 1, 0, 439)
    assert book.state.pending["ph"].state is PendingState.POSTED
    assert {"p1", "px", "c1", "c2", "c3", "c4", "c5"} <= set(book.state.recent)


def test_a_child_matches_sequential_application() -> None:
    ops = [
        [pay("a", "alice", "bob", 400), hold("h", "alice", "bob", 300)],
        [pay("b", "alice", "bob", 301), post("c", "h", 100), pay("d", "bob", "alice", 50)],
    ]

    def fresh() -> Book:
        book = Book()
        book.accounts(system("mint"), wallet("alice"), wallet("bob"))
        book.run(pay("f", "mint", "alice", 1000))
        return book

    sequential = fresh()
    seq_codes = [codes(sequential.run(*op)) for op in ops]

    piped = fresh()
    parent = piped.begin()
    first = parent.submit(ops[0])
    parent.finish()
    child = piped.state.begin(piped.now, {}, parent)
    second = child.submit(ops[1])
    child.finish()
    piped.state.commit(parent)
    piped.state.commit(child)
    assert [codes(first), codes(second)] == seq_codes
    assert state_totals(piped.state) == state_totals(sequential.state)
    assert piped.state.next_seq == sequential.state.next_seq


def test_a_child_of_an_abandoned_parent_puts_expiries_back() -> None:
    book = Book()
    book.accounts(system("mint"), wallet("alice"), wallet("bob"))
    book.run(pay("f", "mint", "alice", 1000), hold("h", "alice", "bob", 100, timeout=1.0))
    book.run(hold("k", "alice", "bob", 100, timeout=2.0))
    book.now += 1.0
    parent = book.begin()
    assert parent.expired == ["h"]
    parent.finish()
    book.now += 1.0
    child = book.state.begin(book.now, {}, parent)
    assert child.expire_due() == ["k"]
    child.finish()
    child.abandon()
    parent.abandon()
    assert sorted(book.state.expiries) == [(book.now - 1.0, "h"), (book.now, "k")]
    assert book.acc("alice").debits_pending == 200
    assert sorted(book.tick()) == ["h", "k"]
    assert book.acc("alice").debits_pending == 0


def test_commit_updates_the_state_in_place() -> None:
    state = LedgerState()
    other = LedgerState()
    builder = other.begin(5.0)
    builder.create_account(system("a"))
    builder.finish()
    other.commit(builder)
    keep = state
    state.replace(other)
    assert keep.accounts is other.accounts
    assert keep.head_number == 1
    assert keep.head_hash == other.head_hash
