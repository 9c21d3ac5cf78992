"""``jobs.audit_overhead``: extra executions spent on verification once devices are trusted.

The set-up of :mod:`benchmarks.jobs_pipeline`: a real ``fogcoord serve`` process, 100 real agents
of a :class:`~fogcoord.agent.workforce.Workforce` (no cheaters) sharing one ``WorkerPool``, a
requester submitting jobs of 2,000 prime-count ranges (replication 2, 99 slots) over the HTTP
API. The coordinator keeps the default adaptive replication (``jobs.trusted_streak`` 10,
``audit_min_probability`` 0.05): a device with 10 valid results in a row runs tasks alone, and
each lone result is re-executed elsewhere with probability ``max(0.05, 1 - trust)``.

Warm-up: one job of 2,000 tasks on a fresh coordinator. Streak counters live in the runner and
persist across the jobs of one coordinator, and with no cheater a device's streak is its count of
valid results, which the task views give (provider and validators of every verified task); the
module checks that every device of the pool reached the streak (and runs one more warm-up job if
not) before measuring, and logs the devices' trust and the audit probability it implies.

Measured: two more jobs of 2,000 tasks on the same coordinator;
``value = (replicas_run - tasks) / tasks x 100`` over both (``JobView.replicas_run`` counts every
execution, audits re-executed on the coordinator included). Every output of the measured jobs is
checked against a sieve.

Baseline, same run: plain replication 2 -- one job of 500 of the same tasks on a second fresh
coordinator whose ``trusted_streak`` is far above any device's count, so every task runs twice:
100 % by construction, measured all the same.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from benchmarks.harness import Figure, Unit, log
from benchmarks.jobs_pipeline import (
    DEVICES,
    Cluster,
    check_results,
    cluster,
    primes_job,
    ranges,
    run_logged,
    task_views,
)
from fogcoord.config import JobsConfig
from fogcoord.contracts.jobs import JobState, JobView

FIGURES = ("jobs.audit_overhead",)
UNIT: Unit = "%"
TIMEOUT_S = 300.0

TASKS = 2_000
MEASURED_JOBS = 2
MAX_WARMUPS = 3
BASELINE_TASKS = 500
TARGET = 15.0

SETTLE: dict[str, Any] = {"settle_batch_size": 250, "settle_interval_seconds": 0.5}
ADAPTIVE_JOBS: dict[str, Any] = dict(SETTLE)
"""Default trust settings: only the payment batching of :mod:`benchmarks.jobs_pipeline`."""
STRICT_JOBS: dict[str, Any] = {**SETTLE, "trusted_streak": 1_000_000_000}


def overhead(views: list[JobView]) -> float:
    tasks = sum(v.tasks_total for v in views)
    return 100.0 * (sum(v.replicas_run for v in views) - tasks) / tasks


async def settled(c: Cluster, name: str, tasks: int) -> JobView:
    view, seconds = await run_logged(c, primes_job(name, ranges(tasks), slots=DEVICES - 1))
    log(f"    {tasks / seconds:.0f} tasks/s")
    if view.state is not JobState.SETTLED:
        raise RuntimeError(f"job {name} ended {view.state.value}: {view.reason}")
    return view


async def add_results(c: Cluster, view: JobView, counts: Counter[str]) -> None:
    """Add each device's valid results in ``view`` (provider or validator of a verified task)."""
    for t in await task_views(c.requester, view):
        for device in (t.provider, *t.validators):
            if device is not None:
                counts[device] += 1


async def log_trust(c: Cluster, floor: float, devices: set[str], when: str) -> None:
    trust = await c.trust()
    values = sorted(trust[d] for d in devices if d in trust)
    p = [max(floor, 1.0 - v) for v in values]
    log(
        f"  trust {when}: min {values[0]:.3f}, median {statistics.median(values):.3f}, "
        f"max {values[-1]:.3f}; audit probability mean {100 * statistics.mean(p):.1f} %"
    )


async def run() -> list[Figure]:
    defaults = JobsConfig()
    streak = defaults.trusted_streak
    async with cluster(STRICT_JOBS) as strict:
        base_view = await settled(strict, "plain-replication", BASELINE_TASKS)
    baseline = overhead([base_view])

    async with cluster(ADAPTIVE_JOBS) as c:
        counts: Counter[str] = Counter()
        for i in range(MAX_WARMUPS):
            warm = await settled(c, f"warm-up-{i + 1}", TASKS)
            await add_results(c, warm, counts)
            low = [d for d in counts if counts[d] < streak]
            log(
                f"  after warm-up {i + 1}: {len(counts)} devices with results, fewest "
                f"{min(counts.values())}, {len(low)} under the streak of {streak}"
            )
            if len(counts) >= warm.devices and not low:
                break
        else:
            raise RuntimeError(f"devices still under the streak after {MAX_WARMUPS} warm-ups")
        pool = set(counts)
        await log_trust(c, defaults.audit_min_probability, pool, "after the warm-up")
        measured = [await settled(c, f"trusted-{i + 1}", TASKS) for i in range(MEASURED_JOBS)]
        await log_trust(c, defaults.audit_min_probability, pool, "at the end")
        checks = [await check_results(c.requester, v, ranges(TASKS)) for v in measured]
        shape: Counter[int] = Counter()
        for v in measured:
            shape.update(t.replicas for t in await task_views(c.requester, v))
    runs = ", ".join(f"{n} task(s) on {k} device(s)" for k, n in sorted(shape.items()))
    log(f"  measured jobs: {runs} (a trusted device's task runs alone unless audited)")
    value = overhead(measured)
    audits = sum(v.audits for v in measured)
    tasks = sum(v.tasks_total for v in measured)
    wrong = sum(w for _, w in checks)
    log(
        f"  measured: {tasks} tasks, {sum(v.replicas_run for v in measured)} executions, "
        f"{audits} audits ({100 * audits / tasks:.1f} % of tasks), overhead {value:.1f} % "
        f"(per job {', '.join(f'{overhead([v]):.1f}' for v in measured)} %); plain replication "
        f"{baseline:.1f} %; {wrong} wrong or missing outputs (checked by a sieve)"
    )
    if wrong:
        return [Figure.failed("jobs.audit_overhead", "%", f"{wrong} wrong or missing outputs")]
    return [Figure("jobs.audit_overhead", value, "%", baseline=baseline, target=TARGET, op="<=")]
