"""The job workflow end to end on a real coordinator: auction, dispatch, quorum, cheaters caught
and unpaid, adaptive replication with audits, failures and cancellation that leave the books
balanced, sandbox checks at submission, and a coordinator restart in the middle of a job."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from decimal import Decimal

import numpy as np
import pytest

from fogcoord.agent.tasks import Cheat, CheatMode
from fogcoord.compute.errors import ForbiddenImport, MalformedModule
from fogcoord.compute.examples import (
    load_example,
    mandelbrot_reference,
    mandelbrot_tile_input,
    primes_output,
    primes_reference,
)
from fogcoord.contracts.compute import WorkReceipt
from fogcoord.contracts.errors import ServiceUnavailable, ValidationFailed
from fogcoord.contracts.jobs import (
    CheaterCaught,
    JobState,
    JobSubmission,
    JobView,
    TaskFailed,
    TaskState,
    TaskVerified,
)
from fogcoord.contracts.marketplace import CompletedJob, ResourceBid, RevenueDistribution
from fogcoord.contracts.units import FUEL_PER_GFLOP, MICRO_PER_TOKEN
from fogcoord.marketplace.auction import BidRefused
from tests.jobs.conftest import MakeHarness
from tests.jobs.support import (
    CEILING,
    GRANT,
    REQUESTER,
    JobHarness,
    b64,
    eventually,
    from_task,
    honest_for,
    module_job,
    prime_ranges,
    primes_job,
    trust_of,
    wasi,
)

HAPPY_PATH = ["submitted", "auctioned", "allocated", "running", "verified", "settled"]
TRAP = wasi("unreachable")


def gross(view: JobView, fuel: int) -> int:
    """What one verified task costs the requester: clearing price x verified work."""
    assert view.clearing_price_per_gflop is not None
    price = int(view.clearing_price_per_gflop * MICRO_PER_TOKEN)
    return price * fuel // FUEL_PER_GFLOP


async def assert_primes(h: JobHarness, job_id: str, ranges: list[tuple[int, int]]) -> None:
    outputs = await h.outputs(job_id)
    assert [primes_output(o) for o in outputs] == [primes_reference(lo, hi) for lo, hi in ranges]


async def honest_fleet(h: JobHarness, n: int) -> list[str]:
    return [(await h.add_device(f"h{i}")).device_id for i in range(n)]


# --- the main path -----------------------------------------------------------------------------


async def test_a_replicated_job_settles_with_the_reference_outputs(harness: MakeHarness) -> None:
    async with harness() as h:
        fleet = await honest_fleet(h, 3)
        ranges = prime_ranges(6)
        view = await h.run(primes_job(ranges, slots=3))

        assert view.state is JobState.SETTLED, view.reason
        assert h.events.states(view.job_id) == HAPPY_PATH
        await assert_primes(h, view.job_id, ranges)
        assert view.tasks == {"verified": 6}
        assert view.replicas_run == 12
        assert view.cheaters == ()
        for task in h.coord.jobs.task_views(view.job_id):
            assert task.state is TaskState.VERIFIED
            assert task.outcome == "ok"
            assert task.provider in fleet
            assert len(task.validators) == 1
            assert task.provider not in task.validators
            assert task.fuel is not None
            assert task.fuel > 0
        assert view.fuel_verified == sum(t.fuel or 0 for t in h.coord.jobs.task_views(view.job_id))

        # every replica of a task came back with the very same receipt (fuel and output included)
        by_task: dict[str, list[WorkReceipt]] = defaultdict(list)
        for device in h.devices.values():
            for receipt in device.receipts:
                by_task[receipt.task_id].append(receipt)
        assert len(by_task) == 6
        for receipts in by_task.values():
            assert len(receipts) == 2
            assert receipts[0] == receipts[1]
            assert receipts[0].canonical_bytes() == receipts[1].canonical_bytes()

        # the requester paid exactly the verified work; every device's owner earned some of it
        paid = h.paid_from_escrow(view.job_id)
        expected = sum(gross(view, t.fuel or 0) for t in h.coord.jobs.task_views(view.job_id))
        assert GRANT - h.balance(REQUESTER) == expected > 0
        assert all(paid.get(f"owner-{d}", 0) > 0 for d in fleet)
        await h.assert_books_balance(view.job_id)

        # a second job on the same fleet: a Mandelbrot image in four tiles
        tiles = [(x, y) for y in (0, 32) for x in (0, 32)]
        inputs = [
            mandelbrot_tile_input(-2.0, -1.2, 0.8, 1.2, 64, 64, 100, x, y, 32, 32) for x, y in tiles
        ]
        body = JobSubmission(
            name="mandelbrot",
            module_wat=load_example("mandelbrot").decode(),
            inputs_b64=[b64(i) for i in inputs],
            fuel_limit=50_000_000,
            max_price_per_gflop=CEILING,
            slots=3,
        )
        image = await h.run(body)
        assert image.state is JobState.SETTLED, image.reason
        assert h.events.states(image.job_id) == HAPPY_PATH
        assert await h.outputs(image.job_id) == [mandelbrot_reference(i) for i in inputs]
        await h.assert_books_balance(image.job_id)


# --- cheaters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [CheatMode.WRONG_OUTPUT, CheatMode.INFLATED_FUEL])
async def test_a_cheater_is_caught_paid_nothing_and_no_longer_eligible(
    harness: MakeHarness, mode: CheatMode
) -> None:
    async with harness() as h:
        fleet = await honest_fleet(h, 3)
        # two cheaters, each with a lie of its own: they never agree with each other
        cheaters = [
            (await h.add_device(f"c{i}", cheat=Cheat(mode, salt=salt))).device_id
            for i, salt in enumerate((3, 40))
        ]
        ranges = prime_ranges(10)
        view = await h.run(primes_job(ranges, slots=5))

        assert view.state is JobState.SETTLED, view.reason
        await assert_primes(h, view.job_id, ranges)
        assert sorted(view.cheaters) == cheaters
        caught = {e.device_id: e.reason for e in h.events.of(CheaterCaught)}
        assert sorted(caught) == cheaters
        what = "output" if mode is CheatMode.WRONG_OUTPUT else "fuel"
        assert all(what in reason for reason in caught.values()), caught
        # no verified result is a cheater's, as provider or as validator
        for task in h.coord.jobs.task_views(view.job_id):
            assert task.provider in fleet
            assert not set(task.validators) & set(cheaters)

        paid = h.paid_from_escrow(view.job_id)
        for device in cheaters:
            owner = h.devices[device].owner
            assert paid.get(owner, 0) == 0
            # a wallet made for its pay holds only its opening grant: no pay, no mining reward
            assert h.balance(owner) in (0, GRANT)
        assert all(paid.get(f"owner-{d}", 0) > 0 for d in fleet)
        await h.assert_books_balance(view.job_id)

        # its trust fell below the selection threshold: it may not take work any more
        floor = h.config.harvesting.participant_selection.min_trust_score
        for _ in range(100):  # trust moves when harvesting has handled the verdict events
            trust = [await trust_of(h.coord, d) for d in cheaters]
            if max(trust) < floor:
                break
            await asyncio.sleep(0.02)
        assert max(trust) < floor, trust
        assert min([await trust_of(h.coord, d) for d in fleet]) >= floor
        eligible = await h.coord.harvesting.check_eligibility([*fleet, *cheaters])
        assert eligible == {**dict.fromkeys(fleet, True), **dict.fromkeys(cheaters, False)}
        nxt = await h.submit(primes_job(prime_ranges(2), slots=2))
        assert nxt.auction_id is not None
        price = await h.ask_price(nxt.auction_id)
        for device in cheaters:
            with pytest.raises(BidRefused) as refused:
                await h.coord.marketplace.submit_bid(
                    nxt.auction_id, ResourceBid(provider=device, price_per_gflop=price)
                )
            assert refused.value.rule == "ineligible"
        assert await h.coord.marketplace.submit_bid(
            nxt.auction_id, ResourceBid(provider=fleet[0], price_per_gflop=price)
        )
        await h.coord.jobs.cancel(nxt.job_id, REQUESTER)


async def test_a_receipt_not_signed_by_the_registered_key_is_rejected(
    harness: MakeHarness,
) -> None:
    async with harness() as h:
        fleet = await honest_fleet(h, 3)
        forger = (await h.add_device("f0", forge=True)).device_id
        ranges = prime_ranges(6)
        view = await h.run(primes_job(ranges, slots=4))
        assert view.state is JobState.SETTLED, view.reason
        await assert_primes(h, view.job_id, ranges)
        assert view.cheaters == (forger,)
        (caught,) = h.events.of(CheaterCaught)
        assert "signature" in caught.reason
        assert {a["status"] for a in h.devices[forger].acks} == {"rejected"}
        assert all(t.provider in fleet for t in h.coord.jobs.task_views(view.job_id))
        assert h.paid_from_escrow(view.job_id).get(h.devices[forger].owner, 0) == 0
        await h.assert_books_balance(view.job_id)


# --- the books after every way a job can end ---------------------------------------------------


async def test_books_balance_when_every_task_traps(harness: MakeHarness) -> None:
    async with harness() as h:
        await honest_fleet(h, 3)
        view = await h.run(module_job(TRAP, 4, slots=3))
        assert view.state.terminal
        tasks = h.coord.jobs.task_views(view.job_id)
        # a trap is deterministic: the replicas agree on it, and it is what the requester learns
        assert {t.outcome for t in tasks} == {"trap"}
        assert all(t.state is TaskState.VERIFIED for t in tasks)
        assert await h.outputs(view.job_id) == [b""] * 4
        await h.assert_books_balance(view.job_id)


async def test_a_job_settles_after_its_final_payment_failed_once(
    harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness() as h:
        real = h.coord.marketplace.distribute_revenue
        failures: list[CompletedJob] = []

        async def flaky(job: CompletedJob) -> RevenueDistribution:
            if job.final and not failures:
                failures.append(job)
                raise ServiceUnavailable("the marketplace did not answer in time")
            return await real(job)

        monkeypatch.setattr(h.coord.marketplace, "distribute_revenue", flaky)
        await honest_fleet(h, 3)
        view = await h.submit(primes_job(prime_ranges(4), slots=3))
        await h.hire(view)
        await eventually(lambda: bool(failures))
        final = await h.wait_end(view.job_id, timeout=5.0)
        assert final.state is JobState.SETTLED
        await h.assert_books_balance(view.job_id)


async def test_books_balance_when_the_auction_gets_no_bids(harness: MakeHarness) -> None:
    async with harness(jobs={"auction_minutes": 0.005}) as h:
        await honest_fleet(h, 2)
        view = await h.submit(primes_job(prime_ranges(3), slots=2))
        assert h.balance(REQUESTER) == GRANT  # held, not yet spent
        assert h.coord.tokenomics.wallet_info(REQUESTER).pending_out > 0
        ended = await h.wait_end(view.job_id)
        assert ended.state is JobState.FAILED
        assert "auction" in ended.reason
        assert h.events.states(view.job_id) == ["submitted", "auctioned", "failed"]
        assert h.balance(REQUESTER) == GRANT
        assert h.coord.tokenomics.wallet_info(REQUESTER).pending_out == 0
        await h.assert_books_balance(view.job_id)


async def test_books_balance_when_no_device_ever_answers(harness: MakeHarness) -> None:
    async with harness(jobs={"task_timeout_seconds": 0.2}) as h:
        for i in range(3):
            await h.add_device(f"s{i}", silent=True)
        view = await h.run(primes_job(prime_ranges(2), slots=3, deadline_seconds=1.5))
        assert view.state is JobState.FAILED
        tasks = h.coord.jobs.task_views(view.job_id)
        assert all(t.state is TaskState.FAILED for t in tasks)
        # a replica that timed out was given again, until the deadline ended the job
        assert all(t.replicas >= 2 for t in tasks), tasks
        assert all(t.returned == 0 for t in tasks)
        assert sum(len(d.received) for d in h.devices.values()) == sum(t.replicas for t in tasks)
        assert {e.reason for e in h.events.of(TaskFailed)} == {"the job's deadline passed"}
        assert h.balance(REQUESTER) == GRANT
        await h.assert_books_balance(view.job_id)


async def start_then_cancel(h: JobHarness, *, tick: bool) -> tuple[JobView, JobView]:
    """Three of eight tasks verified and paid, the rest held back; then the requester cancels.

    With ``tick`` the runner's loop is due to run as soon as the cancellation first waits (it
    ticks every few milliseconds anyway; this makes the moment certain).
    """
    await honest_fleet(h, 3)
    h.hold(from_task(3))  # three tasks come back in full; the answers to the others are held
    view = await h.submit(primes_job(prime_ranges(8), slots=3))
    await h.hire(view)
    await eventually(lambda: h.coord.jobs.view(view.job_id).tasks.get("verified", 0) == 3)
    await eventually(lambda: len(h.coord.marketplace.store.paid_tasks(view.job_id)) == 3)
    if tick:
        h.coord.jobs.wake()
    cancelled = await h.coord.jobs.cancel(view.job_id, REQUESTER)
    h.release()  # the answers held back arrive after the job ended
    await eventually(lambda: len(h.acks) >= 7)
    await h.settle_events()
    return cancelled, h.coord.jobs.view(view.job_id)


async def test_books_balance_when_the_requester_cancels_mid_run(harness: MakeHarness) -> None:
    async with harness(jobs={"settle_batch_size": 1, "settle_interval_seconds": 0.05}) as h:
        _, final = await start_then_cancel(h, tick=False)
        assert final.state.terminal
        assert final.tasks == {"verified": 3, "failed": 5}
        assert {t.reason for t in h.events.of(TaskFailed)} == {"cancelled"}
        assert [a["status"] for a in h.acks[:6]] == ["accepted"] * 6
        assert {a["status"] for a in h.acks[6:]} <= {"unknown", "ignored"}, h.acks
        # the requester paid for the three verified tasks and nothing else
        verified = [t for t in h.coord.jobs.task_views(final.job_id) if t.fuel is not None]
        assert len(verified) == 3
        assert GRANT - h.balance(REQUESTER) == sum(gross(final, t.fuel or 0) for t in verified)
        await h.assert_books_balance(final.job_id)


async def test_a_cancelled_job_ends_cancelled_and_only_once(harness: MakeHarness) -> None:
    async with harness(jobs={"settle_batch_size": 1, "settle_interval_seconds": 0.05}) as h:
        cancelled, final = await start_then_cancel(h, tick=True)
        states = h.events.states(final.job_id)
        assert [s for s in states if JobState(s).terminal] == ["cancelled"], states
        assert cancelled.state is JobState.CANCELLED
        assert final.state is JobState.CANCELLED


# --- adaptive replication ----------------------------------------------------------------------


async def test_trusted_devices_run_alone_and_some_lone_results_are_audited(
    harness: MakeHarness,
) -> None:
    async with harness(jobs={"trusted_streak": 2, "audit_min_probability": 0.5}) as h:
        h.coord.jobs.rng = np.random.default_rng(11)
        await honest_fleet(h, 3)
        ranges = prime_ranges(16)
        view = await h.run(primes_job(ranges, slots=3))
        assert view.state is JobState.SETTLED, view.reason
        await assert_primes(h, view.job_id, ranges)
        tasks = h.coord.jobs.task_views(view.job_id)
        alone = [t for t in tasks if t.replicas == 1]
        assert alone, "no task ran on a single replica"
        assert all(t.validators == () for t in alone)
        assert view.audits > 0
        audited = [e for e in h.events.of(TaskVerified) if e.audited]
        assert len(audited) == view.audits
        assert all(e.validators for e in audited)
        assert view.replicas_run < 2 * len(ranges)
        await h.assert_books_balance(view.job_id)


async def test_an_audit_catches_a_device_that_cheats_once_trusted(harness: MakeHarness) -> None:
    async with harness(jobs={"trusted_streak": 2, "audit_min_probability": 0.5}) as h:
        h.coord.jobs.rng = np.random.default_rng(5)
        fleet = await honest_fleet(h, 2)
        sleeper = (
            await h.add_device(
                "late", cheat=Cheat(CheatMode.WRONG_OUTPUT, salt=9), coin=honest_for(3)
            )
        ).device_id
        ranges = prime_ranges(24)
        view = await h.run(primes_job(ranges, slots=3))

        assert view.state is JobState.SETTLED, view.reason
        assert view.cheaters == (sleeper,)
        await assert_primes(h, view.job_id, ranges)
        # it was believed alone for a while, and every task it delivered alone was run again
        verified = h.events.of(TaskVerified)
        alone = {e.task_id for e in verified if e.provider == sleeper and not e.validators}
        assert alone, "the device never ran a task alone"
        for task in h.coord.jobs.task_views(view.job_id):
            if task.task_id in alone:
                assert task.provider in fleet
                assert task.replicas > 1
        assert all(
            t.provider != sleeper or t.validators for t in h.coord.jobs.task_views(view.job_id)
        )
        assert h.paid_from_escrow(view.job_id).get(h.devices[sleeper].owner, 0) == 0
        await h.assert_books_balance(view.job_id)


# --- no quorum ---------------------------------------------------------------------------------


async def test_without_a_quorum_a_task_gets_more_replicas_then_fails(
    harness: MakeHarness,
) -> None:
    async with harness(jobs={"max_replicas": 4}) as h:
        for i in range(5):
            await h.add_device(f"x{i}", cheat=Cheat(CheatMode.WRONG_OUTPUT, salt=i + 1))
        view = await h.run(primes_job(prime_ranges(1), slots=5))
        assert view.state is JobState.FAILED
        (task,) = h.coord.jobs.task_views(view.job_id)
        assert task.state is TaskState.FAILED
        assert task.replicas == task.returned == 4
        assert [e.reason for e in h.events.of(TaskFailed)] == ["no 2 replicas agreed"]
        assert view.cheaters == ()  # with no accepted result nobody can be judged
        assert h.balance(REQUESTER) == GRANT
        await h.assert_books_balance(view.job_id)


# --- the sandbox at submission -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wat", "error"),
    [
        ("(module (func", MalformedModule),
        (wasi("nop").replace('"proc_exit"', '"sock_accept"'), ForbiddenImport),
        ('(module (import "env" "system" (func)) (func (export "_start")))', ForbiddenImport),
    ],
    ids=["unparsable", "wasi-socket", "host-function"],
)
async def test_a_module_the_sandbox_refuses_is_rejected_and_nothing_is_held(
    harness: MakeHarness, wat: str, error: type[Exception]
) -> None:
    async with harness() as h:
        await honest_fleet(h, 2)
        with pytest.raises(error):
            await h.submit(module_job(wat, 2))
        assert h.coord.jobs.list_jobs() == []
        info = h.coord.tokenomics.wallet_info(REQUESTER)
        assert (info.balance, info.pending_out) == (Decimal(10), Decimal(0))
        accounts = h.coord.tokenomics.ledger.state.accounts
        assert not [a for a in accounts if a.startswith("escrow:")]


async def test_a_module_without_its_entry_point_is_rejected_at_submission(
    harness: MakeHarness,
) -> None:
    async with harness() as h:
        await honest_fleet(h, 2)
        with pytest.raises(MalformedModule):
            await h.submit(module_job('(module (func (export "main")))', 2))
        assert h.coord.jobs.list_jobs() == []


async def test_bad_base64_and_oversized_parts_are_refused_before_any_hold(
    harness: MakeHarness,
) -> None:
    async with harness(jobs={"max_input_bytes": 8, "max_tasks": 3}) as h:
        good = primes_job(prime_ranges(1))
        cases = {
            "inputs_b64.1": good.model_copy(update={"inputs_b64": [*good.inputs_b64, "!!"]}),
            "module_wasm_b64": good.model_copy(
                update={"module_wat": None, "module_wasm_b64": "not base64!"}
            ),
            "inputs_b64.0": good.model_copy(update={"inputs_b64": [b64(bytes(9))]}),
            "inputs_b64": good.model_copy(update={"inputs_b64": good.inputs_b64 * 4}),
        }
        for field, body in cases.items():
            with pytest.raises(ValidationFailed) as refused:
                await h.submit(body)
            assert refused.value.fields["field"] == field
        assert h.coord.jobs.list_jobs() == []
        assert h.coord.tokenomics.wallet_info(REQUESTER).pending_out == 0


# --- restart -----------------------------------------------------------------------------------


async def restart_mid_job(h: JobHarness, devices: int) -> JobView:
    """Three of eight tasks verified and paid, the rest out; then a new coordinator takes over."""
    await honest_fleet(h, devices)
    h.hold(from_task(3))
    view = await h.submit(primes_job(prime_ranges(8), slots=devices))
    await h.hire(view)
    await eventually(lambda: len(h.coord.marketplace.store.paid_tasks(view.job_id)) == 3)
    await h.restart()
    restored = h.coord.jobs.view(view.job_id)
    assert restored.state is JobState.RUNNING
    assert restored.tasks.get("verified", 0) == 3
    h.release()  # the held answers now reach the new coordinator, which never sent those
    return view


async def test_a_restart_mid_job_finishes_it_without_paying_any_task_twice(
    harness: MakeHarness,
) -> None:
    async with harness(jobs={"settle_batch_size": 1, "settle_interval_seconds": 0.05}) as h:
        view = await restart_mid_job(h, 5)
        paid_before = dict(h.coord.marketplace.store.paid_tasks(view.job_id))
        final = await h.wait_end(view.job_id)

        assert final.state is JobState.SETTLED, final.reason
        await assert_primes(h, view.job_id, prime_ranges(8))
        tasks = h.coord.jobs.task_views(view.job_id)
        paid = h.coord.marketplace.store.paid_tasks(view.job_id)
        assert sorted(paid) == sorted(t.task_id for t in tasks)
        assert {k: paid[k] for k in paid_before} == paid_before
        # the requester paid each task's work exactly once, across both coordinators
        assert GRANT - h.balance(REQUESTER) == sum(gross(final, t.fuel or 0) for t in tasks)
        await h.assert_books_balance(view.job_id)
        statuses = [a["status"] for a in h.acks]
        assert statuses[:6] == ["accepted"] * 6
        assert "unknown" in statuses[6:]  # results for replicas of the stopped coordinator
        assert statuses.count("accepted") == 16


async def test_a_restart_mid_job_finishes_it_on_a_small_fleet(harness: MakeHarness) -> None:
    async with harness(jobs={"settle_batch_size": 1, "settle_interval_seconds": 0.05}) as h:
        view = await restart_mid_job(h, 3)
        final = await h.wait_end(view.job_id, timeout=5.0)
        assert final.state is JobState.SETTLED, final.reason
