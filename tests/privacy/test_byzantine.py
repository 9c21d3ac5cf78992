"""Byzantine detection of compute results, and the privacy methods that are not built yet."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from fogcoord.config import PrivacyConfig
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.privacy import (
    ByzantineFlagged,
    ParticipantData,
)
from fogcoord.privacy.service import FogPrivacyService
from fogcoord.storage.engine import create_engine

A, B, C = "a" * 64, "b" * 64, "c" * 64


class Published:
    def __init__(self) -> None:
        self.events: list[ServiceEvent] = []

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def privacy(published: Published) -> FogPrivacyService:
    return FogPrivacyService(PrivacyConfig(), _memory_engine, publish=published)


def result(who: str, output: str, fuel: int, task: str = "t1") -> ParticipantData:
    return ParticipantData(participant_id=who, task_id=task, output_hash=output, fuel_used=fuel)


async def test_the_dissenters_from_the_plurality_are_flagged(privacy: FogPrivacyService) -> None:
    data = [
        result("d1", A, 100),
        result("d2", A, 100),
        result("d3", A, 100),
        result("liar", B, 100),
        result("greedy", A, 150),
    ]
    assert await privacy.detect_byzantine_behavior(data) == ["greedy", "liar"]


async def test_a_plurality_that_is_not_a_majority_still_decides(
    privacy: FogPrivacyService,
) -> None:
    data = [result("d1", A, 1), result("d2", A, 1), result("x", B, 1), result("y", C, 1)]
    assert await privacy.detect_byzantine_behavior(data) == ["x", "y"]


async def test_a_tie_flags_nobody(privacy: FogPrivacyService) -> None:
    assert await privacy.detect_byzantine_behavior([result("d1", A, 1), result("d2", B, 1)]) == []
    tie = [result("d1", A, 1), result("d2", A, 1), result("d3", B, 1), result("d4", B, 1)]
    assert await privacy.detect_byzantine_behavior(tie) == []
    # a tie in one task does not hide a dissenter in another
    other = [result("d5", C, 1, "t2"), result("d6", C, 1, "t2"), result("d7", A, 1, "t2")]
    assert await privacy.detect_byzantine_behavior(tie + other) == ["d7"]


async def test_a_lone_result_or_no_compute_result_flags_nobody(
    privacy: FogPrivacyService,
) -> None:
    assert await privacy.detect_byzantine_behavior([result("d1", A, 1)]) == []
    assert await privacy.detect_byzantine_behavior([]) == []
    bare = ParticipantData(participant_id="d9", task_id="t1")
    assert await privacy.detect_byzantine_behavior([result("d1", A, 1), bare]) == []


async def test_the_reason_says_whether_output_fuel_or_both_disagree(
    privacy: FogPrivacyService, published: Published
) -> None:
    data = [
        result("d1", A, 100),
        result("d2", A, 100),
        result("d3", A, 100),
        result("out", B, 100),
        result("fuel", A, 130),
        result("both", C, 130),
    ]
    flags = {f.participant_id: f for f in await privacy.explain_byzantine(data)}
    assert sorted(flags) == ["both", "fuel", "out"]
    assert all(f.task_id == "t1" for f in flags.values())
    assert "output" in flags["out"].reason
    assert "fuel" not in flags["out"].reason
    assert "fuel 130 vs 100" in flags["fuel"].reason
    assert "output" not in flags["fuel"].reason
    assert "output and fuel" in flags["both"].reason
    assert privacy.flagged == 3
    await _settle()
    events = [e for e in published.events if isinstance(e, ByzantineFlagged)]
    assert sorted(e.participant_id for e in events) == ["both", "fuel", "out"]


results = st.lists(
    st.tuples(st.sampled_from([A, B, C]), st.sampled_from([1, 2])), min_size=1, max_size=9
)


@given(results)
async def test_flags_are_exactly_the_results_outside_a_strict_plurality(
    rs: list[tuple[str, int]],
) -> None:
    privacy = FogPrivacyService(PrivacyConfig(), _memory_engine)
    data = [result(f"p{i}", out, fuel) for i, (out, fuel) in enumerate(rs)]
    counts = Counter(rs)
    ranked = counts.most_common()
    flagged = set(await privacy.detect_byzantine_behavior(data))
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        assert flagged == set()
    else:
        assert flagged == {f"p{i}" for i, r in enumerate(rs) if r != ranked[0][0]}


async def test_a_poisoned_model_update_is_flagged(privacy: FogPrivacyService) -> None:
    rng = np.random.default_rng(3)
    honest = rng.normal(1.0, 0.1, size=(9, 50))
    data = [ParticipantData(participant_id=f"p{i}", update=u) for i, u in enumerate(honest)]
    data.append(ParticipantData(participant_id="bad", update=-10 * honest[0]))
    assert await privacy.detect_byzantine_behavior(data) == ["bad"]


def _memory_engine() -> Engine:
    return create_engine("sqlite://")


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)
