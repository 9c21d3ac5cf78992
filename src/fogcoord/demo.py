"""``fogcoord demo``: the embedded coordinator, end to end over its real HTTP API.

Today it is a smoke run: start the coordinator on a free loopback port, ask it over HTTP for its
liveness, readiness and service registry with the first operator key, print them, and stop
(or keep serving with ``--no-exit``). The compute-job demo builds on this.
"""

from __future__ import annotations

from rich.console import Console

from fogcoord.client import FogClient
from fogcoord.config import FogConfig
from fogcoord.coordinator import Coordinator
from fogcoord.render import services_table
from fogcoord.serve import serve


async def run_demo(config: FogConfig, console: Console, *, serve_after: bool = False) -> int:
    """Run the smoke demo; the exit code is 0 only when every service was ready."""
    ready_seen: list[bool] = []

    async def on_ready(coord: Coordinator, port: int) -> bool:
        ready_seen.append(await _show(coord, port, console))
        if serve_after:
            console.print(f"serving http://127.0.0.1:{port} until Ctrl-C (docs at /docs)")
        return serve_after

    code = await serve(config, on_ready=on_ready)
    return code or (0 if ready_seen and all(ready_seen) else 1)


async def _show(coord: Coordinator, port: int, console: Console) -> bool:
    url = f"http://127.0.0.1:{port}"
    bootstrap = coord.auth.bootstrap_key
    key = bootstrap.key if bootstrap else coord.config.server.operator_key
    async with FogClient(url, key) as fog:
        live = await fog.healthz()
        ready = await fog.readyz()
        view = await fog.services() if key else None
        who = await fog.whoami() if key else None
    console.print(f"[bold]fogcoord {live.version}[/bold] on {url}: liveness {live.status}")
    console.print(f"readiness: {'ready' if ready.ready else 'NOT ready'}")
    for name, status in ready.services.items():
        console.print(f"  {name}: {status.state.value} ({status.reason})")
    if who is not None:
        console.print(f"authenticated as {who.principal.kind.value} {who.principal.principal_id}")
    if view is not None:
        console.print(services_table(view))
    else:
        console.print("no operator key on this data directory: set server.operator_key")
    if key:
        await _ledger_tour(url, key, console)
    if bootstrap is not None:
        console.print(f"first operator key (shown once): {bootstrap.key}", highlight=False)
    return ready.ready


async def _ledger_tour(url: str, operator_key: str, console: Console) -> None:
    """Two requesters open wallets and pay each other over the API; the ledger is checked."""
    from fogcoord.auth.models import PrincipalKind

    async with FogClient(url, operator_key) as admin:
        alice_key = await admin.create_key(kind=PrincipalKind.REQUESTER, name="alice")
        bob_key = await admin.create_key(kind=PrincipalKind.REQUESTER, name="bob")
    async with FogClient(url, alice_key.key) as alice, FogClient(url, bob_key.key) as bob:
        a = await alice.create_wallet()
        b = await bob.create_wallet()
        paid = await alice.send("demo-payment-1", a.wallet_id, b.wallet_id, "2.5", "demo")
        again = await alice.send("demo-payment-1", a.wallet_id, b.wallet_id, "2.5", "demo")
        a, b = await alice.wallet(a.wallet_id), await bob.wallet(b.wallet_id)
        head = await alice.ledger()
    console.print(
        f"ledger: alice paid bob 2.5 tokens ({paid.status.value} in block {paid.block}); "
        f"resending the same id: {again.status.value}"
    )
    console.print(f"  alice {a.balance} tokens, bob {b.balance} tokens; head block {head.block}")
