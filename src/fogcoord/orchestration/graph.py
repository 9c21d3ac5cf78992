"""Dependency ordering of services: Kahn's algorithm in levels, with cycles named."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fogcoord.contracts.errors import DependencyError


def start_levels(dependencies: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Services grouped into levels; each level depends only on earlier ones.

    Services inside one level are independent and may start concurrently. Raises
    :class:`DependencyError` naming a missing dependency or the services that form a cycle.
    """
    for service, deps in dependencies.items():
        for dep in deps:
            if dep not in dependencies:
                raise DependencyError(
                    f"service {service!r} depends on {dep!r}, which is not registered",
                    service=service,
                    missing=dep,
                )
    remaining = {s: set(d) for s, d in dependencies.items()}
    levels: list[list[str]] = []
    while remaining:
        ready = sorted(s for s, deps in remaining.items() if not deps)
        if not ready:
            cycle = find_cycle(remaining)
            raise DependencyError("dependency cycle: " + " -> ".join(cycle), cycle=cycle)
        levels.append(ready)
        for s in ready:
            del remaining[s]
        for pending in remaining.values():
            pending.difference_update(ready)
    return levels


def find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    """One cycle in ``graph`` (every node has an out-edge), first node repeated at the end."""
    node = min(graph)
    seen: dict[str, int] = {}
    path: list[str] = []
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(graph[node])
    return [*path[seen[node] :], node]
