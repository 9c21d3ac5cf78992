"""The ``fogcoord`` command line."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from fogcoord.config import FogConfig, load_config, parse_config, read_yaml
from fogcoord.contracts.errors import ConfigError

T = TypeVar("T")
app = typer.Typer(help="fogcoord: a fog-computing coordinator.", no_args_is_help=True)
config_app = typer.Typer(help="Show or check configuration.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys on a running coordinator.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
wallet_app = typer.Typer(
    help="Wallets and payments on a running coordinator.", no_args_is_help=True
)
ledger_app = typer.Typer(help="Check the ledger's integrity.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")
app.add_typer(ledger_app, name="ledger")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file (default: $FOGCOORD_CONFIG)")
]
UrlOpt = Annotated[
    str | None, typer.Option("--url", help="coordinator URL (default: $FOGCOORD_URL)")
]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", help="API key (default: $FOGCOORD_API_KEY)")
]


def _config(path: Path | None, **server: Any) -> FogConfig:
    try:
        config = load_config(path)
        overrides = {k: v for k, v in server.items() if v is not None}
        if overrides:
            data = config.model_dump(mode="json")
            data["server"].update(
                {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
            )
            config = parse_config(data)
    except ConfigError as exc:
        _config_errors(exc)
        raise typer.Exit(2) from None
    return config


def _config_errors(exc: ConfigError) -> None:
    err.print("[red]invalid configuration:[/red]")
    for key, reason in exc.errors:
        err.print(f"  {key}: {reason}")


def _run(coro: Awaitable[T]) -> T:
    from fogcoord.client import FogApiError

    async def main() -> T:
        return await coro

    try:
        return asyncio.run(main())
    except FogApiError as exc:
        err.print(f"[red]{exc.code}[/red] ({exc.status}): {exc.detail}")
        raise typer.Exit(1) from None
    except (OSError, httpx.TransportError) as exc:
        err.print(f"[red]cannot reach the coordinator:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="state directory")] = None,
) -> None:
    """Run the coordinator (API and services) until Ctrl-C."""
    from fogcoord.coordinator import Coordinator
    from fogcoord.serve import serve as run_server

    cfg = _config(config, host=host, port=port, data_dir=data_dir)

    async def ready(coord: Coordinator, bound_port: int) -> bool:
        url = f"http://{cfg.server.host}:{bound_port}"
        out.print(f"fogcoord serving on {url}  (API docs: {url}/docs)")
        key = coord.auth.bootstrap_key
        if key is not None:
            out.print("First operator API key, shown once; keep it (export FOGCOORD_API_KEY=...):")
            out.print(f"  {key.key}", highlight=False)
        sys.stdout.flush()
        return True

    code = asyncio.run(run_server(cfg, on_ready=ready))
    raise typer.Exit(code)


@app.command()
def demo(
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="state directory")] = None,
    exit_after: Annotated[
        bool, typer.Option("--exit/--no-exit", help="stop after the run instead of serving")
    ] = False,
    devices: Annotated[
        int | None, typer.Option(min=3, max=500, help="agents in the workforce [50; 12 small]")
    ] = None,
    cheaters: Annotated[
        int | None, typer.Option(min=0, help="agents that cheat [5; 2 small]")
    ] = None,
    small: Annotated[bool, typer.Option(help="a smaller image and fewer ranges")] = False,
) -> None:
    """Run the main job end to end: agents bid, compute, get checked and paid; then serve."""
    import tempfile
    from dataclasses import replace

    from fogcoord.demo import SMALL, DemoSize, run_demo

    base = SMALL if small else DemoSize()
    size = replace(
        base,
        devices=devices if devices is not None else base.devices,
        cheaters=cheaters if cheaters is not None else base.cheaters,
    )
    if size.cheaters >= size.devices:
        err.print("--cheaters must be fewer than --devices")
        raise typer.Exit(2)
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="fogcoord-demo-"))
    out.print(f"data directory: {data_dir}")
    cfg = _config(config, data_dir=data_dir, port=0)
    raise typer.Exit(asyncio.run(run_demo(cfg, out, serve_after=not exit_after, size=size)))


@app.command()
def services(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Show the service registry of a running coordinator."""
    from fogcoord.render import services_table

    out.print(services_table(_api(url, api_key, lambda fog: fog.services())))


