"""Dependency levels: Kahn's algorithm, missing dependencies and cycles named."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogcoord.contracts.errors import DependencyError
from fogcoord.orchestration.graph import find_cycle, start_levels


def level_of(levels: list[list[str]]) -> dict[str, int]:
    return {name: i for i, level in enumerate(levels) for name in level}


def test_empty_graph_has_no_levels() -> None:
    assert start_levels({}) == []


def test_levels_respect_dependencies() -> None:
    levels = start_levels(
        {
            "orchestration": [],
            "stats": ["orchestration"],
            "tokenomics": ["stats"],
            "marketplace": ["tokenomics", "stats"],
        }
    )
    assert levels == [["orchestration"], ["stats"], ["tokenomics"], ["marketplace"]]


def test_independent_services_share_a_level() -> None:
    levels = start_levels(
        {
            "base": [],
            "harvesting": ["base"],
            "privacy": ["base"],
            "stats": [],
            "marketplace": ["harvesting", "privacy"],
        }
    )
    assert levels == [["base", "stats"], ["harvesting", "privacy"], ["marketplace"]]


def test_levels_are_sorted_and_deterministic() -> None:
    deps: dict[str, list[str]] = {"c": [], "a": [], "b": []}
    assert start_levels(deps) == [["a", "b", "c"]]
    assert start_levels(dict(reversed(list(deps.items())))) == [["a", "b", "c"]]


def test_duplicate_dependency_is_harmless() -> None:
    assert start_levels({"a": [], "b": ["a", "a"]}) == [["a"], ["b"]]


def test_missing_dependency_names_service_and_missing() -> None:
    with pytest.raises(DependencyError) as info:
        start_levels({"marketplace": ["tokenomics"], "stats": []})
    err = info.value
    assert "'marketplace'" in err.message
    assert "'tokenomics'" in err.message
    assert err.fields == {"service": "marketplace", "missing": "tokenomics"}
    assert err.code == "dependency_error"


def test_cycle_is_named_in_message_and_fields() -> None:
    with pytest.raises(DependencyError) as info:
        start_levels({"a": ["b"], "b": ["c"], "c": ["a"]})
    err = info.value
    assert err.fields["cycle"] == ["a", "b", "c", "a"]
    assert "a -> b -> c -> a" in err.message
    assert "cycle" in err.message


def test_cycle_behind_healthy_services_names_only_the_cycle() -> None:
    with pytest.raises(DependencyError) as info:
        start_levels(
            {
                "root": [],
                "x": ["root", "z"],
                "y": ["x"],
                "z": ["y"],
                "leaf": ["x"],
            }
        )
    cycle = info.value.fields["cycle"]
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"x", "y", "z"}
    assert len(cycle) == 4
    assert " -> ".join(cycle) in info.value.message


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(DependencyError) as info:
        start_levels({"a": ["a"], "b": []})
    assert info.value.fields["cycle"] == ["a", "a"]
    assert "a -> a" in info.value.message


def test_two_node_cycle() -> None:
    with pytest.raises(DependencyError) as info:
        start_levels({"p": ["q"], "q": ["p"]})
    assert info.value.fields["cycle"] == ["p", "q", "p"]


def test_find_cycle_follows_edges() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random DAG: each service may depend only on services with a smaller index."""
    n = draw(st.integers(min_value=0, max_value=12))
    names = [f"s{i}" for i in range(n)]
    graph: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        graph[name] = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
    order = draw(st.permutations(names))
    return {name: graph[name] for name in order}


@given(dags())
def test_random_dags_level_correctly(graph: dict[str, list[str]]) -> None:
    levels = start_levels(graph)
    flat = [name for level in levels for name in level]
    assert sorted(flat) == sorted(graph)
    assert len(flat) == len(set(flat))
    assert all(level for level in levels)
    where = level_of(levels)
    for name, deps in graph.items():
        for dep in deps:
            assert where[dep] < where[name]
        # Kahn's levels are tight: a service sits right after its deepest dependency.
        assert where[name] == (max(where[d] for d in deps) + 1 if deps else 0)


@given(dags(), st.data())
def test_random_graphs_with_a_back_edge_report_a_real_cycle(
    graph: dict[str, list[str]], data: st.DataObject
) -> None:
    names = sorted(graph, key=lambda s: int(s[1:]))
    if len(names) < 1:
        return
    hi = data.draw(st.integers(min_value=0, max_value=len(names) - 1))
    lo = data.draw(st.integers(min_value=0, max_value=hi))
    # Make s_lo depend on s_hi; combined with a path s_hi -> ... -> s_lo this is a cycle.
    # Ensure a path exists by chaining hi -> hi-1 -> ... -> lo.
    cyclic = {k: list(v) for k, v in graph.items()}
    for i in range(lo + 1, hi + 1):
        if names[i - 1] not in cyclic[names[i]]:
            cyclic[names[i]].append(names[i - 1])
    cyclic[names[lo]].append(names[hi])
    with pytest.raises(DependencyError) as info:
        start_levels(cyclic)
    cycle = info.value.fields["cycle"]
    assert cycle[0] == cycle[-1]
    assert len(cycle) - 1 == len(set(cycle))
    for a, b in itertools.pairwise(cycle):
        assert b in cyclic[a]
