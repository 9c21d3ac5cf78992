"""Alert engine: the rule state machine, grouping, repeats and silences, on a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.clock import FakeClock
from fogcoord.config import AlertingConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.events import from_wire
from fogcoord.contracts.stats import AlertConfig, AlertState, AlertTransition, Comparison
from fogcoord.stats.alerts import AlertEngine, Notification

INACTIVE, PENDING, FIRING, RESOLVED = (
    AlertState.INACTIVE,
    AlertState.PENDING,
    AlertState.FIRING,
    AlertState.RESOLVED,
)
REPEAT = 900.0


def rule(
    name: str = "cpu_high",
    *,
    series: str = "cpu",
    comparison: Comparison = Comparison.GT,
    threshold: float = 80.0,
    for_seconds: float = 0.0,
    group: str = "default",
    summary: str = "",
) -> AlertConfig:
    return AlertConfig(
        name=name,
        series=series,
        comparison=comparison,
        threshold=threshold,
        for_seconds=for_seconds,
        group=group,
        summary=summary,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> AlertEngine:
    return AlertEngine(clock, REPEAT)


def moves(transitions: list[AlertTransition]) -> list[tuple[str, AlertState, AlertState]]:
    return [(t.rule, t.state_from, t.state_to) for t in transitions]


def step(
    engine: AlertEngine, clock: FakeClock, seconds: float, values: dict[str, float]
) -> list[tuple[str, AlertState, AlertState]]:
    clock.advance(seconds)
    return moves(engine.evaluate(values))


def names(note: Notification) -> tuple[list[str], list[str]]:
    return [a.name for a in note.firing], [a.name for a in note.resolved]


# --- the state machine ----------------------------------------------------------------------


def test_without_for_duration_an_alert_fires_at_once_then_resolves_then_goes_inactive(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    assert step(engine, clock, 0, {"cpu": 50}) == []
    assert step(engine, clock, 10, {"cpu": 95}) == [("cpu_high", INACTIVE, FIRING)]
    assert step(engine, clock, 10, {"cpu": 96}) == []
    assert step(engine, clock, 10, {"cpu": 40}) == [("cpu_high", FIRING, RESOLVED)]
    assert step(engine, clock, 10, {"cpu": 40}) == [("cpu_high", RESOLVED, INACTIVE)]
    assert step(engine, clock, 10, {"cpu": 40}) == []
    assert engine.get("cpu_high").state is INACTIVE


def test_a_for_duration_holds_the_alert_pending_until_it_has_elapsed(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule(for_seconds=60))
    start = clock.time()
    assert step(engine, clock, 0, {"cpu": 90}) == [("cpu_high", INACTIVE, PENDING)]
    assert engine.get("cpu_high").active_since == start
    assert step(engine, clock, 30, {"cpu": 91}) == []
    assert step(engine, clock, 29.5, {"cpu": 92}) == []
    assert engine.get("cpu_high").state is PENDING
    [fired] = engine.evaluate({"cpu": 93}, start + 60)
    assert (fired.state_from, fired.state_to) == (PENDING, FIRING)
    assert fired.value == 93
    assert fired.threshold == 80
    assert fired.series == "cpu"
    assert fired.group == "default"
    assert fired.at == fired.timestamp == start + 60
    assert fired.source == "stats"


def test_pending_that_clears_before_the_duration_goes_back_to_inactive(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule(for_seconds=60))
    assert step(engine, clock, 0, {"cpu": 90}) == [("cpu_high", INACTIVE, PENDING)]
    assert step(engine, clock, 50, {"cpu": 10}) == [("cpu_high", PENDING, INACTIVE)]
    assert engine.get("cpu_high").active_since is None


def test_flapping_restarts_the_for_duration_each_time(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule(for_seconds=60))
    seen = []
    for _ in range(5):  # true for 40 s, false once: never long enough to fire
        seen += step(engine, clock, 20, {"cpu": 90})
        seen += step(engine, clock, 20, {"cpu": 90})
        seen += step(engine, clock, 20, {"cpu": 90})
        seen += step(engine, clock, 20, {"cpu": 10})
    assert ("cpu_high", PENDING, FIRING) not in seen
    assert seen.count(("cpu_high", INACTIVE, PENDING)) == 5
    assert seen.count(("cpu_high", PENDING, INACTIVE)) == 5
    # Holding long enough after the flapping does fire.
    assert step(engine, clock, 20, {"cpu": 90}) == [("cpu_high", INACTIVE, PENDING)]
    assert step(engine, clock, 60, {"cpu": 90}) == [("cpu_high", PENDING, FIRING)]


def test_resolved_goes_back_to_pending_when_the_condition_returns(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule(for_seconds=30))
    step(engine, clock, 0, {"cpu": 90})
    assert step(engine, clock, 30, {"cpu": 90}) == [("cpu_high", PENDING, FIRING)]
    assert step(engine, clock, 10, {"cpu": 10}) == [("cpu_high", FIRING, RESOLVED)]
    assert step(engine, clock, 10, {"cpu": 90}) == [("cpu_high", RESOLVED, PENDING)]
    assert step(engine, clock, 30, {"cpu": 90}) == [("cpu_high", PENDING, FIRING)]


def test_resolved_fires_again_at_once_without_a_for_duration(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    step(engine, clock, 0, {"cpu": 90})
    assert step(engine, clock, 10, {"cpu": 10}) == [("cpu_high", FIRING, RESOLVED)]
    assert step(engine, clock, 10, {"cpu": 90}) == [("cpu_high", RESOLVED, FIRING)]


@pytest.mark.parametrize("missing", [{}, {"other": 1.0}, {"cpu": math.nan}])
def test_a_missing_series_leaves_every_state_unchanged(
    engine: AlertEngine, clock: FakeClock, missing: dict[str, float]
) -> None:
    engine.add_rule(rule("pending_rule", for_seconds=60))
    engine.add_rule(rule("firing_rule"))
    step(engine, clock, 0, {"cpu": 90})
    before = engine.state()
    assert step(engine, clock, 100, missing) == []
    assert engine.state() == before
    # The pending rule kept its start, so the next sample finds it held long enough.
    assert step(engine, clock, 0, {"cpu": 90}) == [("pending_rule", PENDING, FIRING)]
    # A firing rule that loses its series neither resolves nor re-fires.
    assert step(engine, clock, 10, missing) == []
    assert engine.get("firing_rule").state is FIRING


def test_each_rule_reads_its_own_series(engine: AlertEngine, clock: FakeClock) -> None:
    engine.add_rule(rule("cpu_high", series="cpu"))
    engine.add_rule(rule("mem_high", series="mem"))
    assert step(engine, clock, 0, {"cpu": 90, "mem": 10}) == [("cpu_high", INACTIVE, FIRING)]
    assert step(engine, clock, 0, {"mem": 90}) == [("mem_high", INACTIVE, FIRING)]


@pytest.mark.parametrize(
    ("comparison", "fires_at"),
    [
        (Comparison.GT, [False, False, True]),
        (Comparison.GE, [False, True, True]),
        (Comparison.LT, [True, False, False]),
        (Comparison.LE, [True, True, False]),
    ],
)
def test_comparisons_at_the_threshold(
    clock: FakeClock, comparison: Comparison, fires_at: list[bool]
) -> None:
    for value, fires in zip([9.0, 10.0, 11.0], fires_at, strict=True):
        engine = AlertEngine(clock, REPEAT)
        engine.add_rule(rule(comparison=comparison, threshold=10))
        engine.evaluate({"cpu": value})
        assert (engine.get("cpu_high").state is FIRING) is fires


def test_the_view_tracks_value_state_and_since(engine: AlertEngine, clock: FakeClock) -> None:
    engine.add_rule(rule(summary="CPU is busy"))
    [view] = engine.state()
    assert (view.state, view.value, view.silenced) == (INACTIVE, None, False)
    clock.advance(5)
    engine.evaluate({"cpu": 99})
    view = engine.get("cpu_high")
    assert (view.state, view.value, view.since) == (FIRING, 99, clock.time())
    assert view.describe() == "cpu_high: cpu = 99 (> 80) - CPU is busy"


def test_transitions_are_service_events_that_cross_the_wire(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    [transition] = engine.evaluate({"cpu": 99})
    assert transition.event_type == "alert_transition"
    assert from_wire(transition.to_wire()) == transition


# --- rules ----------------------------------------------------------------------------------


def test_rules_are_added_replaced_and_removed(engine: AlertEngine, clock: FakeClock) -> None:
    engine.add_rule(rule("a"))
    engine.add_rule(rule("b"))
    engine.add_rule(rule("a", threshold=90))
    assert [(r.name, r.threshold) for r in engine.rules()] == [("a", 90), ("b", 80)]
    assert engine.remove_rule("a") is True
    assert engine.remove_rule("a") is False
    assert [r.name for r in engine.rules()] == ["b"]
    with pytest.raises(KeyError):
        engine.get("a")


def test_an_identical_rule_keeps_its_state_and_a_changed_one_starts_over(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    engine.evaluate({"cpu": 99})
    engine.add_rule(rule())
    assert engine.get("cpu_high").state is FIRING
    engine.add_rule(rule(threshold=95))
    assert engine.get("cpu_high").state is INACTIVE
    assert moves(engine.evaluate({"cpu": 99})) == [("cpu_high", INACTIVE, FIRING)]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": " "}, "name"),
        ({"series": ""}, "series"),
        ({"group": ""}, "group"),
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"for_seconds": math.inf}, "for_seconds"),
    ],
)
def test_invalid_rules_are_rejected(
    engine: AlertEngine, changes: dict[str, object], field: str
) -> None:
    bad = rule().model_copy(update=changes)
    with pytest.raises(ValidationFailed) as info:
        engine.add_rule(bad)
    assert info.value.fields["field"] == field
    assert engine.rules() == []


def test_the_engine_rejects_negative_intervals(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="repeat"):
        AlertEngine(clock, -1)
    with pytest.raises(ValueError, match="group_wait"):
        AlertEngine(clock, 1, group_wait_s=-1)


def test_from_config_reads_cooldown_minutes_and_group_wait(clock: FakeClock) -> None:
    engine = AlertEngine.from_config(
        clock, AlertingConfig(alert_cooldown_minutes=2, group_wait_seconds=7)
    )
    assert engine.repeat_interval_s == 120
    assert engine.group_wait_s == 7


# --- notifications --------------------------------------------------------------------------


def test_firing_alerts_of_a_group_share_one_notification(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule("cpu_high", series="cpu", group="host"))
    engine.add_rule(rule("load_high", series="load", threshold=4, group="host"))
    engine.add_rule(rule("queue_full", series="queue", threshold=100, group="bus"))
    engine.add_rule(rule("quiet", series="cpu", threshold=1_000, group="host"))
    engine.evaluate({"cpu": 99, "load": 8, "queue": 500})
    notes = engine.due_notifications()
    assert [n.group for n in notes] == ["bus", "host"]
    bus, host = notes
    assert names(host) == (["cpu_high", "load_high"], [])
    assert names(bus) == (["queue_full"], [])
    assert host.status == "firing"
    assert host.repeat is False
    assert host.at == clock.time()
    assert host.title() == "[FIRING:2] host: cpu_high, load_high"
    assert "- cpu_high: cpu = 99 (> 80)" in host.text()
    assert engine.due_notifications() == []


def test_pending_alerts_do_not_notify(engine: AlertEngine, clock: FakeClock) -> None:
    engine.add_rule(rule(for_seconds=60))
    engine.evaluate({"cpu": 99})
    assert engine.due_notifications() == []


def test_a_still_firing_group_is_notified_again_every_repeat_interval(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    engine.evaluate({"cpu": 99})
    assert len(engine.due_notifications()) == 1
    sent = []
    for _ in range(60):  # 30 minutes, evaluated every 30 s
        clock.advance(30)
        engine.evaluate({"cpu": 99})
        sent += [(clock.time(), n) for n in engine.due_notifications()]
    start = clock.time() - 1_800
    assert [t - start for t, _ in sent] == [REPEAT, 2 * REPEAT]
    assert all(n.repeat and names(n) == (["cpu_high"], []) for _, n in sent)
    assert sent[-1][1].firing[0].value == 99


def test_a_repeat_interval_of_zero_reminds_on_every_call(clock: FakeClock) -> None:
    engine = AlertEngine(clock, 0)
    engine.add_rule(rule())
    engine.evaluate({"cpu": 99})
    assert [n.repeat for n in engine.due_notifications()] == [False]
    assert [n.repeat for n in engine.due_notifications()] == [True]


def test_a_new_alert_in_a_notified_group_is_notified_at_once_with_the_others(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule("cpu_high", series="cpu"))
    engine.add_rule(rule("load_high", series="load", threshold=4))
    engine.evaluate({"cpu": 99, "load": 1})
    engine.due_notifications()
    clock.advance(60)
    engine.evaluate({"cpu": 99, "load": 9})
    [note] = engine.due_notifications()
    assert names(note) == (["cpu_high", "load_high"], [])
    assert note.repeat is False
    # The repeat clock restarted with that notification.
    clock.advance(REPEAT - 1)
    assert engine.due_notifications() == []
    clock.advance(1)
    assert [n.repeat for n in engine.due_notifications()] == [True]


def test_resolution_is_notified_once_with_the_alerts_still_firing(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule("cpu_high", series="cpu"))
    engine.add_rule(rule("load_high", series="load", threshold=4))
    engine.evaluate({"cpu": 99, "load": 9})
    engine.due_notifications()
    clock.advance(30)
    engine.evaluate({"cpu": 99, "load": 1})
    [note] = engine.due_notifications()
    assert names(note) == (["cpu_high"], ["load_high"])
    assert note.resolved[0].state is RESOLVED
    assert note.status == "firing"
    clock.advance(30)
    engine.evaluate({"cpu": 10, "load": 1})
    [note] = engine.due_notifications()
    assert names(note) == ([], ["cpu_high"])
    assert note.status == "resolved"
    assert note.title() == "[RESOLVED] default: cpu_high"
    clock.advance(REPEAT * 3)
    engine.evaluate({"cpu": 10, "load": 1})
    assert engine.due_notifications() == []


def test_an_alert_that_fires_and_resolves_between_notifications_is_never_sent(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    engine.evaluate({"cpu": 99})
    clock.advance(30)
    engine.evaluate({"cpu": 10})
    assert engine.due_notifications() == []


def test_group_wait_delays_a_change_and_batches_what_arrives_meanwhile(
    clock: FakeClock,
) -> None:
    engine = AlertEngine(clock, REPEAT, group_wait_s=30)
    engine.add_rule(rule("cpu_high", series="cpu"))
    engine.add_rule(rule("load_high", series="load", threshold=4))
    engine.evaluate({"cpu": 99, "load": 1})
    assert engine.due_notifications() == []
    clock.advance(20)
    engine.evaluate({"cpu": 99, "load": 9})
    assert engine.due_notifications() == []
    clock.advance(9.5)
    assert engine.due_notifications() == []
    clock.advance(0.5)
    [note] = engine.due_notifications()
    assert names(note) == (["cpu_high", "load_high"], [])
    # Resolution waits the same way.
    clock.advance(100)
    engine.evaluate({"cpu": 10, "load": 9})
    assert engine.due_notifications() == []
    clock.advance(30)
    [note] = engine.due_notifications()
    assert names(note) == (["load_high"], ["cpu_high"])


def test_removing_a_notified_firing_rule_notifies_it_resolved(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule(group="host"))
    engine.evaluate({"cpu": 99})
    engine.due_notifications()
    engine.remove_rule("cpu_high")
    [note] = engine.due_notifications()
    assert (note.group, names(note)) == ("host", ([], ["cpu_high"]))
    assert note.resolved[0].state is RESOLVED
    assert engine.due_notifications() == []


def test_moving_a_firing_rule_to_another_group_resolves_it_in_the_old_one(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule(group="old"))
    engine.evaluate({"cpu": 99})
    engine.due_notifications()
    engine.add_rule(rule(group="new"))
    engine.evaluate({"cpu": 99})
    notes = {n.group: names(n) for n in engine.due_notifications()}
    assert notes == {"new": (["cpu_high"], []), "old": ([], ["cpu_high"])}


# --- silences -------------------------------------------------------------------------------


def test_a_silenced_alert_changes_state_but_does_not_notify(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule("cpu_high", series="cpu"))
    engine.add_rule(rule("load_high", series="load", threshold=4))
    now = clock.time()
    silence_id = engine.silence({"name": "cpu_high"}, now + 3_600, "maintenance")
    transitions = moves(engine.evaluate({"cpu": 99, "load": 9}))
    assert ("cpu_high", INACTIVE, FIRING) in transitions
    assert engine.get("cpu_high").silenced is True
    assert engine.get("load_high").silenced is False
    [note] = engine.due_notifications()
    assert names(note) == (["load_high"], [])
    [active] = engine.silences()
    assert (active.id, active.comment, active.matcher) == (
        silence_id,
        "maintenance",
        {"name": "cpu_high"},
    )


def test_a_group_silence_mutes_the_whole_group(engine: AlertEngine, clock: FakeClock) -> None:
    engine.add_rule(rule("cpu_high", series="cpu", group="host"))
    engine.add_rule(rule("queue_full", series="queue", threshold=1, group="bus"))
    engine.silence({"group": "host"}, clock.time() + 60)
    engine.evaluate({"cpu": 99, "queue": 9})
    assert [n.group for n in engine.due_notifications()] == ["bus"]


def test_a_silence_must_match_every_key(engine: AlertEngine, clock: FakeClock) -> None:
    engine.add_rule(rule("cpu_high", group="host"))
    engine.silence({"name": "cpu_high", "group": "other"}, clock.time() + 60)
    engine.evaluate({"cpu": 99})
    assert engine.get("cpu_high").silenced is False
    assert len(engine.due_notifications()) == 1


def test_when_a_silence_runs_out_a_still_firing_alert_is_notified(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    engine.silence({"name": "cpu_high"}, clock.time() + 600)
    engine.evaluate({"cpu": 99})
    assert engine.due_notifications() == []
    clock.advance(599)
    assert engine.due_notifications() == []
    clock.advance(1)
    assert engine.silences() == []
    [note] = engine.due_notifications()
    assert names(note) == (["cpu_high"], [])
    assert note.repeat is False


def test_expiring_a_silence_ends_it_now(engine: AlertEngine, clock: FakeClock) -> None:
    engine.add_rule(rule())
    silence_id = engine.silence({"name": "cpu_high"}, clock.time() + 600)
    engine.evaluate({"cpu": 99})
    assert engine.due_notifications() == []
    assert engine.expire_silence(silence_id) is True
    assert engine.expire_silence(silence_id) is False
    assert len(engine.due_notifications()) == 1


def test_an_alert_silenced_after_notification_is_neither_repeated_nor_resolved(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.add_rule(rule())
    engine.evaluate({"cpu": 99})
    engine.due_notifications()
    engine.silence({"name": "cpu_high"}, clock.time() + 10 * REPEAT)
    clock.advance(2 * REPEAT)
    assert engine.due_notifications() == []
    engine.evaluate({"cpu": 10})
    clock.advance(10 * REPEAT)
    engine.evaluate({"cpu": 10})
    assert engine.due_notifications() == []


def test_silence_ids_are_distinct_and_deterministic(clock: FakeClock) -> None:
    ids = []
    for _ in range(2):
        engine = AlertEngine(clock, REPEAT)
        ids.append([engine.silence({"group": "g"}, clock.time() + 1) for _ in range(3)])
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 3


@pytest.mark.parametrize(
    ("matcher", "until_offset", "field"),
    [
        ({}, 60, "matcher"),
        ({"severity": "page"}, 60, "matcher"),
        ({"name": ""}, 60, "matcher"),
        ({"name": "x"}, 0, "until"),
        ({"name": "x"}, -5, "until"),
        ({"name": "x"}, math.nan, "until"),
    ],
)
def test_invalid_silences_are_rejected(
    engine: AlertEngine, clock: FakeClock, matcher: dict[str, str], until_offset: float, field: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        engine.silence(matcher, clock.time() + until_offset)
    assert info.value.fields["field"] == field


# --- properties -----------------------------------------------------------------------------

gaps = st.lists(st.floats(min_value=0.001, max_value=120, allow_nan=False), min_size=1)


@settings(max_examples=200, deadline=None)
@given(
    for_seconds=st.floats(min_value=0, max_value=600, allow_nan=False),
    hold=gaps,
    clear=gaps,
)
def test_a_condition_held_for_the_duration_fires_exactly_once_until_it_clears(
    for_seconds: float, hold: list[float], clear: list[float]
) -> None:
    engine = AlertEngine(FakeClock(), REPEAT)
    engine.add_rule(rule(for_seconds=for_seconds))
    start = 1_700_000_000.0
    now = start
    fired_at: list[float] = []
    times = [start]
    for gap in hold:
        times.append(times[-1] + gap)
    for now in times:
        for t in engine.evaluate({"cpu": 99}, now):
            if t.state_to is FIRING:
                fired_at.append(now)
    # With a duration, the first sample can only make it pending (as in Prometheus).
    candidates = times if for_seconds == 0 else times[1:]
    held_long_enough = [t for t in candidates if t >= start + for_seconds]
    if held_long_enough:
        assert fired_at == held_long_enough[:1]
        assert engine.get("cpu_high", now).state is FIRING
    else:
        assert fired_at == []
        assert engine.get("cpu_high", now).state is PENDING
    # Clearing ends it once; it does not fire again while clear.
    ended = []
    for gap in clear:
        now += gap
        ended += moves(engine.evaluate({"cpu": 1}, now))
    expected_end = FIRING if held_long_enough else PENDING
    assert ended[:1] == [("cpu_high", expected_end, RESOLVED if held_long_enough else INACTIVE)]
    assert all(to is not FIRING for _, _, to in ended)
    assert engine.get("cpu_high", now).state in (INACTIVE, RESOLVED)


samples = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=100, allow_nan=False), st.sampled_from([1, 0, None])
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(for_seconds=st.sampled_from([0.0, 10.0, 45.0, 100.0]), trace=samples)
def test_every_firing_follows_an_unbroken_hold_of_the_duration(
    for_seconds: float, trace: list[tuple[float, int | None]]
) -> None:
    engine = AlertEngine(FakeClock(), REPEAT)
    engine.add_rule(rule(for_seconds=for_seconds))
    now = 1_700_000_000.0
    run_start: float | None = None
    fired_in_run = 0
    for gap, sample in trace:
        now += gap
        values = {} if sample is None else {"cpu": 99.0 if sample else 1.0}
        if sample == 1 and run_start is None:
            run_start, fired_in_run = now, 0
        elif sample == 0:
            run_start = None
        for t in engine.evaluate(values, now):
            if t.state_to is FIRING:
                assert run_start is not None
                assert now >= run_start + for_seconds
                fired_in_run += 1
                assert fired_in_run == 1
        state = engine.get("cpu_high", now).state
        assert (state in (PENDING, FIRING)) == (run_start is not None)
