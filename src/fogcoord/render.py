"""Terminal pictures of API answers (rich tables)."""

from __future__ import annotations

from rich.table import Table

from fogcoord.api.schemas import ServicesView

_COLOUR = {"passing": "green", "warning": "yellow", "critical": "red"}


def services_table(view: ServicesView) -> Table:
    table = Table(
        "service",
        "state",
        "health",
        "breaker",
        "depends on",
        "requests",
        "errors",
        title=f"orchestration: {view.orchestration.state.value} "
        f"(started in {view.startup_seconds * 1000:.1f} ms)",
    )
    for s in view.services:
        health = s.health.state.value if s.health else "unknown"
        colour = _COLOUR.get(health, "white")
        reason = f" ({s.health.reason})" if s.health and s.health.reason else ""
        table.add_row(
            s.service_id,
            s.state.value,
            f"[{colour}]{health}[/{colour}]{reason}",
            s.breaker.value,
            ", ".join(s.dependencies) or "-",
            str(s.stats.requests if s.stats else 0),
            str(s.stats.errors if s.stats else 0),
        )
    return table
