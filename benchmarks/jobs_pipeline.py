"""``jobs.pipeline``: verified-and-paid tasks per second through the whole compute-job pipeline.

Set-up, as a user deploys it: a real ``fogcoord serve`` process (fresh data directory, SQLite,
production settings) on a loopback port, and in this process a :class:`~fogcoord.agent.workforce
.Workforce` of 100 real agents (no cheaters): 100 owners, each device registered with its own
Ed25519 key over HTTP, its WebSocket channel open and heartbeating, an ``AutoBidder`` answering
auctions and a ``TaskExecutor`` running pushed tasks in one shared ``WorkerPool`` of 2 sandbox
processes (the 2 cores of this machine). The coordinator runs in its own process: it competes
for the 2 cores with the agents and the sandboxes as on one machine hosting all of them, but it
never shares their event loop or GIL (in-process, every agent frame would be paid for on the
coordinator's loop, and the figure would be the agents' cost as much as the coordinator's).

A requester (its own API key and wallet) submits through ``FogClient.submit_job`` a job of 2,000
prime-count ranges of 2,000 numbers each (the ``primes`` example, from 1,000,000 up; 1.6 to 3.5
million fuel, about 0.5 ms of sandboxed compute a task), replication 2, 99 slots (so the
100-device auction settles itself at its 100th ask), and polls ``GET /v1/jobs/{id}`` every
250 ms. The time runs from just before the ``POST /v1/jobs`` to the job's ``finished_at`` (the
coordinator's wall clock, on this host, so the polling interval does not count), the job
``settled``: auctioned, allocated, every task run on two devices of distinct owners, the
receipts' signatures checked, the quorum reached, every task paid from escrow in batches
(``jobs.settle_batch_size`` 250, a partial batch waits ``settle_interval_seconds`` 0.5 s), the
final payout, the mining rewards and the refund of the unearned hold.
``value = tasks / seconds``, the median of 3 such jobs. Trust-based solo runs are switched off
(``trusted_streak`` far above any device's count) so that every task really is executed and
compared twice: plain replication 2, the most the pipeline does per task (``jobs.audit_overhead``
measures adaptive replication). One warm-up job of 200 tasks goes first (devices cache the
module, the payees' wallets are opened, the coordinator's code paths are warm), as on a
coordinator that has been serving.

After the timing, each job's results archive (``GET /v1/jobs/{id}/results``) is downloaded and
every count is checked against a sieve: a wrong or missing answer fails the figure. The CPU time
of the coordinator, the agents and the sandboxes during each job is logged, with what other
processes on the machine took.

``jobs.pipeline.<state>`` is the share of that job's life on the coordinator (``JobView
.time_in_state`` over ``finished_at - created_at``) spent in each state before ``settled``.

Baseline, same run: the same 2,000 tasks executed once each, directly by the workforce's
``WorkerPool`` (16 in flight), with no coordinator, agents or network -- raw sandbox throughput.
With replication 2 the pipeline could at best reach half of it; the ratio shows what the
coordinator, the agents, the channel and the payments cost on top.

Set ``FOGCOORD_BENCH_PROFILE=/path/file.prof`` to run the coordinator under cProfile (the profile
is written when it shuts down); the figure is then not comparable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from benchmarks._procs import free_port
from benchmarks.harness import Figure, Unit, log
from fogcoord.agent.workforce import Workforce
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogClient
from fogcoord.compute.examples import load_example, primes_input, primes_output
from fogcoord.contracts.compute import SandboxLimits
from fogcoord.contracts.jobs import JobState, JobSubmission, JobView, TaskView
from fogcoord.contracts.units import FUEL_PER_GFLOP, MICRO_PER_TOKEN

STATES = ("submitted", "auctioned", "allocated", "running", "verified")
FIGURES = ("jobs.pipeline", *(f"jobs.pipeline.{s}" for s in STATES))
UNITS: Mapping[str, Unit] = {
    "jobs.pipeline": "/s",
    **{f"jobs.pipeline.{s}": "%" for s in STATES},
}
TIMEOUT_S = 300.0
"""About 25 s normally; an auction that misses asks waits up to ``jobs.auction_minutes`` (60 s)."""

DEVICES = 100
TASKS = 2_000
WARMUP_TASKS = 200
SPAN = 2_000
START = 1_000_000
FUEL_LIMIT = 20_000_000
"""Per task; the ranges here need 1.5 to 3.3 million."""
TARGET = 200.0
REPEATS = 3
POLL_S = 0.25
"""As a user's client polls; each ``GET /v1/jobs/{id}`` of a 2,000-task job takes about 2 ms of
the coordinator (the view counts the tasks), so polling much faster would load what is measured."""
PROFILE_ENV = "FOGCOORD_BENCH_PROFILE"

PIPELINE_JOBS: dict[str, Any] = {
    "trusted_streak": 1_000_000_000,
    "settle_batch_size": 250,
    "settle_interval_seconds": 0.5,
}
"""The ``jobs`` block of the coordinator for this figure."""


def ranges(count: int, start: int = START, span: int = SPAN) -> list[tuple[int, int]]:
    return [(start + i * span, start + (i + 1) * span) for i in range(count)]


def primes_job(name: str, spans: list[tuple[int, int]], *, slots: int) -> JobSubmission:
    return JobSubmission(
        name=name,
        module_wat=load_example("primes").decode(),
        inputs_b64=[base64.b64encode(primes_input(lo, hi)).decode() for lo, hi in spans],
        fuel_limit=FUEL_LIMIT,
        replication=2,
        max_price_per_gflop=Decimal("0.01"),
        deadline_seconds=600,
        slots=slots,
    )


def prime_counts(spans: list[tuple[int, int]]) -> list[int]:
    """The number of primes in each range, by one sieve over all of them."""
    hi = max(h for _, h in spans)
    sieve = np.ones(hi, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(hi**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    before = np.concatenate(([0], np.cumsum(sieve, dtype=np.int64)))
    return [int(before[h] - before[lo]) for lo, h in spans]


# --- the set-up: a serve process, a workforce, a requester -----------------------------------


@dataclass
class Cluster:
    url: str
    operator: str
    server_pid: int
    workforce: Workforce
    requester: FogClient

    def bid_errors(self) -> int:
        """Bids the agents could not place (transport errors); each lost one auction."""
        return sum(m.bidder.errors for m in self.workforce.members)

    async def trust(self) -> dict[str, float]:
        """Device id -> its trust on the coordinator, for every device of the workforce."""
        ids = [m.agent.device_id for m in self.workforce.members if m.agent.device_id]
        async with FogClient(self.url, self.operator) as admin:
            views = await asyncio.gather(*(admin.device(d) for d in ids))
        return {v.device.device_id: v.health.trust for v in views}


def _spawn_server(tmp: Path, jobs: Mapping[str, Any], port: int) -> subprocess.Popen[bytes]:
    """``fogcoord serve`` with this ``jobs`` block; its output goes to ``tmp/serve.log``."""
    config = tmp / "fogcoord.yaml"
    config.write_text(yaml.safe_dump({"jobs": dict(jobs)}))
    python = [sys.executable]
    profile = os.environ.get(PROFILE_ENV)
    if profile:
        python += ["-m", "cProfile", "-o", profile]
    with (tmp / "serve.log").open("wb") as sink:
        return subprocess.Popen(
            [
                *python,
                "-m",
                "fogcoord",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--data-dir",
                str(tmp / "data"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )


async def _start_server(
    tmp: Path, jobs: Mapping[str, Any], port: int
) -> tuple[subprocess.Popen[bytes], str, Path]:
    proc = _spawn_server(tmp, jobs, port)
    output = tmp / "serve.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"(fc_[0-9a-f]{16}_\S{43})", output.read_text(errors="replace"))
        if found:
            return proc, found.group(1), output
        await asyncio.sleep(0.05)
    await asyncio.to_thread(_kill, proc)
    tail = "\n".join(output.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"fogcoord serve printed no operator key (exit {proc.returncode}):\n{tail}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def cluster(jobs: Mapping[str, Any], devices: int = DEVICES) -> AsyncIterator[Cluster]:
    """A serve process with this ``jobs`` block, ``devices`` agents online, a funded requester."""
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-jobs-") as name:
        tmp = Path(name)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc, operator, output = await _start_server(tmp, jobs, port)
        workforce = Workforce(url, operator, devices, cheaters=0)
        try:
            started = time.perf_counter()
            await workforce.start()
            online = await workforce.wait_online(60.0)
            if online < devices:
                raise RuntimeError(f"only {online} of {devices} agents came online")
            log(f"  {online} agents online in {time.perf_counter() - started:.1f} s")
            async with FogClient(url, operator) as admin:
                issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name="bench")
            async with FogClient(url, issued.key, timeout=60.0) as requester:
                await requester.create_wallet()
                yield Cluster(url, operator, proc.pid, workforce, requester)
        finally:
            try:
                await workforce.stop()
            finally:
                await asyncio.to_thread(_stop_server, proc)
                problems = [
                    line
                    for line in output.read_text(errors="replace").splitlines()
                    if "Traceback" in line or " ERROR " in line or "exception" in line.lower()
                ]
                if problems:
                    log(f"  the coordinator logged {len(problems)} error line(s), first:")
                    for line in problems[:5]:
                        log(f"    {line}")


async def run_job(fog: FogClient, body: JobSubmission) -> tuple[JobView, float]:
    """Submit, poll until terminal; the final view and the seconds from submission to its end.

    The end is the coordinator's ``finished_at`` (its wall clock, this host's), so the figure does
    not depend on the polling interval; the poll only learns that the job ended.
    """
    started = time.time()
    view = await fog.submit_job(body)
    while not view.state.terminal:
        await asyncio.sleep(POLL_S)
        view = await fog.job(view.job_id)
    return view, (view.finished_at or time.time()) - started


async def run_logged(c: Cluster, body: JobSubmission) -> tuple[JobView, float]:
    """:func:`run_job`, logging the job and any bids the agents failed to place for it."""
    errors = c.bid_errors()
    view, seconds = await run_job(c.requester, body)
    log(f"  {describe(view, seconds)}")
    lost = c.bid_errors() - errors
    if lost:
        log(
            f"    {lost} agent(s) failed to place their bid (transport error, not retried); "
            f"the auction hired {view.devices} devices and waited "
            f"{view.time_in_state.get('auctioned', 0.0):.1f} s"
        )
    return view, seconds


async def task_views(fog: FogClient, view: JobView) -> list[TaskView]:
    return await fog.job_tasks(view.job_id, 0, view.tasks_total)


async def check_results(
    fog: FogClient, view: JobView, spans: list[tuple[int, int]]
) -> tuple[int, int]:
    """Download the results archive; (verified outputs, wrong or missing outputs)."""
    started = time.perf_counter()
    data = await fog.job_results(view.job_id)
    log(
        f"    results archive of {view.name}: {len(data) / 1024:.0f} KB in "
        f"{time.perf_counter() - started:.2f} s"
    )
    archive = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(archive.read("manifest.json"))
    expected = prime_counts(spans)
    verified = wrong = 0
    files = {t["index"]: t.get("file") for t in manifest["tasks"]}
    for i, count in enumerate(expected):
        name = files.get(i)
        if name is None:
            wrong += 1
            continue
        verified += 1
        wrong += primes_output(archive.read(name)) != count
    return verified, wrong


def unpaid_by_rounding(view: JobView, tasks: list[TaskView]) -> int:
    """Verified tasks whose work at the clearing price is under one micro-token: paid nothing."""
    price = view.clearing_price_per_gflop
    if price is None:
        return 0
    micro = int(price * MICRO_PER_TOKEN)
    return sum(1 for t in tasks if t.fuel is not None and micro * t.fuel // FUEL_PER_GFLOP == 0)


def state_shares(view: JobView) -> dict[str, float]:
    """Percent of the job's life (created to finished) spent in each state."""
    total = (view.finished_at or 0.0) - view.created_at
    if total <= 0:
        total = sum(view.time_in_state.values()) or 1.0
    return {s: 100.0 * view.time_in_state.get(s, 0.0) / total for s in STATES}