@app.command()
def stats(
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    window: Annotated[float, typer.Option(min=1, help="seconds of history for the table")] = 3600,
) -> None:
    """The figures the dashboard shows: health, devices, jobs, market, ledger, alerts."""
    from fogcoord.client import FogClient

    async def fetch() -> tuple[Any, Any]:
        async with FogClient(url, api_key) as fog:
            overview = await fog.request("GET", "/v1/stats")
            windows = await fog.request("GET", "/v1/stats/windows", params={"seconds": window})
            return overview, windows

    overview, windows = _run(fetch())
    health = overview["health"]
    out.print(f"health: [bold]{health['state']}[/bold]", highlight=False)
    for reason in health["reasons"]:
        out.print(f"  {reason}", highlight=False)
    latest = overview["latest"]
    groups = ("devices", "jobs", "market", "ledger", "host", "process", "bus")
    for group in groups:
        rows = {k: v for k, v in sorted(latest.items()) if k.split(".")[0] == group}
        if not rows:
            continue
        table = Table(group, "now", f"mean {window:g}s", "p95", "max")
        for name, value in rows.items():
            s = windows["series"].get(name)
            table.add_row(
                name.removeprefix(group + "."),
                f"{value:,.4g}",
                f"{s['mean']:,.4g}" if s else "",
                f"{s['p95']:,.4g}" if s else "",
                f"{s['max']:,.4g}" if s else "",
            )
        out.print(table)
    alerts = overview["alerts"]
    if alerts:
        table = Table("alert", "group", "state", "value", "silenced")
        for a in alerts:
            table.add_row(
                str(a.get("name")),
                str(a.get("group")),
                str(a.get("state")),
                str(a.get("value")),
                str(a.get("silenced", False)),
            )
        out.print(table)
    else:
        out.print("no alerts")


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration as YAML (defaults, file, environment)."""
    out.print(_config(config).to_yaml(), highlight=False, markup=False)


@config_app.command("validate")
def config_validate(file: Annotated[Path, typer.Argument(help="YAML file to check")]) -> None:
    """Check a configuration file; exits non-zero listing every error."""
    try:
        parse_config(read_yaml(file))
    except ConfigError as exc:
        _config_errors(exc)
        raise typer.Exit(1) from None
    out.print(f"{file}: valid")


@keys_app.command("create")
def keys_create(
    kind: Annotated[str | None, typer.Option(help="operator, requester or device")] = None,
    name: Annotated[str | None, typer.Option(help="name of the new principal")] = None,
    principal: Annotated[str | None, typer.Option(help="add a key to this principal")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="limit to these scopes")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Create a principal and key (or a key for an existing principal); the key is shown once."""
    from fogcoord.auth.models import PrincipalKind, Scope
    from fogcoord.client import FogClient

    try:
        kind_v = PrincipalKind(kind) if kind else None
        scopes = [Scope(s) for s in scope] if scope else None
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

    async def create() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.create_key(
                kind=kind_v, name=name, principal_id=principal, scopes=scopes
            )

    issued = _run(create())
    out.print(f"principal {issued.principal.principal_id} ({issued.principal.kind.value})")
    out.print(f"key id    {issued.info.key_id}")
    out.print(f"key       {issued.key}   (shown once)", highlight=False)


