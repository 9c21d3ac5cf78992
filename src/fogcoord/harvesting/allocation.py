"""Allocation plans: tasks to devices, R replicas on distinct owners, within capacity.

A device's capacity is how many tasks it may hold at once: its cores, further limited by RAM
when the workload states RAM per task. Slots are laid out round by round (every device with
room in round k gets its k-th slot), devices ordered so that neighbours have different owners;
task t takes the R consecutive slots from t x R. Consecutive slots of a round are different
devices of different owners, so collisions can only happen at a round boundary or when few owners
remain; those few tasks are repaired one by one. If that still strands tasks, the plan is rebuilt
with McNaughton's wrap-around rule, which places as many tasks as can fit at all; only tasks no
plan could place are reported as unassigned. A participant listed twice is one device.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fogcoord.contracts.harvesting import AllocationPlan, ComputeWorkload
from fogcoord.harvesting.registry import DeviceRegistry


def capacities(
    reg: DeviceRegistry, rows: npt.NDArray[np.intp], workload: ComputeWorkload
) -> npt.NDArray[np.int64]:
    cap = reg.cpu_cores[rows].astype(np.int64)
    if workload.ram_mb_per_task > 0:
        cap = np.minimum(cap, reg.ram_mb[rows].astype(np.int64) // workload.ram_mb_per_task)
    return np.maximum(cap, 0)


def plan(reg: DeviceRegistry, participants: list[str], workload: ComputeWorkload) -> AllocationPlan:
    rows = np.array(
        [reg.rows[d] for d in dict.fromkeys(participants) if d in reg.rows], dtype=np.intp
    )
    tasks = list(workload.task_ids)
    replicas = workload.replication
    if rows.size == 0 or not tasks:
        return AllocationPlan(workload_id=workload.workload_id, unassigned=tuple(tasks))
    owners = reg.owner[rows]
    # Spread owners: order by (position within the owner's devices, owner), so each round
    # walks through distinct owners before repeating one.
    order = np.lexsort((owners, _rank_within(owners)))
    rows, owners = rows[order], owners[order]
    cap = capacities(reg, rows, workload)
    rounds = int(cap.max()) if cap.size else 0
    slot_rows = np.concatenate([rows[cap > k] for k in range(rounds)]) if rounds else rows[:0]
    slot_owner = np.concatenate([owners[cap > k] for k in range(rounds)]) if rounds else owners[:0]
    n_full = min(len(tasks), slot_rows.size // replicas)
    grid = slot_rows[: n_full * replicas].reshape(n_full, replicas)
    grid_owner = slot_owner[: n_full * replicas].reshape(n_full, replicas)
    sorted_owners = np.sort(grid_owner, axis=1)
    clash = (
        np.any(sorted_owners[:, 1:] == sorted_owners[:, :-1], axis=1)
        if replicas > 1
        else np.zeros(n_full, dtype=bool)
    )
    ids = reg.device_ids
    ok_rows = np.flatnonzero(~clash)
    id_grid = reg.ids[grid[ok_rows]].tolist()
    assignments: dict[str, tuple[str, ...]] = dict(
        zip([tasks[t] for t in ok_rows.tolist()], map(tuple, id_grid), strict=True)
    )
    # repair clashing tasks from the leftover slots, owner-distinct, one by one
    leftover = list(
        zip(
            slot_rows[n_full * replicas :].tolist(),
            slot_owner[n_full * replicas :].tolist(),
            strict=True,
        )
    )
    for t in np.flatnonzero(clash).tolist():
        leftover.extend(zip(grid[t].tolist(), grid_owner[t].tolist(), strict=True))
    pending = [tasks[t] for t in np.flatnonzero(clash).tolist()] + tasks[n_full:]
    unassigned: list[str] = []
    for task in pending:
        chosen: list[int] = []
        seen: set[int] = set()
        for i, (_, owner) in enumerate(leftover):
            if owner not in seen:
                chosen.append(i)
                seen.add(owner)
                if len(chosen) == replicas:
                    break
        if len(chosen) < replicas:
            unassigned.append(task)
            continue
        picked = [leftover[i][0] for i in chosen]
        for i in reversed(chosen):
            leftover.pop(i)
        assignments[task] = tuple(ids(picked))
    if unassigned:
        # the round-robin layout can strand tasks that another pairing would place
        exact = _wrap_around(reg, rows, owners, cap, tasks, replicas)
        if len(exact) > len(assignments):
            assignments, unassigned = exact, tasks[len(exact) :]
    return AllocationPlan(
        workload_id=workload.workload_id,
        assignments=assignments,
        unassigned=tuple(unassigned),
    )


def _most_tasks(owner_cap: npt.NDArray[np.int64], tasks: int, replicas: int) -> int:
    """The most tasks that fit: ``t`` do iff sum over owners of min(capacity, t) >= t x R
    (an owner holds at most one replica of a task). Feasibility is monotone in ``t``."""
    lo, hi = 0, tasks
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(owner_cap, mid).sum()) >= mid * replicas:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _wrap_around(
    reg: DeviceRegistry,
    rows: npt.NDArray[np.intp],
    owners: npt.NDArray[np.int32],
    cap: npt.NDArray[np.int64],
    tasks: list[str],
    replicas: int,
) -> dict[str, tuple[str, ...]]:
    """The first ``n`` tasks placed, ``n`` the most that fit (McNaughton's wrap-around rule).

    Every owner offers min(its capacity, n) slots; laid out owner after owner and dealt to tasks
    0, 1, ..., n-1, 0, 1, ... in turn, an owner's slots (at most n in a row) land in distinct
    tasks. Within an owner, slots go round by round over its devices.
    """
    codes, owner_of = np.unique(owners, return_inverse=True)
    owner_cap = np.bincount(owner_of, weights=cap, minlength=codes.size).astype(np.int64)
    n = _most_tasks(owner_cap, len(tasks), replicas)
    if n == 0:
        return {}
    dev = np.repeat(np.arange(rows.size), cap)
    rnd = np.arange(dev.size) - np.repeat(np.cumsum(cap) - cap, cap)
    dev = dev[np.lexsort((dev, rnd, owner_of[dev]))]
    slot_owner = owner_of[dev]
    starts = np.r_[0, np.flatnonzero(slot_owner[1:] != slot_owner[:-1]) + 1]
    rank = np.arange(dev.size) - np.repeat(starts, np.diff(np.r_[starts, dev.size]))
    kept = dev[rank < np.minimum(owner_cap, n)[slot_owner]][: n * replicas]
    grid = reg.ids[rows[kept].reshape(replicas, n).T].tolist()
    return dict(zip(tasks[:n], map(tuple, grid), strict=True))


def _rank_within(owners: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    """For each position, how many earlier positions share its owner."""
    order = np.argsort(owners, kind="stable")
    sorted_owners = owners[order]
    starts = np.r_[0, np.flatnonzero(sorted_owners[1:] != sorted_owners[:-1]) + 1]
    counts = np.diff(np.r_[starts, sorted_owners.size])
    ranks_sorted = np.arange(sorted_owners.size) - np.repeat(starts, counts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    out: npt.NDArray[np.int64] = ranks.astype(np.int64)
    return out
