"""The figure modules ``python -m benchmarks`` runs, in order.

To add a figure family, write ``benchmarks/<family>.py`` with ``FIGURES``, ``UNIT`` (or
``UNITS``) and ``run()``, and append its module name here. Modules are imported only to read
their declarations; nothing heavy may happen at import time.
"""

from __future__ import annotations

MODULES: tuple[str, ...] = (
    "benchmarks.bus_latency",
    "benchmarks.bus_throughput",
    "benchmarks.nats_latency",
    "benchmarks.orchestration_lifecycle",
    "benchmarks.orchestration_rss",
    "benchmarks.serve_rss",
    "benchmarks.ledger_throughput",
    "benchmarks.ledger_throughput_pg",
    "benchmarks.ledger_reads",
    "benchmarks.ledger_rewards",
    "benchmarks.harvesting",
    "benchmarks.harvesting_fleet",
    "benchmarks.market",
    "benchmarks.compute_fuel",
    "benchmarks.jobs_pipeline",
    "benchmarks.jobs_audit",
    "benchmarks.stats_storage",
    "benchmarks.stats_dashboard",
    "benchmarks.stats_collect",
    "benchmarks.privacy_dp",
    "benchmarks.privacy_secagg",
    "benchmarks.privacy_krum",
    "benchmarks.onion_circuit",
    "benchmarks.onion_hidden",
)
