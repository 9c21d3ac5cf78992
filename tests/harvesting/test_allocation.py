"""Allocation plans: R replicas on distinct owners, within every device's capacity, and a task
is left unassigned only when the capacity to place it does not exist."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fogcoord.contracts.errors import NotFound
from fogcoord.contracts.harvesting import AllocationPlan, ComputeWorkload
from tests.harvesting.support import QUIET, Harness, config, harvesting


def workload(tasks: int, replication: int = 1, ram_mb_per_task: int = 0) -> ComputeWorkload:
    return ComputeWorkload(
        workload_id="w1",
        task_ids=tuple(f"t{i}" for i in range(tasks)),
        replication=replication,
        ram_mb_per_task=ram_mb_per_task,
    )


def capacity(cores: int, ram_mb: int, ram_per_task: int) -> int:
    return min(cores, ram_mb // ram_per_task) if ram_per_task else cores


def most_tasks(owner_capacity: list[int], tasks: int, replication: int) -> int:
    """The most tasks that can be placed: ``t`` tasks fit iff owners can hold ``t x R`` replicas
    with at most one replica of a task each, i.e. sum(min(capacity, t)) >= t x R."""
    return max(
        t for t in range(tasks + 1) if sum(min(c, t) for c in owner_capacity) >= t * replication
    )


def check_plan(
    plan: AllocationPlan,
    w: ComputeWorkload,
    devices: dict[str, tuple[str, int]],
) -> None:
    """``devices``: id -> (owner, capacity) of the distinct participants."""
    assert plan.workload_id == w.workload_id
    assigned = set(plan.assignments)
    assert assigned.isdisjoint(plan.unassigned)
    assert len(plan.unassigned) == len(set(plan.unassigned))
    assert assigned | set(plan.unassigned) == set(w.task_ids)
    load: Counter[str] = Counter()
    for task, replicas in plan.assignments.items():
        assert len(replicas) == w.replication, task
        assert all(d in devices for d in replicas), task
        owners = [devices[d][0] for d in replicas]
        assert len(set(owners)) == w.replication, (task, replicas, owners)
        load.update(replicas)
    for d, n in load.items():
        assert n <= devices[d][1], (d, n, devices[d])
    by_owner: Counter[str] = Counter()
    for owner, cap in devices.values():
        by_owner[owner] += cap
    best = most_tasks(list(by_owner.values()), len(w.task_ids), w.replication)
    assert len(plan.assignments) == best, (len(plan.assignments), best, plan)


async def register(h: Harness, spec: dict[str, tuple[str, int, int]]) -> None:
    for d, (owner, cores, ram) in spec.items():
        await h.add(d, owner, cpu_cores=cores, ram_mb=ram)


async def test_replicas_spread_over_owners(h: Harness) -> None:
    spec = {f"d{i}": (f"o{i % 5}", 2, 4096) for i in range(10)}
    await register(h, spec)
    w = workload(tasks=6, replication=3)
    plan = await h.svc.allocate_resources(list(spec), w)
    check_plan(plan, w, {d: (o, c) for d, (o, c, _) in spec.items()})
    assert plan.unassigned == ()


async def test_one_roomy_owner_partners_with_the_small_ones(h: Harness) -> None:
    """Every task pairs the 3-core device with one of three 1-core devices: all three fit."""
    spec = {"a": ("A", 3, 4096), "b": ("B", 1, 4096), "c": ("C", 1, 4096), "d": ("D", 1, 4096)}
    await register(h, spec)
    w = workload(tasks=3, replication=2)
    plan = await h.svc.allocate_resources(list(spec), w)
    check_plan(plan, w, {d: (o, c) for d, (o, c, _) in spec.items()})
    assert plan.unassigned == ()


async def test_a_participant_listed_twice_is_one_device(h: Harness) -> None:
    await register(h, {"x": ("X", 1, 4096), "y": ("Y", 1, 4096)})
    w = workload(tasks=3)
    plan = await h.svc.allocate_resources(["x", "x", "y"], w)
    check_plan(plan, w, {"x": ("X", 1), "y": ("Y", 1)})
    assert len(plan.unassigned) == 1
    only = await h.svc.allocate_resources(["x", "x"], workload(tasks=2))
    assert len(only.assignments) == 1


async def test_ram_per_task_limits_capacity(h: Harness) -> None:
    await register(h, {"big": ("A", 8, 4096), "tiny": ("B", 8, 512)})
    w = workload(tasks=6, ram_mb_per_task=1024)
    plan = await h.svc.allocate_resources(["big", "tiny"], w)
    check_plan(plan, w, {"big": ("A", 4), "tiny": ("B", 0)})
    assert len(plan.unassigned) == 2
    assert "tiny" not in {d for r in plan.assignments.values() for d in r}


async def test_too_few_owners_leave_everything_unassigned(h: Harness) -> None:
    await register(h, {"a1": ("A", 8, 8192), "a2": ("A", 8, 8192), "b": ("B", 8, 8192)})
    w = workload(tasks=4, replication=3)
    plan = await h.svc.allocate_resources(["a1", "a2", "b"], w)
    assert plan.assignments == {}
    assert plan.unassigned == w.task_ids
    empty = await h.svc.allocate_resources([], w)
    assert empty.unassigned == w.task_ids
    nothing = await h.svc.allocate_resources(["a1"], workload(tasks=0))
    assert nothing.assignments == {}
    assert nothing.unassigned == ()


async def test_unknown_participant_is_not_found(h: Harness) -> None:
    await register(h, {"a": ("A", 1, 4096)})
    with pytest.raises(NotFound) as err:
        await h.svc.allocate_resources(["a", "ghost"], workload(tasks=1))
    assert err.value.fields == {"kind": "device", "key": "ghost"}


DEVICE = st.tuples(
    st.integers(0, 7),  # owner
    st.integers(1, 6),  # cores
    st.sampled_from([1024, 2048, 4096, 8192]),  # RAM
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    devices=st.lists(DEVICE, min_size=1, max_size=30),
    picks=st.lists(st.integers(0, 29), max_size=40),
    tasks=st.integers(0, 70),
    replication=st.integers(1, 4),
    ram_per_task=st.sampled_from([0, 0, 1000, 2048, 5000]),
)
def test_plans_respect_owners_and_capacity(
    devices: list[tuple[int, int, int]],
    picks: list[int],
    tasks: int,
    replication: int,
    ram_per_task: int,
) -> None:
    spec = {f"d{i}": (f"o{owner}", cores, ram) for i, (owner, cores, ram) in enumerate(devices)}
    # participants: any of them, in any order, possibly repeated
    participants = [f"d{p % len(devices)}" for p in picks] or list(spec)
    w = workload(tasks, replication, ram_per_task)
    distinct = {
        d: (spec[d][0], capacity(spec[d][1], spec[d][2], ram_per_task)) for d in participants
    }

    async def main(db: Path) -> None:
        async with harvesting(db, config(device_discovery=QUIET), synchronous="OFF") as h:
            await register(h, spec)
            plan = await h.svc.allocate_resources(participants, w)
            check_plan(plan, w, distinct)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "h.db"))
