"""``ledger.verify_balance``: ``await svc.verify_balance(wallet, 1.0)`` on a 10,000-wallet ledger.

The service on a fresh SQLite file (as in :mod:`benchmarks.ledger_throughput`) with 10,000
wallets opened through ``initialize_wallet``; 100,000 calls on randomly chosen wallets, each timed
with ``perf_counter_ns``. Baseline, same run and wallets: a bare dict lookup plus an integer
comparison (``balances[wallet] >= need``), timed the same way. Service and baseline alternate in
blocks so drift in machine load affects both alike.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from time import perf_counter_ns

from benchmarks._ledger import ledger_config, open_wallets, running_service, wallet_ids
from benchmarks.harness import Figure, Unit, log, percentile_figures
from fogcoord.storage.engine import create_engine

FIGURES = ("ledger.verify_balance.p50", "ledger.verify_balance.p99")
UNIT: Unit = "us"
TIMEOUT_S = 60.0

WALLETS = 10_000
CALLS = 100_000
WARMUP = 5_000
BLOCKS = 10
AMOUNT = 1.0
AMOUNT_MICRO = 1_000_000
P99_TARGET_US = 100.0


async def run() -> list[Figure]:
    wallets = wallet_ids(WALLETS)
    rng = random.Random(11)
    picks = [rng.choice(wallets) for _ in range(WARMUP + CALLS)]
    service_ns: list[int] = []
    dict_ns: list[int] = []
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-ledger-") as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        try:
            async with running_service(engine, ledger_config()) as svc:
                await open_wallets(svc, wallets)
                balances = {w: svc.ledger.available(w) or 0 for w in wallets}
                verify = svc.verify_balance
                refused = 0
                for w in picks[:WARMUP]:
                    await verify(w, AMOUNT)
                block = CALLS // BLOCKS
                measured = picks[WARMUP:]
                for start in range(0, CALLS, block):
                    chunk = measured[start : start + block]
                    for w in chunk:
                        t0 = perf_counter_ns()
                        ok = await verify(w, AMOUNT)
                        service_ns.append(perf_counter_ns() - t0)
                        refused += not ok
                    for w in chunk:
                        t0 = perf_counter_ns()
                        ok = balances[w] >= AMOUNT_MICRO
                        dict_ns.append(perf_counter_ns() - t0)
                        refused += not ok
                if refused:
                    raise RuntimeError(f"{refused} balance checks said no; every wallet is funded")
        finally:
            engine.dispose()
    service_mean = sum(service_ns) / CALLS / 1e3
    dict_mean = sum(dict_ns) / CALLS / 1e3
    log(
        f"  {CALLS} calls on {WALLETS} wallets: "
        f"service mean {service_mean:.2f} us, dict mean {dict_mean:.3f} us"
    )
    return percentile_figures(
        "ledger.verify_balance",
        [ns / 1000.0 for ns in service_ns],
        [ns / 1000.0 for ns in dict_ns],
        UNIT,
        p99_target=P99_TARGET_US,
    )