def describe(view: JobView, seconds: float) -> str:
    server = (view.finished_at or 0.0) - view.created_at
    shares = state_shares(view)
    times = ", ".join(
        f"{s} {view.time_in_state.get(s, 0.0):.2f} s ({shares[s]:.1f} %)" for s in STATES
    )
    return (
        f"{view.name}: {view.state.value}, {view.tasks.get('verified', 0)}/{view.tasks_total} "
        f"verified, {view.replicas_run} replicas, {view.audits} audits, {view.devices} devices, "
        f"price {view.clearing_price_per_gflop}/GFLOP, cost {view.cost_so_far} of "
        f"{view.held} held; {seconds:.2f} s from the request to settled, {server:.2f} s on "
        f"the coordinator: {times}"
    )


class CpuMeter:
    """CPU seconds used by the coordinator, this process (the agents) and the sandboxes."""

    def __init__(self, server_pid: int, workforce: Workforce) -> None:
        self.procs = {
            "coordinator": [psutil.Process(server_pid)],
            "agents": [psutil.Process()],
            "sandboxes": [psutil.Process(p) for p in workforce.pool.pids if p is not None],
        }
        self.started = self._read()
        self.machine = psutil.cpu_times()
        self.wall = time.perf_counter()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, procs in self.procs.items():
            total = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            out[name] = total
        return out

    def report(self) -> str:
        now, wall = self._read(), time.perf_counter() - self.wall
        used = {name: now[name] - self.started[name] for name in self.procs}
        parts = [f"{name} {v:.1f} s ({100 * v / wall:.0f} % of a core)" for name, v in used.items()]
        machine = psutil.cpu_times()
        idle = machine.idle - self.machine.idle
        busy = sum(machine) - sum(self.machine) - idle
        others = max(0.0, busy - sum(used.values()))
        return (
            f"CPU over {wall:.1f} s: " + ", ".join(parts) + f"; the machine ({psutil.cpu_count()}"
            f" cores) idle {idle:.1f} s, other processes and the kernel {others:.1f} s"
        )


