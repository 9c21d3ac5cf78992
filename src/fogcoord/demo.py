"""``fogcoord demo``: the main job of the product, end to end, on one machine.

An embedded coordinator serves its real API on a loopback port; a workforce of real agents (some
of which cheat) registers, bids in auctions and runs WebAssembly tasks; a requester submits two
jobs from the examples (a Mandelbrot image rendered in tiles, a prime count over ranges); the
coordinator auctions, verifies by replication, catches the cheaters and pays. The demo shows the
progress, writes the image as a PNG, checks every answer against an independent computation,
prints who was paid what, and verifies the ledger. Without ``--exit`` it keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fogcoord.agent.workforce import Workforce
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogClient
from fogcoord.compute.examples import (
    load_example,
    mandelbrot_reference,
    mandelbrot_tile_input,
    primes_input,
    primes_output,
    primes_reference,
)
from fogcoord.config import FogConfig
from fogcoord.contracts.jobs import JobState, JobSubmission, JobView
from fogcoord.contracts.marketplace import MarketMetrics
from fogcoord.contracts.studies import Aggregation, StudySpec, decode_model, encode_model
from fogcoord.coordinator import Coordinator
from fogcoord.serve import serve
from fogcoord.trainers.logreg import accuracy, held_out_set, initial_model

IMAGE = (-2.2, -1.2, 1.0, 1.2)
"""The plane rectangle (x0, y0, x1, y1) of the Mandelbrot image."""


@dataclass(frozen=True)
class DemoSize:
    devices: int = 50
    cheaters: int = 5
    width: int = 768
    height: int = 512
    tile: int = 64
    max_iter: int = 500
    prime_ranges: int = 64
    prime_span: int = 25_000
    poisoners: int = 5
    study_rounds: int = 8
    study_clients: int = 20
    study_accuracy: float = 0.70
    """The held-out accuracy the federated study must reach (10 classes: chance is 0.10)."""


SMALL = DemoSize(
    devices=12,
    cheaters=2,
    width=256,
    height=192,
    prime_ranges=16,
    poisoners=1,
    study_rounds=4,
    study_clients=8,
    study_accuracy=0.35,
)


async def run_demo(
    config: FogConfig,
    console: Console,
    *,
    serve_after: bool = False,
    size: DemoSize | None = None,
) -> int:
    """Run the demo; 0 when every answer was right, every cheater caught and the ledger sound."""
    outcome: list[bool] = []
    # a short run: let devices earn trust (and lone work, and audits) after a few results
    jobs_cfg = config.jobs.model_copy(update={"trusted_streak": 4})
    config = config.model_copy(update={"jobs": jobs_cfg})

    async def on_ready(coord: Coordinator, port: int) -> bool:
        outcome.append(await _demo(coord, port, console, size or DemoSize()))
        if serve_after:
            console.print(
                f"serving http://127.0.0.1:{port} until Ctrl-C: the dashboard at / "
                "(with ?key=<operator key>), the API docs at /docs"
            )
        return serve_after

    code = await serve(config, on_ready=on_ready)
    return code or (0 if outcome and all(outcome) else 1)


async def _demo(coord: Coordinator, port: int, console: Console, size: DemoSize) -> bool:
    url = f"http://127.0.0.1:{port}"
    bootstrap = coord.auth.bootstrap_key
    operator = bootstrap.key if bootstrap else coord.config.server.operator_key
    if not operator:
        console.print("[red]no operator key on this data directory: set server.operator_key[/red]")
        return False
    started = time.perf_counter()
    console.print(f"[bold]fogcoord demo[/bold]: coordinator on {url}")
    console.print(f"live dashboard: {url}/?key={operator}", highlight=False, soft_wrap=True)
    workforce = Workforce(
        url, operator, size.devices, cheaters=size.cheaters, poisoners=size.poisoners
    )
    try:
        await workforce.start()
        online = await workforce.wait_online()
        console.print(
            f"{online} of {size.devices} agents online ({size.cheaters} of them cheat); "
            f"{len(workforce.pool.pids)} sandbox worker processes"
        )
        async with FogClient(url, operator) as admin:
            issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name="demo-requester")
        async with FogClient(url, issued.key) as fog:
            wallet = await fog.create_wallet()
            console.print(f"requester wallet {wallet.wallet_id}: {wallet.balance} tokens")
            mandel, tiles = _mandelbrot_job(size)
            primes, ranges = _primes_job(size)
            jobs = [await fog.submit_job(body) for body in (mandel, primes)]
            final = await _watch(fog, jobs, console)
            ok = await _check(fog, coord, final, tiles, ranges, size, console)
            after = await fog.wallet(wallet.wallet_id)
            metrics = await fog.market_metrics()
        caught = _report(final, workforce.cheater_ids(), workforce.tasks_run(), metrics, console)
        async with FogClient(url, issued.key) as fog:
            study_ok = await _study(fog, workforce.poisoner_ids(), size, console)
        console.print(
            f"requester spent {wallet.balance - after.balance} tokens "
            f"(of {sum(j.held for j in final)} held in escrow)"
        )
        ledger_ok = await _verify_ledger(coord, console)
        elapsed = time.perf_counter() - started
        console.print(f"demo finished in {elapsed:.1f} s")
        return ok and caught and ledger_ok and study_ok
    finally:
        await workforce.stop()


def _mandelbrot_job(size: DemoSize) -> tuple[JobSubmission, list[tuple[int, int, int, int]]]:
    tiles = [
        (x, y, min(size.tile, size.width - x), min(size.tile, size.height - y))
        for y in range(0, size.height, size.tile)
        for x in range(0, size.width, size.tile)
    ]
    inputs = [
        mandelbrot_tile_input(*IMAGE, size.width, size.height, size.max_iter, x, y, w, h)
        for x, y, w, h in tiles
    ]
    body = JobSubmission(
        name="mandelbrot",
        module_wat=load_example("mandelbrot").decode(),
        inputs_b64=[base64.b64encode(i).decode() for i in inputs],
        fuel_limit=400_000_000,
        replication=2,
        max_price_per_gflop=Decimal("0.01"),
        deadline_seconds=600,
        slots=size.devices - 1,
    )
    return body, tiles


def _primes_job(size: DemoSize) -> tuple[JobSubmission, list[tuple[int, int]]]:
    start = 1_000_000
    ranges = [
        (start + i * size.prime_span, start + (i + 1) * size.prime_span)
        for i in range(size.prime_ranges)
    ]
    body = JobSubmission(
        name="primes",
        module_wat=load_example("primes").decode(),
        inputs_b64=[base64.b64encode(primes_input(lo, hi)).decode() for lo, hi in ranges],
        fuel_limit=200_000_000,
        replication=2,
        max_price_per_gflop=Decimal("0.01"),
        deadline_seconds=600,
        slots=size.devices - 1,
    )
    return body, ranges


async def _watch(fog: FogClient, jobs: list[JobView], console: Console) -> list[JobView]:
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]:<10} replicas {task.fields[replicas]}"),
        TimeElapsedColumn(),
    )
    current = list(jobs)
    with Progress(*columns, console=console, transient=False) as progress:
        bars = [
            progress.add_task(j.name, total=j.tasks_total, state=j.state.value, replicas=0)
            for j in jobs
        ]
        while True:
            current = [await fog.job(j.job_id) for j in jobs]
            for bar, view in zip(bars, current, strict=True):
                done = view.tasks.get("verified", 0) + view.tasks.get("failed", 0)
                progress.update(
                    bar, completed=done, state=view.state.value, replicas=view.replicas_run
                )
            if all(v.state.terminal for v in current):
                return current
            await asyncio.sleep(0.2)


async def _check(
    fog: FogClient,
    coord: Coordinator,
    final: list[JobView],
    tiles: list[tuple[int, int, int, int]],
    ranges: list[tuple[int, int]],
    size: DemoSize,
    console: Console,
) -> bool:
    mandel, primes = final
    if mandel.state is not JobState.SETTLED or primes.state is not JobState.SETTLED:
        console.print(f"[red]jobs ended {mandel.state.value} / {primes.state.value}[/red]")
        return False
    image = np.zeros((size.height, size.width), dtype=np.uint8)
    bad_tiles = 0
    for i, (x, y, w, h) in enumerate(tiles):
        data = await fog.job_output(mandel.job_id, i)
        tile_input = mandelbrot_tile_input(
            *IMAGE, size.width, size.height, size.max_iter, x, y, w, h
        )
        bad_tiles += data != mandelbrot_reference(tile_input)
        image[y : y + h, x : x + w] = np.frombuffer(data, dtype=np.uint8).reshape(h, w)
    path = coord.config.server.data_dir / "mandelbrot.png"
    _write_png(image, path)
    verdict = "[green]all equal[/green]" if not bad_tiles else f"[red]{bad_tiles} differ[/red]"
    console.print(
        f"mandelbrot: {len(tiles)} tiles assembled into {path.resolve()}; "
        f"compared with numpy: {verdict}"
    )
    wrong = bad_tiles
    total = 0
    for i, (lo, hi) in enumerate(ranges):
        data = await fog.job_output(primes.job_id, i)
        count = primes_output(data)
        total += count
        wrong += count != primes_reference(lo, hi)
    lo, hi = ranges[0][0], ranges[-1][1]
    verdict = "[green]all correct[/green]" if not wrong else f"[red]{wrong} wrong[/red]"
    console.print(f"primes: {total} primes in [{lo:,}, {hi:,}), checked by a sieve: {verdict}")
    return wrong == 0


def _write_png(image: np.ndarray[Any, np.dtype[np.uint8]], path: Path) -> None:
    from PIL import Image

    # iteration counts to a blue-gold palette: escape time reads better in colour than grey
    t = image.astype(np.float32) / 255.0
    rgb = np.stack(
        [
            np.clip(9 * (1 - t) * t**3 * 255 * 4, 0, 255),
            np.clip(15 * (1 - t) ** 2 * t**2 * 255 * 2, 0, 255),
            np.clip(8.5 * (1 - t) ** 3 * t * 255 * 3, 0, 255),
        ],
        axis=-1,
    ).astype(np.uint8)
    rgb[image == 255] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(path)


def _report(
    final: list[JobView],
    cheaters: dict[str, str],
    ran: dict[str, int],
    metrics: MarketMetrics,
    console: Console,
) -> bool:
    table = Table(title="jobs")
    for col in ("job", "state", "tasks", "runs", "audits", "GFLOP", "price", "cost"):
        table.add_column(col, justify="right" if col not in ("job", "state") else "left")
    for j in final:
        table.add_row(
            j.name,
            j.state.value,
            str(j.tasks.get("verified", 0)),
            str(j.replicas_run),
            str(j.audits),
            f"{j.fuel_verified / 1e9:.3f}",
            str(j.clearing_price_per_gflop),
            str(j.cost_so_far),
        )
    console.print(table)
    roles = Table(title="tokens paid out of escrow, by role")
    roles.add_column("role")
    roles.add_column("tokens", justify="right")
    for role, amount in metrics.revenue_by_role.items():
        roles.add_row(role, str(amount))
    console.print(roles)
    caught = set().union(*(set(j.cheaters) for j in final))
    idle = {d for d in cheaters if ran.get(d, 0) == 0}
    missed = set(cheaters) - caught - idle
    wrongly = caught - set(cheaters)
    console.print(
        f"cheaters: {len(cheaters)} in the workforce, {len(caught & set(cheaters))} caught"
        + (f", {len(idle)} not hired by either auction" if idle else "")
        + (f", [yellow]{len(missed)} ran tasks but were not caught[/yellow]" if missed else "")
        + (f", [red]{len(wrongly)} honest devices flagged[/red]" if wrongly else "")
    )
    for device in sorted(caught):
        how = cheaters.get(device, "[red]honest[/red]")
        console.print(f"  {device} ({how}, {ran.get(device, 0)} tasks): pending pay voided")
    return not wrongly


async def _study(fog: FogClient, poisoners: set[str], size: DemoSize, console: Console) -> bool:
    """A federated study on the same devices: private, robust, paid per round."""
    config: dict[str, Any] = {}
    spec = StudySpec(
        name="logreg",
        model=encode_model(initial_model(config)),
        trainer="logreg",
        trainer_config=config,
        rounds=size.study_rounds,
        clients_per_round=size.study_clients,
        clip_norm=1.0,
        epsilon=4.0,
        aggregation=Aggregation.ROBUST,
        payment_per_round=Decimal("0.01"),
    )
    view = await fog.create_study(spec)
    console.print(
        f"federated study {view.study_id}: logistic regression on {size.devices} non-IID devices, "
        f"{size.study_clients} per round, epsilon {spec.epsilon:g} per round, "
        f"{len(poisoners)} poisoning"
    )
    while view.state.value == "running":
        await asyncio.sleep(0.2)
        view = await fog.study(view.study_id)
    table = Table(title="federated rounds")
    for col in ("round", "devices", "flagged", "device accuracy", "max epsilon", "paid"):
        table.add_column(col, justify="right")
    for r in view.history:
        table.add_row(
            str(r.round),
            str(len(r.participants)),
            str(len(r.flagged)),
            f"{r.accuracy:.3f}" if r.accuracy is not None else "",
            f"{r.epsilon_spent_max:.2f}",
            str(r.paid),
        )
    console.print(table)
    model = decode_model(await fog.study_model(view.study_id))
    x, y = held_out_set(config, 4_000)
    acc = accuracy(model, x, y)
    flagged = set(view.flagged_total)
    wrongly = flagged - poisoners
    console.print(
        f"study {view.state.value}: held-out accuracy {acc:.3f} (needs {size.study_accuracy}); "
        f"poisoners caught {len(flagged & poisoners)} of {len(poisoners)}"
        + (f", [red]{len(wrongly)} honest devices flagged[/red]" if wrongly else "")
    )
    return view.state.value == "completed" and acc >= size.study_accuracy and not wrongly


async def _verify_ledger(coord: Coordinator, console: Console) -> bool:
    from fogcoord.tokenomics.store import SqlLedgerStore
    from fogcoord.tokenomics.verify import verify_ledger

    report = await asyncio.to_thread(verify_ledger, SqlLedgerStore(coord.storage.engine))
    if report.ok:
        console.print(
            f"[green]ledger verified[/green]: {report.transfers} transfers in "
            f"{report.block_count} blocks, balances and hash chain agree"
        )
    else:
        for problem in report.problems:
            console.print(f"[red]{problem}[/red]")
    return report.ok
