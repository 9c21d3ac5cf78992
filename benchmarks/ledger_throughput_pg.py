"""``ledger.throughput_pg``: the 64-payer payment figure on PostgreSQL (report only).

The workload and baseline of :mod:`benchmarks.ledger_throughput`, with the ledger in a fresh
schema of a local PostgreSQL (``FOGCOORD_BENCH_PG_URL`` or ``FOGCOORD_TEST_PG_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); the baseline gets a second schema. Both
schemas are dropped afterwards. Fewer payments than on SQLite to keep the run short. When the
server is unreachable the figure is an error row (the module itself does not fail).
"""

from __future__ import annotations

import os
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks._ledger import PAYERS, throughput
from benchmarks.harness import Figure, Unit, log
from fogcoord.storage.engine import create_engine, drop_schema

FIGURES = ("ledger.throughput_pg",)
UNIT: Unit = "/s"
TIMEOUT_S = 90.0

PER_PAYER = 200
WARMUP_PER_PAYER = 30
BASELINE_PAYMENTS = 1_000
SEQUENTIAL_PAYMENTS = 200


def pg_url() -> str:
    return (
        os.environ.get("FOGCOORD_BENCH_PG_URL")
        or os.environ.get("FOGCOORD_TEST_PG_URL")
        or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )


def _reachable(url: str) -> str | None:
    """None when a connection opens, else why not."""
    probe = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with probe.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        why = " ".join(str(exc.orig).split())
        return f"PostgreSQL unreachable at {probe.url.render_as_string()}: {why}"
    finally:
        probe.dispose()
    return None


async def run() -> list[Figure]:
    url = pg_url()
    unreachable = _reachable(url)
    if unreachable is not None:
        log(f"  {unreachable}")
        return [Figure.failed("ledger.throughput_pg", UNIT, unreachable)]
    schema = f"bench_ledger_{uuid.uuid4().hex[:12]}"
    schemas = (schema, f"{schema}_base")
    engines: list[Engine] = []
    try:
        engines = [create_engine(url, schema=s) for s in schemas]
        result = await throughput(
            engines[0],
            engines[1],
            per_payer=PER_PAYER,
            warmup_per_payer=WARMUP_PER_PAYER,
            baseline_payments=BASELINE_PAYMENTS,
            sequential_payments=SEQUENTIAL_PAYMENTS,
        )
    finally:
        for engine in engines:
            engine.dispose()
        for s in schemas:
            drop_schema(url, s)
    log(f"  {PAYERS} payers: {result.run.describe()}")
    log(
        f"  one payment per transaction (store): {result.baseline_rate:,.0f}/s; "
        f"service with 1 sequential payer: {result.sequential_rate:,.0f}/s"
    )
    return [Figure("ledger.throughput_pg", result.run.rate, UNIT, baseline=result.baseline_rate)]
