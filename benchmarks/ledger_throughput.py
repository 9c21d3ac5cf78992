"""``ledger.throughput`` and ``ledger.payment_latency``: durable payments on SQLite.

The user path: ``FogTokenomicsService.process_payment`` on a fresh SQLite file in a temporary
directory (WAL, the default ``synchronous=FULL``: a payment is answered only once its block is on
disk). 1,000 wallets; 64 payers, each an asyncio task awaiting ``process_payment`` in a loop
(unique ids, random payee, realistic amounts), 64 x 500 payments after a 64 x 50 warm-up.
Throughput counts only payments answered committed (or confirmed), over the wall time of the
run; latency is every call's ``perf_counter`` time in that same run.

Baseline, same run: the same payments each committed in its own database transaction, i.e.
without group commit. We build every payment's block with the real state machine
(``LedgerState.begin`` / ``submit`` of the two linked legs / ``finish``) and write it with the
real ``SqlLedgerStore.write``, strictly one after another, on a second fresh SQLite file with the
same settings. This is the closest match to "the same transfers committed one per transaction":
it pays exactly one commit per payment and none of the service's overhead, so the ratio credits
group commit with nothing it did not earn. (Running the service with one sequential payer also
commits one payment per block; its rate is logged for context.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks._ledger import PAYERS, throughput
from benchmarks.harness import Figure, Unit, log, percentile
from fogcoord.storage.engine import create_engine

FIGURES = (
    "ledger.throughput",
    "ledger.payment_latency.p50",
    "ledger.payment_latency.p95",
    "ledger.payment_latency.p99",
)
UNITS: dict[str, Unit] = {
    "ledger.throughput": "/s",
    "ledger.payment_latency.p50": "ms",
    "ledger.payment_latency.p95": "ms",
    "ledger.payment_latency.p99": "ms",
}
TIMEOUT_S = 90.0

PER_PAYER = 500
WARMUP_PER_PAYER = 50
BASELINE_PAYMENTS = 2_000
SEQUENTIAL_PAYMENTS = 300
THROUGHPUT_TARGET = 20_000.0
RATIO_TARGET = 6.0
P99_TARGET_MS = 10.0


async def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-ledger-") as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        baseline_engine = create_engine(f"sqlite:///{Path(tmp) / 'baseline.db'}")
        try:
            result = await throughput(
                engine,
                baseline_engine,
                per_payer=PER_PAYER,
                warmup_per_payer=WARMUP_PER_PAYER,
                baseline_payments=BASELINE_PAYMENTS,
                sequential_payments=SEQUENTIAL_PAYMENTS,
            )
        finally:
            engine.dispose()
            baseline_engine.dispose()
    pay = result.run
    log(f"  {PAYERS} payers: {pay.describe()}")
    log(
        f"  one payment per transaction (store): {result.baseline_rate:,.0f}/s; "
        f"service with 1 sequential payer: {result.sequential_rate:,.0f}/s"
    )
    lat = pay.latencies_ms
    return [
        Figure(
            "ledger.throughput",
            pay.rate,
            "/s",
            baseline=result.baseline_rate,
            target=THROUGHPUT_TARGET,
            op=">=",
            ratio_target=RATIO_TARGET,
            ratio_op=">=",
        ),
        Figure("ledger.payment_latency.p50", percentile(lat, 50), "ms"),
        Figure("ledger.payment_latency.p95", percentile(lat, 95), "ms"),
        Figure(
            "ledger.payment_latency.p99",
            percentile(lat, 99),
            "ms",
            target=P99_TARGET_MS,
            op="<",
        ),
    ]