@keys_app.command("list")
def keys_list(
    principal: Annotated[str | None, typer.Option(help="only this principal")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """List keys (ids and scopes; secrets are never stored)."""
    from fogcoord.client import FogClient

    async def fetch() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.list_keys(principal)

    table = Table("key id", "principal", "scopes", "revoked")
    for info in _run(fetch()):
        table.add_row(
            info.key_id,
            info.principal_id,
            ", ".join(s.value for s in info.scopes),
            "yes" if info.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="key id to revoke")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Revoke a key at once."""

    info = _api(url, api_key, lambda fog: fog.revoke_key(key_id))
    out.print(f"revoked {info.key_id}")


def _api(url: str | None, api_key: str | None, call: Callable[[Any], Awaitable[T]]) -> T:
    """One call on a running coordinator through the Python client (errors as ``_run``)."""
    from fogcoord.client import FogClient

    async def main() -> T:
        async with FogClient(url, api_key) as fog:
            return await call(fog)

    return _run(main())


def _run_checked(coro: Awaitable[T]) -> T:
    """``_run`` for wallet commands whose input the client validates before sending it."""
    from pydantic import ValidationError

    try:
        return _run(coro)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "input"
            err.print(f"[red]{field}: {error['msg']}[/red]", highlight=False)
        raise typer.Exit(2) from None


@wallet_app.command("create")
def wallet_create(
    wallet_id: Annotated[str | None, typer.Argument(help="default: your principal id")] = None,
    funding: Annotated[str | None, typer.Option(help="your wallet that tops this one up")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Create a wallet (granted the configured opening balance once)."""
    from fogcoord.client import FogClient

    async def create() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.create_wallet(wallet_id, funding_wallet=funding)

    info = _run_checked(create())
    out.print(f"wallet {info.wallet_id}: balance {info.balance} tokens")


@wallet_app.command("balance")
def wallet_balance(
    wallet_id: Annotated[str | None, typer.Argument(help="default: all your wallets")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Show balances (posted, and pending in/out)."""
    from fogcoord.client import FogClient

    async def fetch() -> Any:
        async with FogClient(url, api_key) as fog:
            return [await fog.wallet(wallet_id)] if wallet_id else await fog.wallets()

    table = Table("wallet", "owner", "balance", "pending out", "pending in", "funding")
    for w in _run(fetch()):
        table.add_row(
            w.wallet_id,
            w.owner,
            str(w.balance),
            str(w.pending_out),
            str(w.pending_in),
            w.funding_wallet or "",
        )
    out.print(table)


@wallet_app.command("history")
def wallet_history(
    wallet_id: Annotated[str, typer.Argument(help="wallet")],
    limit: Annotated[int, typer.Option(help="how many")] = 20,
    before: Annotated[str | None, typer.Option(help="page: transfers before this id")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Transfers of a wallet, newest first."""
    from fogcoord.client import FogClient

    async def fetch() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.history(wallet_id, limit=limit, before=before)

    table = Table("id", "kind", "from", "to", "amount", "block", "memo")
    for t in _run(fetch()):
        sign = "-" if t.from_wallet == wallet_id else "+"
        table.add_row(
            t.transaction_id,
            t.kind,
            t.from_wallet,
            t.to_wallet,
            f"{sign}{t.amount}",
            str(t.block),
            t.memo,
        )
    out.print(table)


@wallet_app.command("send")
def wallet_send(
    from_wallet: Annotated[str, typer.Argument(help="your wallet")],
    to_wallet: Annotated[str, typer.Argument(help="recipient wallet")],
    amount: Annotated[str, typer.Argument(help="tokens, up to 6 decimals")],
    transaction_id: Annotated[
        str | None, typer.Option("--id", help="idempotency id (default: random)")
    ] = None,
    memo: Annotated[str, typer.Option(help="note")] = "",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Pay another wallet; resending with the same --id never pays twice."""
    import uuid
    from decimal import Decimal, InvalidOperation

    from fogcoord.client import FogClient

    try:
        value = Decimal(amount)
    except InvalidOperation:
        err.print(f"[red]amount: not a number: {amount!r}[/red]")
        raise typer.Exit(2) from None
    tid = transaction_id or uuid.uuid4().hex

    async def send() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.send(tid, from_wallet, to_wallet, value, memo)

    result = _run_checked(send())
    out.print(f"{result.transaction_id}: {result.status.value} in block {result.block}")


@ledger_app.command("verify")
def ledger_verify(config: ConfigOpt = None) -> None:
    """Recompute every balance and the block hash chain from the stored ledger."""
    from fogcoord.storage.engine import create_engine
    from fogcoord.tokenomics.store import SqlLedgerStore
    from fogcoord.tokenomics.verify import verify_ledger

    cfg = _config(config)
    engine = create_engine(cfg.database_url())
    try:
        report = verify_ledger(SqlLedgerStore(engine))
    finally:
        engine.dispose()
    out.print(
        f"{report.accounts} accounts, {report.transfers} transfers, {report.block_count} blocks;"
        f" head {report.head_hash[:16]}"
    )
    if not report.ok:
        for problem in report.problems:
            err.print(f"[red]{problem}[/red]")
        raise typer.Exit(1)
    out.print("[green]ledger verified: balances, double entry and block chain agree[/green]")


def _decimal(option: str, value: str) -> Decimal:
    """``value`` as a Decimal, or exit 2 naming ``option`` (floats would lose micro-tokens)."""
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():
        err.print(f"[red]{option}: not a number: {value!r}[/red]", highlight=False)
        raise typer.Exit(2)
    return number


# --- jobs --------------------------------------------------------------------------------------

job_app = typer.Typer(help="Submit compute jobs and fetch their results.", no_args_is_help=True)
app.add_typer(job_app, name="job")


def _job_summary(view: Any) -> None:
    tasks = ", ".join(f"{n} {s}" for s, n in sorted(view.tasks.items()))
    out.print(f"job {view.job_id} ({view.name or 'unnamed'}): {view.state.value}", highlight=False)
    out.print(f"  tasks      {view.tasks_total} ({tasks})", highlight=False)
    out.print(f"  replicas   {view.replicas_run} run, {view.audits} audits", highlight=False)
    out.print(f"  verified   {view.fuel_verified / 1e9:.6f} GFLOP", highlight=False)
    price = view.clearing_price_per_gflop
    out.print(f"  price      {price if price is not None else '-'} per GFLOP", highlight=False)
    out.print(f"  cost       {view.cost_so_far} of {view.held} held", highlight=False)
    if view.cheaters:
        out.print(f"  cheaters   {', '.join(view.cheaters)}", highlight=False)
    if view.reason:
        out.print(f"  reason     {view.reason}", highlight=False)


@job_app.command("submit")
def job_submit(
    module: Annotated[Path, typer.Argument(help="a .wat or .wasm WASI module", exists=True)],
    inputs: Annotated[list[Path], typer.Argument(help="one file per task: its stdin", exists=True)],
    fuel: Annotated[int, typer.Option(min=1, help="fuel per task (1e9 fuel = 1 GFLOP)")],
    max_price: Annotated[str, typer.Option("--max-price", help="tokens per GFLOP, at most")],
    replication: Annotated[int, typer.Option(min=1, max=16)] = 2,
    deadline: Annotated[float, typer.Option(min=1, help="seconds")] = 3600.0,
    entry: Annotated[str, typer.Option(help="exported function to call")] = "_start",
    name: Annotated[str, typer.Option(help="a label for the job")] = "",
    slots: Annotated[
        int | None,
        typer.Option(min=1, help="devices to hire (default: tasks x replication, at most 32)"),
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Submit a job: one task per input file, run on devices, checked by replication."""
    import base64

    from fogcoord.contracts.jobs import JobSubmission

    raw = module.read_bytes()
    wat = module.suffix != ".wasm"
    body = JobSubmission(
        name=name or module.stem,
        module_wat=raw.decode() if wat else None,
        module_wasm_b64=None if wat else base64.b64encode(raw).decode(),
        inputs_b64=[base64.b64encode(p.read_bytes()).decode() for p in inputs],
        entry=entry,
        fuel_limit=fuel,
        replication=replication,
        max_price_per_gflop=_decimal("--max-price", max_price),
        deadline_seconds=deadline,
        slots=slots,
    )

    _job_summary(_api(url, api_key, lambda fog: fog.submit_job(body)))


@job_app.command("status")
def job_status(
    job_id: Annotated[str, typer.Argument(help="job id")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """A job's state, progress and cost."""

    _job_summary(_api(url, api_key, lambda fog: fog.job(job_id)))


@job_app.command("list")
def job_list(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """The caller's jobs, newest first."""
    from fogcoord.client import FogClient

    async def fetch() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.jobs()

    table = Table("job", "name", "state", "tasks", "verified", "cost")
    for j in _run(fetch()):
        table.add_row(
            j.job_id,
            j.name,
            j.state.value,
            str(j.tasks_total),
            str(j.tasks.get("verified", 0)),
            str(j.cost_so_far),
        )
    out.print(table)


@job_app.command("results")
def job_results(
    job_id: Annotated[str, typer.Argument(help="job id")],
    output: Annotated[Path, typer.Option("--output", "-o", help="zip file to write")] = Path(
        "results.zip"
    ),
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Download every verified output (and a manifest) as a zip archive."""
    from fogcoord.client import FogClient

    async def fetch() -> bytes:
        async with FogClient(url, api_key) as fog:
            return await fog.job_results(job_id)

    data = _run(fetch())
    output.write_bytes(data)
    out.print(f"{len(data):,} bytes written to {output}", highlight=False)


@job_app.command("cancel")
def job_cancel(
    job_id: Annotated[str, typer.Argument(help="job id")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Cancel a job: verified work is paid, everything else returns to the requester."""

    _job_summary(_api(url, api_key, lambda fog: fog.cancel_job(job_id)))


# --- studies -----------------------------------------------------------------------------------

study_app = typer.Typer(
    help="Federated studies: train a model across devices.", no_args_is_help=True
)
app.add_typer(study_app, name="study")


def _study_summary(view: Any) -> None:
    out.print(
        f"study {view.study_id} ({view.name or 'unnamed'}): {view.state.value}, round "
        f"{view.rounds_done} of {view.rounds}, {view.aggregation.value} aggregation",
        highlight=False,
    )
    out.print(
        f"  epsilon {view.epsilon_per_round:g} per round (delta {view.delta:g}); paid {view.paid}"
        f" of {view.held} held",
        highlight=False,
    )
    if view.history:
        table = Table(
            "round", "devices", "flagged", "accuracy", "noise sigma", "max epsilon", "paid"
        )
        for r in view.history:
            table.add_row(
                str(r.round),
                str(len(r.participants)),
                str(len(r.flagged)),
                f"{r.accuracy:.3f}" if r.accuracy is not None else "",
                f"{r.noise_sigma:.3f}",
                f"{r.epsilon_spent_max:.2f}",
                str(r.paid),
            )
        out.print(table)
    if view.reason:
        out.print(f"  reason: {view.reason}", highlight=False)


@study_app.command("create")
def study_create(
    trainer: Annotated[str, typer.Option(help="trainer plugin the devices run")] = "logreg",
    model: Annotated[
        Path | None,
        typer.Option(help=".npz of named arrays (default: the trainer's initial model)"),
    ] = None,
    trainer_config: Annotated[str, typer.Option("--trainer-config", help="JSON")] = "{}",
    rounds: Annotated[int, typer.Option(min=1)] = 10,
    clients: Annotated[int, typer.Option(min=2, help="clients per round")] = 20,
    clip: Annotated[float, typer.Option(min=1e-9, help="L2 clip of each update")] = 1.0,
    epsilon: Annotated[float, typer.Option(min=1e-9, help="per round")] = 4.0,
    aggregation: Annotated[str, typer.Option(help="robust, secure or grouped")] = "robust",
    method: Annotated[str, typer.Option(help="robust method")] = "multi_krum",
    payment: Annotated[str, typer.Option(help="tokens per participant per round")] = "0.01",
    name: Annotated[str, typer.Option()] = "",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Create a federated study; it runs round after round as devices are available."""
    import json

    import numpy as np
    from pydantic import ValidationError

    from fogcoord.contracts.studies import StudySpec, encode_model

    try:
        config = json.loads(trainer_config)
    except ValueError as exc:
        err.print(f"[red]--trainer-config: not JSON: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    if model is not None:
        with np.load(model, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    elif trainer == "logreg":
        from fogcoord.trainers.logreg import initial_model

        arrays = initial_model(config)
    else:
        err.print("[red]--model is needed for this trainer[/red]")
        raise typer.Exit(2)
    try:
        spec = StudySpec(
            name=name or trainer,
            model=encode_model(arrays),
            trainer=trainer,
            trainer_config=config,
            rounds=rounds,
            clients_per_round=clients,
            clip_norm=clip,
            epsilon=epsilon,
            aggregation=aggregation,
            robust_method=method,
            payment_per_round=_decimal("--payment", payment),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        err.print(f"[red]{where}: {first['msg']}[/red]", highlight=False)
        raise typer.Exit(2) from None

    _study_summary(_api(url, api_key, lambda fog: fog.create_study(spec)))


@study_app.command("status")
def study_status(
    study_id: Annotated[str, typer.Argument(help="study id")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """A study's rounds: devices, flagged updates, accuracy, noise, privacy spent, pay."""

    _study_summary(_api(url, api_key, lambda fog: fog.study(study_id)))


# --- onion routing -----------------------------------------------------------------------------

onion_app = typer.Typer(help="Use the onion network of relays.", no_args_is_help=True)
app.add_typer(onion_app, name="onion")


@app.command()
def relay(
    coordinator: CoordinatorOpt = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="the owner's key ($FOGCOORD_API_KEY)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on (an IP literal)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free port")] = 0,
    exit_relay: Annotated[bool, typer.Option("--exit", help="let circuits leave here")] = False,
    allow: Annotated[
        list[str] | None,
        typer.Option(help="exit rule NETWORK:LO-HI (repeatable; default loopback only)"),
    ] = None,
    bandwidth: Annotated[int, typer.Option(min=1, help="advertised, for path weighting")] = 1000,
    max_services: Annotated[
        int, typer.Option(min=1, help="hidden services this relay introduces at most")
    ] = 5,
) -> None:
    """Run an onion relay registered with the coordinator until Ctrl-C."""
    import os
    import signal

    from fogcoord.agent.relaying import RelayRunner
    from fogcoord.client import KEY_ENV

    url = _coordinator_url(coordinator)
    key = api_key or os.environ.get(KEY_ENV) or None

    async def main() -> None:
        runner = RelayRunner(
            url,
            key,
            host=host,
            port=port,
            exit_relay=exit_relay,
            exit_policy=allow,
            bandwidth=bandwidth,
            max_services_per_node=max_services,
        )
        await runner.start()
        r = runner.relay
        out.print(
            f"relay {r.identity.fingerprint} listening on {host}:{r.port}"
            + (" (exit)" if exit_relay else ""),
            highlight=False,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.stop()

    _run(main())


@onion_app.command("socks")
def onion_socks(
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="SOCKS5 port (0: any)")] = 9050,
    hops: Annotated[int, typer.Option(min=1, max=8)] = 3,
) -> None:
    """A local SOCKS5 proxy whose connections leave through onion circuits."""
    import signal

    from fogcoord.client import FogClient
    from fogcoord.onion.client import OnionClient
    from fogcoord.onion.directory import SignedConsensus
    from fogcoord.onion.socks import SocksServer

    async def main() -> None:
        async with FogClient(url, api_key) as fog:
            authority = (await fog.request("GET", "/v1/onion/authority"))["ed25519"]
            raw = await fog.request_bytes("GET", "/v1/onion/consensus")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(authority))
        consensus = SignedConsensus.from_json(raw).verify(key)
        client = OnionClient(consensus)
        server = SocksServer(client, "127.0.0.1", port, hops=hops)
        await server.start()
        out.print(
            f"SOCKS5 on 127.0.0.1:{server.port} through {len(consensus.relays)} relays "
            f"({hops}-hop circuits); consensus signed by {authority[:16]}...",
            highlight=False,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.stop()
            await client.close()

    _run(main())


# --- market ------------------------------------------------------------------------------------

market_app = typer.Typer(
    help="Quotes, reverse auctions and asks on a running coordinator.", no_args_is_help=True
)
app.add_typer(market_app, name="market")


def _clock(at: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _auction_table(view: Any) -> Table:
    table = Table("auction", "value")
    rows = [
        ("id", view.auction_id),
        ("status", view.status.value),
        ("requester", view.requester),
        ("job", view.job_id or ""),
        ("slots", str(view.slots)),
        ("GFLOP", f"{view.gflop:g}"),
        ("ceiling / GFLOP", str(view.max_price_per_gflop)),
        ("reserve / GFLOP", str(view.reserve_price_per_gflop)),
        ("increment", str(view.bid_increment)),
        ("quoted / GFLOP", str(view.quoted_price_per_gflop)),
        ("held", str(view.held)),
        ("asks", str(view.asks)),
        ("best ask", str(view.best_ask) if view.best_ask is not None else ""),
        ("closes", _clock(view.closes_at)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _print_result(result: Any) -> None:
    price = result.clearing_price_per_gflop
    out.print(f"auction {result.auction_id}: {result.status}", highlight=False)
    if result.winners:
        out.print(f"  winners         {', '.join(result.winners)}", highlight=False)
        out.print(f"  clearing price  {price} per GFLOP (every winner)", highlight=False)
    out.print(f"  captured        {result.captured}", highlight=False)
    out.print(f"  released        {result.released}", highlight=False)
    if result.reason:
        out.print(f"  reason          {result.reason}", highlight=False)


@market_app.command("quote")
def market_quote(
    gflop: Annotated[float, typer.Option("--gflop", help="work to price, GFLOP")],
    storage_gb: Annotated[float, typer.Option("--storage-gb", help="storage, GB")] = 0.0,
    network_bound: Annotated[
        bool, typer.Option("--network-bound", help="the work is network-bound")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Price some work; an auction may name the quote while it is valid."""
    from fogcoord.client import FogClient

    async def fetch() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.quote(gflop, storage_gb=storage_gb, network_bound=network_bound)

    q = _run_checked(fetch())
    table = Table("quote", q.quote_id)
    table.add_row("compute", str(q.compute_cost))
    table.add_row("network", str(q.network_cost))
    table.add_row("storage", str(q.storage_cost))
    table.add_row("market factor", f"{q.market_factor:.3f}")
    table.add_row("total", str(q.total))
    table.add_row("per GFLOP", str(q.price_per_gflop))
    table.add_row("valid until", _clock(q.expires_at))
    out.print(table)


@market_app.command("auctions")
def market_auctions(
    status: Annotated[str | None, typer.Option(help="open, settled, partial or failed")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 50,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Auctions, newest first."""
    from fogcoord.client import FogClient
    from fogcoord.contracts.marketplace import AuctionStatus

    try:
        wanted = AuctionStatus(status) if status else None
    except ValueError:
        err.print(f"[red]--status: one of {', '.join(s.value for s in AuctionStatus)}[/red]")
        raise typer.Exit(2) from None

    async def fetch() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.auctions(wanted, limit=limit)

    table = Table(
        "auction",
        "status",
        "slots",
        "GFLOP",
        "ceiling",
        "reserve",
        "asks",
        "best",
        "price",
        "closes",
    )
    for a in _run(fetch()):
        price = a.result.clearing_price_per_gflop if a.result is not None else None
        table.add_row(
            a.auction_id,
            a.status.value,
            str(a.slots),
            f"{a.gflop:g}",
            str(a.max_price_per_gflop),
            str(a.reserve_price_per_gflop),
            str(a.asks),
            str(a.best_ask) if a.best_ask is not None else "",
            str(price) if price is not None else "",
            _clock(a.closes_at),
        )
    out.print(table)


@market_app.command("auction")
def market_auction(
    auction_id: Annotated[str, typer.Argument(help="auction id")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """One auction, and its result once it has one."""

    view = _api(url, api_key, lambda fog: fog.auction(auction_id))
    out.print(_auction_table(view))
    if view.result is not None:
        _print_result(view.result)


@market_app.command("create")
def market_create(
    slots: Annotated[int, typer.Option("--slots", min=1, help="devices to buy")],
    gflop: Annotated[float, typer.Option("--gflop", help="work to buy, GFLOP")],
    max_price: Annotated[str, typer.Option("--max-price", help="ceiling, tokens per GFLOP")],
    duration: Annotated[
        float | None, typer.Option("--duration", help="minutes open (at most the configured)")
    ] = None,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="settle with fewer asks than slots")
    ] = False,
    job_id: Annotated[str | None, typer.Option("--job-id", help="the job it buys for")] = None,
    wallet: Annotated[str | None, typer.Option(help="your paying wallet")] = None,
    quote_id: Annotated[str | None, typer.Option("--quote", help="price from this quote")] = None,
    storage_gb: Annotated[float, typer.Option("--storage-gb", help="storage, GB")] = 0.0,
    network_bound: Annotated[
        bool, typer.Option("--network-bound", help="the work is network-bound")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Open a reverse auction; ceiling x work is held from your wallet until it settles."""
    from fogcoord.client import FogClient

    price = _decimal("--max-price", max_price)

    async def create() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.create_auction(
                slots,
                gflop,
                price,
                duration_minutes=duration,
                allow_partial=allow_partial,
                job_id=job_id,
                wallet=wallet,
                quote_id=quote_id,
                storage_gb=storage_gb,
                network_bound=network_bound,
            )

    view = _run_checked(create())
    out.print(
        f"auction {view.auction_id} opened: {view.slots} slots, {view.held} tokens held, "
        f"closes {_clock(view.closes_at)}",
        highlight=False,
    )


@market_app.command("bid")
def market_bid(
    auction_id: Annotated[str, typer.Argument(help="auction id")],
    provider: Annotated[str, typer.Option("--provider", help="device that would do the work")],
    price: Annotated[str, typer.Option("--price", help="ask, tokens per GFLOP")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Ask a price for a device (with its own key, its owner's or an operator's)."""
    from fogcoord.client import FogClient

    ask = _decimal("--price", price)

    async def bid() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.submit_bid(auction_id, provider, ask)

    placed = _run_checked(bid())
    out.print(
        f"ask accepted: {ask} per GFLOP for {provider}; {placed.asks} asks, "
        f"auction {placed.status.value}",
        highlight=False,
    )
    if placed.result is not None:
        _print_result(placed.result)


@market_app.command("asks")
def market_asks(
    auction_id: Annotated[str, typer.Argument(help="auction id")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """The asks in one of your auctions, best first."""
    from fogcoord.client import FogClient

    async def fetch() -> Any:
        async with FogClient(url, api_key) as fog:
            return await fog.asks(auction_id)

    table = Table("provider", "owner", "ask / GFLOP", "at")
    for a in _run(fetch()):
        table.add_row(a.provider, a.owner, str(a.price_per_gflop), _clock(a.submitted_at))
    out.print(table)


@market_app.command("settle")
def market_settle(
    auction_id: Annotated[str, typer.Argument(help="auction id")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Settle your auction now (with at least as many asks as slots, or a partial fill)."""

    _print_result(_api(url, api_key, lambda fog: fog.settle_auction(auction_id)))


@market_app.command("cancel")
def market_cancel(
    auction_id: Annotated[str, typer.Argument(help="auction id")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Withdraw your open auction; the whole hold goes back."""

    _print_result(_api(url, api_key, lambda fog: fog.cancel_auction(auction_id)))


@market_app.command("metrics")
def market_metrics(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Market volume, clearing prices, fill rate and revenue by role."""

    m = _api(url, api_key, lambda fog: fog.market_metrics())
    table = Table("market", "value")
    table.add_row("volume", str(m.volume))
    table.add_row("open auctions", str(m.open_auctions))
    table.add_row("settled / failed", f"{m.auctions_settled} / {m.auctions_failed}")
    last = m.last_clearing_price
    mean = m.mean_clearing_price
    table.add_row("last clearing price", str(last) if last is not None else "")
    table.add_row("mean clearing price", str(mean) if mean is not None else "")
    table.add_row("fill rate", f"{m.fill_rate:.1%}")
    table.add_row("supply / demand", f"{m.supply_demand_ratio:.2f}")
    table.add_row("market factor", f"{m.market_factor:.3f}")
    for role, amount in m.revenue_by_role.items():
        table.add_row(f"revenue: {role}", str(amount))
    out.print(table)


CoordinatorOpt = Annotated[
    str | None,
    typer.Option("--coordinator", "--url", help="coordinator URL (default: $FOGCOORD_URL)"),
]


def _agent_logging(level: int, fleet_level: int | None = None) -> None:
    """Agent logs go to stderr, one plain line each (an agent is a long-running daemon)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("fogcoord.agent")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    if fleet_level is not None:
        logging.getLogger("fogcoord.agent.fleet").setLevel(fleet_level)


def _coordinator_url(url: str | None) -> str:
    import os

    from fogcoord.client import DEFAULT_URL, URL_ENV

    return url or os.environ.get(URL_ENV) or DEFAULT_URL


@app.command()
def agent(
    coordinator: CoordinatorOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="the owner's API key, needed only to register (default: $FOGCOORD_API_KEY)",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="identity and measurements (default: $FOGCOORD_AGENT_DIR or ~/.fogcoord/agent)",
        ),
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between heartbeats")] = 10.0,
    region: Annotated[str, typer.Option(help="region label reported at registration")] = "",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every heartbeat")] = False,
    min_price: Annotated[
        str,
        typer.Option(
            "--min-price", help="never ask less per GFLOP in auctions (default 0: the reserve)"
        ),
    ] = "0",
    only_when_charging: Annotated[
        bool, typer.Option("--only-when-charging", help="bid only while plugged in")
    ] = False,
    no_bid: Annotated[bool, typer.Option("--no-bid", help="never bid in auctions")] = False,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="sandbox processes running tasks at once")
    ] = 1,
    relay_at: Annotated[
        str | None,
        typer.Option("--relay", help="also run an onion relay listening on HOST[:PORT]"),
    ] = None,
) -> None:
    """Offer this machine as a device: register, heartbeat, bid and run tasks until Ctrl-C."""
    import logging
    import os
    import signal

    from pydantic import ValidationError

    from fogcoord.agent.bidding import AskPolicy, AutoBidder
    from fogcoord.agent.runner import Agent, AgentError
    from fogcoord.client import KEY_ENV

    url = _coordinator_url(coordinator)
    owner_key = api_key or os.environ.get(KEY_ENV) or None
    try:
        policy = AskPolicy(
            min_price_per_gflop=_decimal("--min-price", min_price),
            only_when_charging=only_when_charging,
            enabled=not no_bid,
        )
    except ValidationError as exc:
        err.print(f"[red]--min-price: {exc.errors()[0]['msg']}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _agent_logging(logging.DEBUG if verbose else logging.INFO)

    async def main() -> None:
        from fogcoord.agent.tasks import TaskExecutor
        from fogcoord.agent.training import TrainingExecutor
        from fogcoord.compute.worker import WorkerPool

        device_agent = Agent(url, owner_key, state_dir, interval=interval, region=region)
        bidder = AutoBidder(device_agent, policy)
        pool = WorkerPool(workers)
        device_agent.on("task", TaskExecutor(lambda: device_agent.identity, pool))
        device_agent.on("study", TrainingExecutor(lambda: device_agent.identity))
        relay_runner = None
        if relay_at is not None:
            from fogcoord.agent.relaying import RelayRunner

            relay_host, _, relay_port = relay_at.partition(":")
            relay_runner = RelayRunner(
                url, owner_key, host=relay_host or "127.0.0.1", port=int(relay_port or 0)
            )
            await relay_runner.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, device_agent.stop)
        try:
            await device_agent.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await bidder.close()
            pool.close()
            if relay_runner is not None:
                await relay_runner.stop()
        err.print(f"agent stopped (device {device_agent.device_id}, channel closed)")

    try:
        _run(main())
    except (AgentError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def fleet(
    coordinator: CoordinatorOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="an operator key, to create owners ($FOGCOORD_API_KEY)"),
    ] = None,
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, help="how many")] = 100,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between heartbeats")] = 10.0,
    duration: Annotated[
        float | None, typer.Option(min=0.0, help="stop after this many seconds (default: Ctrl-C)")
    ] = None,
    seed: Annotated[int, typer.Option(help="same seed, same devices and traces")] = 0,
    report_json: Annotated[
        Path | None, typer.Option("--report-json", help="write the report here as JSON")
    ] = None,
    per_owner: Annotated[int, typer.Option(min=1, help="devices per owner principal")] = 10,
    concurrency: Annotated[int, typer.Option(min=1, help="registrations at a time")] = 100,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="simulated seconds per real second")
    ] = 1.0,
    after_startup: Annotated[
        bool,
        typer.Option(
            "--after-startup/--from-start",
            help="count --duration from when every device is online (default: from the start)",
        ),
    ] = False,
) -> None:
    """Simulate a fleet of devices in one process, each speaking the real agent protocol."""
    import json
    import logging
    import os
    import signal

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from fogcoord.agent.fleet import Fleet, FleetProgress, FleetReport, raise_open_file_limit
    from fogcoord.client import KEY_ENV

    url = _coordinator_url(coordinator)
    operator_key = api_key or os.environ.get(KEY_ENV)
    if not operator_key:
        err.print("[red]--api-key: an operator key is needed to create the owners[/red]")
        raise typer.Exit(2)
    _agent_logging(logging.ERROR, fleet_level=logging.WARNING)
    raise_open_file_limit(2 * devices + 512)
    progress = Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
    )
    registered_bar = progress.add_task("registered", total=devices, info="")
    online_bar = progress.add_task("online", total=devices, info="")

    def show(p: FleetProgress) -> None:
        progress.update(registered_bar, completed=p.registered, info=f"failed {p.failed}")
        progress.update(
            online_bar,
            completed=p.online,
            info=f"{p.heartbeats_per_second:,.0f} hb/s  p99 {p.p99_ms:.1f} ms  "
            f"errors {p.errors}  reconnects {p.reconnects}",
        )

    async def main() -> FleetReport:
        simulated = Fleet(
            url,
            operator_key,
            devices,
            interval=interval,
            seed=seed,
            devices_per_owner=per_owner,
            register_concurrency=concurrency,
            time_scale=time_scale,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            with progress:
                return await simulated.run(
                    duration=duration,
                    stop=stop,
                    on_progress=show,
                    duration_after_startup=after_startup,
                    freeze_gc_after_startup=True,
                )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    report = _run(main())
    data = report.to_json()
    table = Table("fleet", "value")
    for name in ("devices", "owners", "registered", "failed", "registration_rate", "heartbeats"):
        table.add_row(name, str(data[name]))
    table.add_row("heartbeats/s (steady)", str(data["heartbeats_per_second"]))
    table.add_row("errors", f"{report.errors} {report.error_kinds or ''}")
    table.add_row("reconnects", str(report.reconnects))
    lat = report.latency_ms
    table.add_row("latency ms", f"p50 {lat.p50}  p95 {lat.p95}  p99 {lat.p99}  max {lat.max}")
    steady = report.steady_latency_ms
    table.add_row("steady ms", f"p50 {steady.p50}  p95 {steady.p95}  p99 {steady.p99}")
    table.add_row("duration s", f"{report.duration:.1f}")
    out.print(table)
    if report_json is not None:
        report_json.parent.mkdir(parents=True, exist_ok=True)
        report_json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        out.print(f"report written to {report_json}")


def main() -> None:
    app()
