"""Stateful property test: the real engine and the real SQLite store against a naive model.

Each step is one or two blocks driven exactly as the group-commit writer drives them (ids the
memory no longer holds are looked up in the store, due pending transfers expire first, the block
is written and only then committed), including the writer's failure paths: a write that fails
(and memory is reloaded from the store), a write that landed but raised (reload again), and the
pipelined path where block N+1 is built on top of block N before N is written.

After every step: debits equal credits (pending and posted), no limited account is below its
reserve, and the model's balances and pending states equal the ledger's.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fogcoord.storage.engine import create_engine
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.engine import BatchBuilder, LedgerState
from fogcoord.tokenomics.model import Account, TransferRequest
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import verify_ledger
from tests.tokenomics.ledger_model import STATE_CODES, MAccount, Model
from tests.tokenomics.ledger_support import (
    LINKED,
    PENDING,
    POST,
    VOID,
    codes,
    state_totals,
    store_totals,
    system,
    wallet,
)


def unlinked(r: TransferRequest) -> TransferRequest:
    return dataclasses.replace(r, flags=r.flags & ~LINKED)


OUTCOMES = st.sampled_from(["commit"] * 6 + ["fail", "landed"])
AMOUNTS = st.integers(min_value=1, max_value=400)
TIMEOUTS = st.sampled_from([0.0, 0.0, 5.0, 20.0])
REPLAY_CODES = {"exists", "id_already_failed"}


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-stateful-"))
        # synchronous=OFF: durability is test_crash's subject; here it only costs time
        self.engine = create_engine(f"sqlite:///{self.tmp / 'l.db'}", synchronous="OFF")
        self.store = SqlLedgerStore(self.engine)
        self.state = LedgerState()
        self.model = Model()
        self.now = 1_000.0
        self.counter = 0
        self.sent: list[TransferRequest] = []
        # id -> what to send again to replay it exactly: the whole chain for a leg of a chain
        # that applied, the request alone (unlinked) for one that failed and was remembered
        self.recorded: dict[str, list[TransferRequest]] = {}
        self.limited: list[str] = []
        self.unlimited: list[str] = ["mint"]
        self._accounts([system("mint"), wallet("w0")])
        self.limited.append("w0")

    def teardown(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- driving blocks as the writer does ---------------------------------------------------

    def _fresh_id(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def _begin(
        self, ops: list[list[TransferRequest]], parent: BatchBuilder | None = None
    ) -> BatchBuilder:
        unknown = self.state.unknown_ids([r.id for op in ops for r in op])
        known = self.store.lookup(unknown) if unknown else {}
        return self.state.begin(self.now, known, parent)

    def _apply(
        self, builder: BatchBuilder, model: Model, ops: list[list[TransferRequest]]
    ) -> list[list[str]]:
        assert sorted(builder.expire_due()) == sorted(model.expire(builder.timestamp))
        got = [codes(builder.submit(op)) for op in ops]
        want = [model.submit(op, builder.timestamp) for op in ops]
        assert got == want, (ops, got, want)
        for op in ops:
            self.sent.extend(op)
        return got

    def _record(self, ops: list[list[TransferRequest]], got: list[list[str]]) -> None:
        for op, results in zip(ops, got, strict=True):
            chain: list[tuple[TransferRequest, str]] = []
            for request, code in zip(op, results, strict=True):
                chain.append((request, code))
                if request.flags & LINKED:
                    continue
                legs = [r for r, _ in chain]
                for r, c in chain:
                    if c == "ok":
                        self.recorded.setdefault(r.id, legs)
                    elif c in STATE_CODES:
                        self.recorded.setdefault(r.id, [unlinked(r)])
                chain = []

    def _reload(self) -> None:
        self.state.replace(LedgerState.from_loaded(self.store.load()))

    def _land(self, builder: BatchBuilder, outcome: str) -> bool:
        """Write and commit, or fail like the writer (abandon, reload); True if it landed."""
        if builder.empty():
            return True  # the writer answers an empty batch without writing it
        batch = builder.finish()
        if outcome == "fail":
            builder.abandon()
            self._reload()
            return False
        self.store.write(batch)
        if outcome == "landed":
            builder.abandon()
            self._reload()
        else:
            self.state.commit(builder)
        return True

    def _block(self, ops: list[list[TransferRequest]], outcome: str = "commit") -> list[list[str]]:
        model = self.model.clone()
        builder = self._begin(ops)
        got = self._apply(builder, model, ops)
        if self._land(builder, outcome):
            self.model = model
            self._record(ops, got)
        return got

    def _accounts(self, accounts: list[Account]) -> None:
        builder = self._begin([])
        model = self.model.clone()
        assert sorted(builder.expire_due()) == sorted(model.expire(self.now))
        for acc in accounts:
            assert builder.create_account(acc) == Code.OK
            model.accounts[acc.id] = MAccount(bool(acc.flags), acc.reserve)
        assert self._land(builder, "commit")
        self.model = model

    # --- drawing requests ------------------------------------------------------------------

    def _account(self, data: st.DataObject, label: str) -> str:
        names = self.limited + self.unlimited
        if len(names) > 3:
            names.append("ghost")  # never created: the transfer fails as a whole
        return data.draw(st.sampled_from(names), label=label)

    def _pair(self, data: st.DataObject) -> tuple[str, str]:
        debit = self._account(data, "debit")
        credit = self._account(data, "credit")
        if credit == debit:
            credit = "mint" if debit != "mint" else "w0"
        return debit, credit

    def _move(self, data: st.DataObject, *, pending: bool, flags: int = 0) -> TransferRequest:
        debit, credit = self._pair(data)
        timeout = data.draw(TIMEOUTS, label="timeout") if pending else 0.0
        return TransferRequest(
            self._fresh_id(),
            debit,
            credit,
            data.draw(AMOUNTS, label="amount"),
            flags | (PENDING if pending else 0),
            None,
            timeout,
        )

    def _resolution(self, data: st.DataObject, flags: int = 0) -> TransferRequest:
        targets = [*sorted(self.model.pending), "no-such-pending"]
        pid = data.draw(st.sampled_from(targets), label="pending_id")
        posting = data.draw(st.booleans(), label="post")
        full = self.model.pending[pid].amount if pid in self.model.pending else 100
        amount: int | None
        if posting:
            amount = data.draw(
                st.sampled_from([None, 0, full, full + 1, max(1, full // 2)]), label="post amount"
            )
        else:
            amount = data.draw(st.sampled_from([None, full, max(1, full - 1)]), label="void amt")
        return TransferRequest(
            self._fresh_id(),
            amount=amount,
            flags=flags | (POST if posting else VOID),
            pending_id=pid,
        )

    def _leg(self, data: st.DataObject, flags: int) -> TransferRequest:
        kind = data.draw(st.sampled_from(["single", "single", "pending", "resolve", "bad"]))
        if kind == "single":
            return self._move(data, pending=False, flags=flags)
        if kind == "pending":
            return self._move(data, pending=True, flags=flags)
        if kind == "resolve":
            return self._resolution(data, flags)
        bad = data.draw(st.sampled_from(["zero", "ghost", "huge"]), label="bad leg")
        debit, credit = self._pair(data)
        if bad == "ghost":
            debit = "ghost"
        amount = {"zero": 0, "ghost": 1, "huge": 10**9}[bad]
        if bad == "huge" and debit in self.unlimited:
            debit = self.limited[0]
            credit = credit if credit != debit else "mint"
        return TransferRequest(self._fresh_id(), debit, credit, amount, flags)

    # --- rules -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.limited) + len(self.unlimited) < 8)
    @rule(limited=st.booleans(), reserve=st.sampled_from([0, 0, 25, 100]))
    def create_account(self, limited: bool, reserve: int) -> None:
        if limited:
            name = f"w{len(self.limited)}"
            self._accounts([wallet(name, reserve=reserve)])
            self.limited.append(name)
        else:
            name = f"u{len(self.unlimited)}"
            self._accounts([system(name)])
            self.unlimited.append(name)

    @rule(data=st.data(), amount=st.integers(min_value=1, max_value=2_000))
    def fund(self, data: st.DataObject, amount: int) -> None:
        target = data.draw(st.sampled_from(self.limited), label="wallet")
        [got] = self._block([[TransferRequest(self._fresh_id(), "mint", target, amount)]])
        assert got == ["ok"]

    @rule(data=st.data(), outcome=OUTCOMES)
    def single(self, data: st.DataObject, outcome: str) -> None:
        self._block([[self._move(data, pending=False)]], outcome)

    @rule(data=st.data(), outcome=OUTCOMES)
    def pending(self, data: st.DataObject, outcome: str) -> None:
        self._block([[self._move(data, pending=True)]], outcome)

    @precondition(lambda self: bool(self.model.pending))
    @rule(data=st.data(), outcome=OUTCOMES)
    def resolve(self, data: st.DataObject, outcome: str) -> None:
        self._block([[self._resolution(data)]], outcome)

    @rule(data=st.data(), legs=st.integers(min_value=2, max_value=4), outcome=OUTCOMES)
    def chain(self, data: st.DataObject, legs: int, outcome: str) -> None:
        close = data.draw(st.integers(0, 9), label="close") > 0  # sometimes leave it open
        requests = [self._leg(data, LINKED) for _ in range(legs - 1)]
        requests.append(self._leg(data, 0 if close else LINKED))
        got = self._block([requests], outcome)[0]
        if not close:
            assert got == ["linked_event_chain_open"] * legs
        elif set(got) - {"ok", "exists"}:
            assert sum(c != "linked_event_failed" for c in got) == 1

    @rule(data=st.data(), ops=st.integers(min_value=2, max_value=6), outcome=OUTCOMES)
    def mixed_block(self, data: st.DataObject, ops: int, outcome: str) -> None:
        batch: list[list[TransferRequest]] = []
        for _ in range(ops):
            kind = data.draw(st.sampled_from(["single", "pending", "resolve", "replay"]))
            if kind == "replay" and self.sent:
                batch.append([data.draw(st.sampled_from(self.sent), label="replay")])
            elif kind == "pending":
                batch.append([self._move(data, pending=True)])
            elif kind == "resolve":
                batch.append([self._resolution(data)])
            else:
                batch.append([self._move(data, pending=False)])
        self._block(batch, outcome)

    @precondition(lambda self: bool(self.recorded))
    @rule(data=st.data(), change=st.sampled_from(["same", "same", "memo", "amount"]))
    def replay(self, data: st.DataObject, change: str) -> None:
        tid = data.draw(st.sampled_from(sorted(self.recorded)), label="replayed")
        unit = self.recorded[tid]
        if change != "same":
            original = unlinked(next(r for r in unit if r.id == tid))
            if change == "memo":
                unit = [dataclasses.replace(original, memo="changed")]
            else:
                unit = [dataclasses.replace(original, amount=(original.amount or 1) + 1)]
        before = state_totals(self.state)
        head = (self.state.head_number, self.state.head_hash)
        [got] = self._block([unit])
        if change == "same":
            assert set(got) <= REPLAY_CODES, got
        else:
            [code] = got
            assert code in REPLAY_CODES or code.startswith("exists_with_different_"), code
        assert state_totals(self.state) == before
        assert (self.state.head_number, self.state.head_hash) == head

    @rule(data=st.data())
    def pipelined(self, data: st.DataObject) -> None:
        """Block N+1 built on N before N is written, as the writer's second stage does."""
        first = [[self._move(data, pending=data.draw(st.booleans()))] for _ in range(2)]
        if self.model.pending:
            first.append([self._resolution(data)])
        model = self.model.clone()
        parent = self._begin(first)
        first_got = self._apply(parent, model, first)
        if parent.empty():  # answered without a write: nothing to build on
            return
        parent.finish()  # the writer seals N before it builds N+1 on top
        second = [[self._move(data, pending=False)], [self._resolution(data)]]
        if self.sent:
            second.append([data.draw(st.sampled_from(self.sent), label="replay")])
        child_model = model.clone()
        child = self._begin(second, parent)
        second_got = self._apply(child, child_model, second)
        parent_outcome = data.draw(OUTCOMES, label="parent outcome")
        landed = self._land(parent, parent_outcome)
        if landed:
            self.model = model
            self._record(first, first_got)
        if parent_outcome != "commit":
            child.abandon()  # the writer throws N+1 away and queues its requests again
            return
        if self._land(child, data.draw(OUTCOMES, label="child outcome")):
            self.model = child_model
            self._record(second, second_got)

    @rule(seconds=st.sampled_from([1.0, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._block([])  # a tick: expires what is due

    @rule()
    def restart(self) -> None:
        loaded = self.store.load()
        assert loaded.head_number == self.state.head_number
        assert loaded.next_seq == self.state.next_seq
        self.state = LedgerState.from_loaded(loaded)

    @rule()
    def verify(self) -> None:
        assert store_totals(self.store) == state_totals(self.state)
        report = verify_ledger(self.store)
        assert report.ok, report.problems

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def debits_equal_credits(self) -> None:
        accounts = list(self.state.accounts.values())
        assert sum(a.debits_posted for a in accounts) == sum(a.credits_posted for a in accounts)
        assert sum(a.debits_pending for a in accounts) == sum(a.credits_pending for a in accounts)

    @invariant()
    def no_limited_account_below_its_reserve(self) -> None:
        for name in self.limited:
            acc = self.state.accounts[name]
            spent = acc.debits_posted + acc.debits_pending
            # a reserve is a floor for debits: an account funded below it cannot spend at all
            assert spent == 0 or acc.credits_posted - spent >= acc.reserve
            assert acc.credits_posted - spent >= 0
            assert acc.debits_pending >= 0
            assert acc.credits_pending >= 0

    @invariant()
    def the_model_agrees(self) -> None:
        assert state_totals(self.state) == {
            name: acc.totals() for name, acc in self.model.accounts.items()
        }
        states = {pid: info.state.value for pid, info in self.state.pending.items()}
        assert states == {pid: p.state for pid, p in self.model.pending.items()}


LedgerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerMachine = LedgerMachine.TestCase
