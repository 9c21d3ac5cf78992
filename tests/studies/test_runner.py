"""Federated studies end to end in one process: a real coordinator on SQLite, devices on fake
agent channels that train with the agent's real :class:`TrainingExecutor` (some of them
poisoning), robust, secure and grouped rounds, dropouts, privacy budgets, money, a restart and
cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import GaussianDpEvent, SelfComposedDpEvent  # type: ignore[import-untyped]
from dp_accounting.rdp import RdpAccountant  # type: ignore[import-untyped]

from fogcoord.agent.identity import DeviceIdentity
from fogcoord.agent.training import Poison, TrainingExecutor
from fogcoord.contracts.studies import (
    RoundRecord,
    StudySpec,
    StudyState,
    StudyView,
    decode_model,
    encode_model,
)
from fogcoord.contracts.units import MICRO_PER_TOKEN, to_micro
from fogcoord.coordinator import Coordinator
from fogcoord.privacy.dp import gaussian_sigma
from fogcoord.tokenomics.escrow import escrow_account
from fogcoord.tokenomics.ledger import MINT
from fogcoord.tokenomics.model import TransferFlags
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import verify_ledger
from fogcoord.trainers.logreg import (
    LogisticRegressionTrainer,
    accuracy,
    held_out_set,
    initial_model,
)
from tests.harvesting.support import cap, principal_of
from tests.helpers import make_config

REQUESTER = "req"
GRANT = 10 * MICRO_PER_TOKEN
"""What every new wallet is granted (the default ``default_balance``), in micro-tokens."""
DELTA = 1e-5
"""The default ``privacy.differential_privacy.default_delta``."""
WAIT_S = 30.0
Arrays = dict[str, np.ndarray[Any, Any]]


# --- scaffolding -----------------------------------------------------------------------------


@dataclass
class FakeDevice:
    """An open agent channel whose device answers study pushes with a real TrainingExecutor."""

    harness: StudyHarness
    device_id: str
    owner: str
    executor: TrainingExecutor
    silent: bool = False
    update: Arrays | None = None
    """When set, the device answers every ``train`` request with this update (as is)."""
    gate: asyncio.Event | None = None
    """When set, the device answers only once the event is set."""
    received: list[dict[str, Any]] = field(default_factory=list)

    async def send_json(self, data: Any, mode: str = "text") -> None:
        self.received.append(data)
        if not self.silent:
            self.harness.spawn(self._answer(data))

    async def _answer(self, message: dict[str, Any]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.update is not None:
            reply: dict[str, Any] | None = {
                "type": "study_result",
                "request_id": message.get("request_id"),
                "update": {k: v.model_dump() for k, v in encode_model(self.update).items()},
                "examples": 100,
                "metrics": {},
            }
        else:
            reply = await self.executor(message)
        if reply is not None:
            # what the agent channel's handler does with a ``study_result`` frame
            self.harness.coord.studies.on_reply(self.device_id, reply)


class StudyHarness:
    """A started coordinator over ``data_dir``, devices on fake channels, a requester wallet."""

    def __init__(self, data_dir: Path, budget: float = 1_000.0) -> None:
        self.config = make_config(
            data_dir, privacy={"differential_privacy": {"budget_per_participant": budget}}
        )
        self.coord = Coordinator(self.config)
        self.devices: dict[str, FakeDevice] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.coord.start()
        if self.coord.tokenomics.wallet_owner(REQUESTER) is None:
            await self.coord.tokenomics.initialize_wallet(REQUESTER)
        for device in self.devices.values():
            await self._connect(device)

    async def restart(self) -> None:
        """Stop the coordinator and start a new one over the same data directory."""
        await self.coord.stop()
        self.coord = Coordinator(self.config)
        await self.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.coord.stop()

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def add_device(
        self,
        device_id: str,
        *,
        poison: Poison | None = None,
        silent: bool = False,
        update: Arrays | None = None,
    ) -> FakeDevice:
        """Register an eligible device (plugged in, its own owner) and open its channel."""
        identity = DeviceIdentity(device_id, DeviceIdentity.generate().private_key)
        executor = TrainingExecutor(lambda: identity, poison=poison)
        device = FakeDevice(
            self, device_id, f"owner-{device_id}", executor, silent=silent, update=update
        )
        self.devices[device_id] = device
        await self.coord.harvesting.register_device(
            cap(device_id, device.owner, charging=True, battery_percent=90),
            principal_id=principal_of(device_id),
        )
        await self._connect(device)
        return device

    async def add_fleet(
        self, n: int, poisoners: int = 0, prefix: str = "dev-"
    ) -> tuple[list[str], set[str]]:
        """``n`` devices, the first ``poisoners`` of them sending sign-flipped, scaled updates."""
        ids = [f"{prefix}{i:02d}" for i in range(n)]
        for i, device_id in enumerate(ids):
            await self.add_device(device_id, poison=Poison() if i < poisoners else None)
        return ids, set(ids[:poisoners])

    async def _connect(self, device: FakeDevice) -> None:
        await self.coord.harvesting.heartbeat(
            device.device_id, battery_percent=90, charging=True, thermal_celsius=30
        )
        self.coord.channels.connected(device.device_id, device)

    async def create(self, **over: Any) -> StudyView:
        return await self.coord.studies.create(REQUESTER, spec(**over))

    def view(self, study_id: str) -> StudyView:
        return self.coord.studies.view(study_id)

    async def wait_end(self, study_id: str, timeout: float = WAIT_S) -> StudyView:
        await eventually(lambda: self.view(study_id).state is not StudyState.RUNNING, timeout)
        return self.view(study_id)

    async def wait_rounds(self, study_id: str, rounds: int, timeout: float = WAIT_S) -> StudyView:
        await eventually(lambda: self.view(study_id).rounds_done >= rounds, timeout)
        return self.view(study_id)

    def model(self, study_id: str) -> Arrays:
        return decode_model(self.coord.studies.model(study_id))

    # --- money -------------------------------------------------------------------------------

    def balance(self, wallet: str) -> int:
        account = self.coord.tokenomics.ledger.account(wallet)
        return account.balance if account is not None else 0

    def escrow_balance(self, study_id: str) -> int:
        account = self.coord.tokenomics.ledger.account(escrow_account(study_id))
        assert account is not None
        assert (account.credits_pending, account.debits_pending) == (0, 0)
        return account.balance

    def posted_ids(self) -> dict[str, tuple[str, str, int]]:
        """Id -> (debit, credit, amount) of every posted movement in the stored ledger."""
        store = SqlLedgerStore(self.coord.storage.engine)
        return {
            t.id: (t.debit_account, t.credit_account, t.amount)
            for t in store.all_transfers()
            if not t.flags & (TransferFlags.PENDING | TransferFlags.VOID_PENDING)
        }

    async def assert_books_balance(self) -> None:
        accounts = self.coord.tokenomics.ledger.state.accounts
        mint = accounts[MINT]
        minted = mint.debits_posted - mint.credits_posted
        held = sum(a.balance for a in accounts.values() if a.id != MINT)
        assert held == minted, f"{held} micro-tokens in accounts, {minted} minted"
        report = await asyncio.to_thread(verify_ledger, SqlLedgerStore(self.coord.storage.engine))
        assert report.ok, report.problems

    def budget_rounds(self) -> dict[str, int]:
        return {b["participant_id"]: b["rounds"] for b in self.coord.privacy.budget_view()}


def spec(**over: Any) -> StudySpec:
    data: dict[str, Any] = {
        "name": "logreg",
        "model": encode_model(initial_model({})),
        "trainer": "logreg",
        "rounds": 4,
        "clients_per_round": 10,
        "clip_norm": 1.0,
        "epsilon": 8.0,
        "round_timeout_seconds": 10.0,
    }
    data.update(over)
    return StudySpec.model_validate(data)


async def eventually(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


MakeHarness = Callable[..., AbstractAsyncContextManager[StudyHarness]]


@pytest.fixture
def harness(tmp_path: Path) -> MakeHarness:
    """``async with harness(budget=...) as h``: a started coordinator, no devices yet."""

    @asynccontextmanager
    async def make(budget: float = 1_000.0) -> AsyncIterator[StudyHarness]:
        h = StudyHarness(tmp_path / "data", budget)
        await h.start()
        try:
            yield h
        finally:
            await h.close()

    return make


def held_out_accuracy(model: Arrays) -> float:
    x, y = held_out_set({}, 2_000)
    return accuracy(model, x, y)


def flat(model: Arrays) -> np.ndarray[Any, Any]:
    return np.concatenate([model[n].astype(np.float64).ravel() for n in sorted(model)])


def paid_count(record: RoundRecord) -> int:
    return len(set(record.participants) - set(record.flagged))


# --- robust rounds ---------------------------------------------------------------------------


async def test_robust_study_learns_and_catches_the_poisoners(harness: MakeHarness) -> None:
    async with harness() as h:
        # every device takes part in the first round (its outcome is then a function of the
        # devices' ids: the data, the training and the selection are seeded; noise comes after)
        _, poisoners = await h.add_fleet(16, poisoners=3)
        before = held_out_accuracy(initial_model({}))
        view = await h.create(rounds=8, clients_per_round=16, epsilon=8.0)
        view = await h.wait_end(view.study_id)

        assert view.state is StudyState.COMPLETED, view.reason
        assert view.rounds_done == 8
        assert [r.round for r in view.history] == list(range(8))
        # ten balanced classes: the zero model is at chance; eight noisy rounds lift it past 0.6
        # (0.71 to 0.75 in eight calibration runs: the noise at epsilon 8 is what holds it back)
        after = held_out_accuracy(h.model(view.study_id))
        assert before < 0.15
        assert after > 0.6

        assert set(view.history[0].flagged) == poisoners
        assert len(view.history[0].participants) == 16
        # flagged devices are not selected again: the rounds go on with the 13 honest ones
        assert all(len(r.participants) == 13 for r in view.history[1:])
        flagged_at: dict[str, int] = {}
        for record in view.history:
            assert record.aggregation == "robust"
            assert set(record.flagged) <= poisoners, "an honest device was flagged"
            for device in record.flagged:
                flagged_at.setdefault(device, record.round)
        took_part = {d for r in view.history for d in r.participants}
        assert set(flagged_at) == poisoners
        for device, first in flagged_at.items():
            first_seen = min(r.round for r in view.history if device in r.participants)
            assert first == first_seen
            # ... and never again selected
            assert all(device not in r.participants for r in view.history if r.round > first)
            assert all(reason for reason in view.history[first].flagged.values())
        assert view.flagged_total == dict.fromkeys(flagged_at, 1)

        # a poisoned update is a refuted result: the device's trust falls below selection's bar
        floor = h.config.harvesting.participant_selection.min_trust_score
        await eventually(
            lambda: all(
                h.coord.harvesting.registry.trust[h.coord.harvesting.registry.rows[d]] < floor
                for d in flagged_at
            ),
            5.0,
        )
        for device in flagged_at:
            health = await h.coord.harvesting.monitor_device_health(device)
            assert health.trust < floor
        for device in took_part - poisoners:
            assert (await h.coord.harvesting.monitor_device_health(device)).trust >= floor

        # flagged devices were not paid for the round they were caught in, honest ones were
        ids = h.posted_ids()
        for record in view.history:
            for device in record.participants:
                transfer = ids.get(f"study:{view.study_id}:{record.round}:{device}")
                if device in record.flagged:
                    assert transfer is None
                else:
                    assert transfer is not None
                    assert transfer[1] == h.devices[device].owner


async def test_money_requester_pays_exactly_the_paid_participants(harness: MakeHarness) -> None:
    async with harness() as h:
        await h.add_fleet(12, poisoners=2)
        pay = Decimal("0.02")
        view = await h.create(rounds=3, clients_per_round=8, payment_per_round=pay)
        held = to_micro(pay) * 8 * 3
        assert h.balance(REQUESTER) == GRANT - held
        view = await h.wait_end(view.study_id)
        assert view.state is StudyState.COMPLETED, view.reason

        paid_participants = sum(paid_count(r) for r in view.history)
        expected = to_micro(pay) * paid_participants
        assert to_micro(view.paid) == expected
        assert [to_micro(r.paid) for r in view.history] == [
            to_micro(pay) * paid_count(r) for r in view.history
        ]
        # what was not paid came back: the requester is down by the payments only
        assert h.balance(REQUESTER) == GRANT - expected
        assert h.escrow_balance(view.study_id) == 0
        rounds_paid: dict[str, int] = {}
        for r in view.history:
            for d in set(r.participants) - set(r.flagged):
                rounds_paid[d] = rounds_paid.get(d, 0) + 1
        for device, n in rounds_paid.items():
            # an owner's wallet is opened (with its grant) when it is first paid
            assert h.balance(h.devices[device].owner) == GRANT + n * to_micro(pay)
        await h.assert_books_balance()


async def test_a_silent_device_is_dropped_and_the_round_completes(harness: MakeHarness) -> None:
    async with harness() as h:
        await h.add_fleet(5)
        silent = await h.add_device("dev-silent", silent=True)
        # every device is needed for the round, so the silent one is selected
        view = await h.create(rounds=1, clients_per_round=6, round_timeout_seconds=1.0)
        view = await h.wait_end(view.study_id)

        assert view.state is StudyState.COMPLETED, view.reason
        (record,) = view.history
        assert record.dropped == ("dev-silent",)
        assert "dev-silent" not in record.participants
        assert len(record.participants) == 5
        assert silent.received, "the silent device was never asked"
        assert to_micro(record.paid) == to_micro(Decimal("0.01")) * 5
        # privacy is charged to the devices whose updates were used, not to the silent one
        rounds = h.budget_rounds()
        assert rounds["dev-silent"] == 0
        assert all(rounds[d] == 1 for d in record.participants)


# --- secure and grouped rounds ---------------------------------------------------------------


async def test_secure_round_equals_the_mean_of_the_clipped_updates(harness: MakeHarness) -> None:
    """SecAgg+ hides each update, and what it gives back is their sum: with noise made tiny by a
    huge epsilon, the model's step is the mean of the clipped updates computed here, within the
    quantisation error and a few noise deviations."""
    async with harness(budget=1e9) as h:
        ids, _ = await h.add_fleet(8)
        clip = 0.5
        view = await h.create(
            rounds=1, clients_per_round=8, aggregation="secure", epsilon=1e5, clip_norm=clip
        )
        view = await h.wait_end(view.study_id)
        assert view.state is StudyState.COMPLETED, view.reason
        (record,) = view.history
        assert record.aggregation == "secure"
        assert record.flagged == {}
        assert sorted(record.participants) == ids

        start = initial_model({})
        updates = []
        for device in record.participants:
            # a device's data and its first training are a function of its id: redo them here
            update = LogisticRegressionTrainer(device, {}).train(start).update
            vector = flat(update)
            norm = float(np.linalg.norm(vector))
            updates.append(vector * min(1.0, clip / norm))
        expected = np.mean(updates, axis=0)
        step = flat(h.model(view.study_id)) - flat(start)

        n = len(record.participants)
        assert record.noise_sigma == pytest.approx(gaussian_sigma(1e5, DELTA) * clip)
        # per coordinate: the sum's quantisation (2^32 ring, < 1 level per input) and noise
        levels = ((1 << 32) - 1) // n
        quantisation = n * (2 * clip / levels)
        bound = (quantisation + 6 * record.noise_sigma) / n + 1e-6  # + float32 model storage
        assert np.abs(step - expected).max() < bound
        # and the step is a real one, far larger than that tolerance
        assert np.linalg.norm(expected) > 100 * bound
        assert record.update_norm == pytest.approx(float(np.linalg.norm(step)), rel=1e-3)


async def test_secure_study_with_a_silent_device_completes(harness: MakeHarness) -> None:
    async with harness() as h:
        await h.add_fleet(5)
        await h.add_device("dev-silent", silent=True)
        view = await h.create(
            rounds=2, clients_per_round=6, aggregation="secure", round_timeout_seconds=1.0
        )
        view = await h.wait_end(view.study_id)
        assert view.state is StudyState.COMPLETED, view.reason
        for record in view.history:
            assert "dev-silent" in record.dropped
            assert len(record.participants) == 5


async def test_grouped_study_completes_and_learns(harness: MakeHarness) -> None:
    async with harness() as h:
        await h.add_fleet(16)
        view = await h.create(rounds=4, clients_per_round=15, aggregation="grouped", group_size=3)
        view = await h.wait_end(view.study_id)
        assert view.state is StudyState.COMPLETED, view.reason
        assert view.rounds_done == 4
        for record in view.history:
            assert record.aggregation == "grouped"
            assert len(record.participants) == 15
            assert record.flagged == {}  # groups hide who is in a sum: nobody can be named
        assert held_out_accuracy(h.model(view.study_id)) > 0.4


# --- privacy budgets -------------------------------------------------------------------------


def epsilon_after(rounds: int, epsilon: float) -> float:
    """What ``rounds`` Gaussian rounds calibrated for ``epsilon`` each cost, by RDP."""
    accountant = RdpAccountant()
    noise = gaussian_sigma(epsilon, DELTA)
    accountant.compose(SelfComposedDpEvent(GaussianDpEvent(noise), rounds))
    return float(accountant.get_epsilon(DELTA))


async def test_devices_out_of_budget_are_not_selected(harness: MakeHarness) -> None:
    eps = 4.0
    # a budget that covers two rounds and not three
    budget = (epsilon_after(2, eps) + epsilon_after(3, eps)) / 2
    async with harness(budget=budget) as h:
        ids, _ = await h.add_fleet(6)
        view = await h.create(rounds=4, clients_per_round=3, epsilon=eps)
        view = await h.wait_end(view.study_id)
        assert view.state is StudyState.COMPLETED, view.reason

        times = {d: sum(d in r.participants for r in view.history) for d in ids}
        assert max(times.values()) == 2
        assert sum(times.values()) == 4 * 3
        # the privacy service shows the same: two rounds each, nothing left for a third
        budgets = {b["participant_id"]: b for b in h.coord.privacy.budget_view()}
        for device in ids:
            assert budgets[device]["rounds"] == times[device]
            assert budgets[device]["budget_epsilon"] == pytest.approx(budget)
            assert budgets[device]["spent_epsilon"] <= budget
        assert await h.coord.privacy.affordable(ids, eps, DELTA) == []
        assert max(r.epsilon_spent_max for r in view.history) == pytest.approx(
            epsilon_after(2, eps), rel=1e-6
        )

        # a new study finds nobody with budget left and waits
        stuck = await h.create(rounds=1, clients_per_round=3, epsilon=eps)
        await asyncio.sleep(1.5)
        assert h.view(stuck.study_id).rounds_done == 0
        assert h.view(stuck.study_id).state is StudyState.RUNNING


# --- restart and cancel ----------------------------------------------------------------------


async def test_a_study_survives_a_restart(harness: MakeHarness) -> None:
    async with harness() as h:
        await h.add_fleet(8)
        view = await h.create(rounds=4, clients_per_round=6)
        first = await h.wait_rounds(view.study_id, 1)
        await h.restart()

        resumed = h.view(view.study_id)
        # the rounds recorded before the restart are back, with the model of the last of them
        assert resumed.rounds_done >= first.rounds_done
        assert resumed.history[: first.rounds_done] == first.history
        view = await h.wait_end(view.study_id)
        assert view.state is StudyState.COMPLETED, view.reason
        assert [r.round for r in view.history] == [0, 1, 2, 3]
        assert to_micro(view.paid) == sum(to_micro(r.paid) for r in view.history)
        assert h.escrow_balance(view.study_id) == 0
        assert h.balance(REQUESTER) == GRANT - to_micro(view.paid)
        # each device was charged once per round it took part in, across both processes
        rounds = h.budget_rounds()
        for device in h.devices:
            assert rounds[device] == sum(device in r.participants for r in view.history)
        await h.assert_books_balance()


async def test_cancel_refunds_the_unspent_escrow(harness: MakeHarness) -> None:
    async with harness() as h:
        view = await h.create(rounds=5, clients_per_round=4)
        held = to_micro(Decimal("0.01")) * 4 * 5
        assert to_micro(view.held) == held
        assert h.balance(REQUESTER) == GRANT - held
        # no devices: the study waits for them
        await asyncio.sleep(0.2)
        assert h.view(view.study_id).state is StudyState.RUNNING

        cancelled = await h.coord.studies.cancel(view.study_id, REQUESTER)
        assert cancelled.state is StudyState.CANCELLED
        assert h.balance(REQUESTER) == GRANT
        assert h.escrow_balance(view.study_id) == 0
        await h.assert_books_balance()


async def test_cancel_after_a_round_refunds_what_was_not_paid(harness: MakeHarness) -> None:
    async with harness() as h:
        await h.add_fleet(6)
        view = await h.create(rounds=50, clients_per_round=4, round_timeout_seconds=5.0)
        await h.wait_rounds(view.study_id, 1)
        cancelled = await h.coord.studies.cancel(view.study_id, REQUESTER)
        assert cancelled.state is StudyState.CANCELLED
        await asyncio.sleep(0.1)
        final = h.view(view.study_id)
        assert final.state is StudyState.CANCELLED
        assert 1 <= final.rounds_done < 50
        assert h.escrow_balance(view.study_id) == 0
        assert h.balance(REQUESTER) == GRANT - to_micro(final.paid)
        assert to_micro(final.paid) == sum(to_micro(r.paid) for r in final.history)
        await h.assert_books_balance()


# --- known defects -----------------------------------------------------------------------------


async def test_a_round_with_two_updates_left_does_not_fail_the_study(
    harness: MakeHarness,
) -> None:
    async with harness() as h:
        await h.add_fleet(2)
        await h.add_device("dev-silent-1", silent=True)
        await h.add_device("dev-silent-2", silent=True)
        view = await h.create(rounds=1, clients_per_round=4, round_timeout_seconds=0.5)
        await asyncio.sleep(2.0)  # a round or two have been tried
        view = h.view(view.study_id)
        assert view.state is not StudyState.FAILED, view.reason


async def test_devices_with_budget_left_are_found(harness: MakeHarness) -> None:
    eps = 4.0
    budget = (epsilon_after(1, eps) + epsilon_after(2, eps)) / 2  # one round each
    async with harness(budget=budget) as h:
        ids, _ = await h.add_fleet(12)
        # twelve devices with one round each are enough for six rounds of two
        view = await h.create(rounds=6, clients_per_round=2, epsilon=eps, robust_method="median")
        try:
            view = await h.wait_end(view.study_id, timeout=6.0)
        except AssertionError:
            view = h.view(view.study_id)
            left = await h.coord.privacy.affordable(ids, eps, DELTA)
            raise AssertionError(
                f"stuck at round {view.rounds_done} with {left} still able to take part"
            ) from None
        assert view.state is StudyState.COMPLETED
        assert all(len(r.participants) == 2 for r in view.history)


async def test_a_round_that_cannot_be_charged_releases_nothing(harness: MakeHarness) -> None:
    eps = 4.0
    budget = (epsilon_after(1, eps) + epsilon_after(2, eps)) / 2  # one round each
    async with harness(budget=budget) as h:
        await h.add_fleet(4)
        gate = asyncio.Event()
        for device in h.devices.values():
            device.gate = gate
        # two studies select the same four devices, each affordable for one more round
        first = await h.create(rounds=1, clients_per_round=4, epsilon=eps)
        second = await h.create(rounds=1, clients_per_round=4, epsilon=eps)
        await eventually(lambda: all(len(d.received) == 2 for d in h.devices.values()), 5.0)
        gate.set()
        ids = (first.study_id, second.study_id)
        await eventually(lambda: any(h.view(i).rounds_done == 1 for i in ids), 10.0)
        start = flat(initial_model({}))
        for study_id in ids:
            if h.view(study_id).rounds_done == 0:
                # the round could not be charged to anyone: the study waits for budget, and its
                # model has not learnt from their data
                assert h.view(study_id).state.value == "running"
                np.testing.assert_array_equal(flat(h.model(study_id)), start)
        rounds = h.budget_rounds()
        assert all(rounds[d] == 1 for d in h.devices)


@pytest.mark.xfail(
    reason="BUG: robust (and grouped) rounds add noise for sensitivity clip_norm to "
    "robust_mean x n, whose sensitivity is larger: adding one clipped update moves it by more "
    "than clip_norm, so the charged (epsilon, delta) per round does not hold",
    strict=True,
)
async def test_one_participant_moves_a_robust_round_by_at_most_the_clip(tmp_path: Path) -> None:
    """Add-or-remove-one neighbours: two updates at +u and two at -u, then one more +u. The noise
    is calibrated for a sum that one participant moves by at most ``clip_norm``; here the
    released sum moves by 2.5 x ``clip_norm`` (Multi-Krum keeps three +u and one -u of five)."""
    clip = 1.0
    start = initial_model({})

    def towards(sign: float) -> Arrays:
        update = {k: np.zeros_like(v) for k, v in start.items()}
        update["bias"][0] = sign * clip
        return update

    totals = []
    sigmas = []
    for name, signs in (("d", [1.0, 1.0, -1.0, -1.0]), ("d-plus-one", [1.0, 1.0, 1.0, -1.0, -1.0])):
        h = StudyHarness(tmp_path / name, budget=1e9)
        await h.start()
        try:
            for i, sign in enumerate(signs):
                await h.add_device(f"dev-{i}", update=towards(sign))
            view = await h.create(
                rounds=1, clients_per_round=len(signs), epsilon=1e5, clip_norm=clip
            )
            view = await h.wait_end(view.study_id)
            assert view.state is StudyState.COMPLETED, view.reason
            (record,) = view.history
            assert len(record.participants) == len(signs)
            step = flat(h.model(view.study_id)) - flat(start)
            totals.append(step * len(signs))  # the released sum, before division by the count
            sigmas.append(record.noise_sigma)
        finally:
            await h.close()
    moved = float(np.linalg.norm(totals[1] - totals[0]))
    noise = 10 * max(sigmas) * np.sqrt(totals[0].size)
    assert moved <= clip + noise


@pytest.mark.xfail(
    reason="BUG: Byzantine detection misses sign-flipped updates once they are clipped like "
    "every update (no norm signal left; the cosine z-score of the study's own Poison sits "
    "around the threshold 6): with these twenty devices none of the three poisoners is flagged "
    "(Multi-Krum leaves them out of the aggregate, but they keep their trust and are paid)",
    strict=True,
)
async def test_clipped_sign_flipped_updates_are_flagged(harness: MakeHarness) -> None:
    async with harness() as h:
        _, poisoners = await h.add_fleet(20, poisoners=3, prefix="dev-6-")
        view = await h.create(rounds=1, clients_per_round=20)
        view = await h.wait_end(view.study_id)
        assert view.state is StudyState.COMPLETED, view.reason
        (record,) = view.history
        assert len(record.participants) == 20
        assert set(record.flagged) == poisoners