async def raw_throughput(workforce: Workforce, spans: list[tuple[int, int]]) -> float:
    """Tasks per second of the workforce's WorkerPool running the tasks once each, directly."""
    module = load_example("primes")
    limits = SandboxLimits(fuel=FUEL_LIMIT)
    inputs = [primes_input(lo, hi) for lo, hi in spans]
    pool = workforce.pool
    await pool.run(module, inputs[0], limits, "warm-up")
    gate = asyncio.Semaphore(16)

    async def one(i: int, data: bytes) -> None:
        async with gate:
            receipt, _ = await pool.run(module, data, limits, f"raw-{i}")
            if receipt.outcome.value != "ok":
                raise RuntimeError(f"raw task {i} ended {receipt.outcome.value}")

    started = time.perf_counter()
    await asyncio.gather(*(one(i, d) for i, d in enumerate(inputs)))
    return len(inputs) / (time.perf_counter() - started)


async def run() -> list[Figure]:
    spans = ranges(TASKS)
    warm_spans = ranges(WARMUP_TASKS, start=START + TASKS * SPAN)
    slots = DEVICES - 1
    runs: list[tuple[JobView, float]] = []
    async with cluster(PIPELINE_JOBS) as c:
        fog = c.requester
        warm, _ = await run_logged(c, primes_job("warm-up", warm_spans, slots=slots))
        if warm.state is not JobState.SETTLED:
            raise RuntimeError(f"the warm-up job ended {warm.state.value}: {warm.reason}")
        for i in range(REPEATS):
            meter = CpuMeter(c.server_pid, c.workforce)
            view, seconds = await run_logged(c, primes_job(f"primes-{i + 1}", spans, slots=slots))
            log(f"    {meter.report()}")
            runs.append((view, seconds))
        checks = [await check_results(fog, v, spans) for v, _ in runs]
        views = await task_views(fog, runs[0][0])
        unpaid = unpaid_by_rounding(runs[0][0], views)
        fuel = [t.fuel for t in views if t.fuel is not None]
        log(f"  fuel per task {min(fuel):,} to {max(fuel):,}")
        started = time.perf_counter()
        for _ in range(20):
            await fog.job(runs[0][0].job_id)
        log(
            f"  GET /v1/jobs/{{id}} of a {TASKS}-task job: "
            f"{(time.perf_counter() - started) / 20 * 1e3:.1f} ms a request"
        )
        raw = await raw_throughput(c.workforce, spans)
    rates = [TASKS / s for _, s in runs]
    rate = statistics.median(rates)
    view = runs[rates.index(rate)][0]
    log(
        f"  pipeline {', '.join(f'{r:.1f}' for r in rates)} tasks/s, median {rate:.1f} "
        f"({view.replicas_run * rate / TASKS:.1f} executions/s); raw WorkerPool {raw:.1f} "
        f"tasks/s, so replication 2 caps the pipeline at {raw / 2:.1f}"
    )
    wrong = sum(w for _, w in checks)
    log(
        f"  results: {sum(v for v, _ in checks)} verified outputs, {wrong} wrong or missing "
        "(checked by a sieve)"
    )
    if unpaid:
        log(
            f"  {unpaid} of {TASKS} verified tasks were worth under one micro-token at the "
            f"clearing price {view.clearing_price_per_gflop}/GFLOP and were paid nothing"
        )
    shares = state_shares(view)
    figures = [Figure(f"jobs.pipeline.{s}", shares[s], "%") for s in STATES]
    bad = [v for v, _ in runs if v.state is not JobState.SETTLED]
    if bad or wrong:
        reason = f"{len(bad)} job(s) not settled; {wrong} wrong or missing outputs"
        return [Figure.failed("jobs.pipeline", "/s", reason), *figures]
    return [
        Figure("jobs.pipeline", rate, "/s", baseline=raw, target=TARGET, op=">="),
        *figures,
    ]
