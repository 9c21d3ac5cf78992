"""Alert rules evaluated Prometheus style, notified Alertmanager style.

Each rule watches one series. On every :meth:`AlertEngine.evaluate` its alert moves through
``inactive -> pending -> firing -> resolved -> inactive``: pending while the condition has held
for less than ``for_seconds`` (a rule with ``for_seconds == 0`` skips pending), resolved for the
one evaluation after it stops firing. An evaluation that lacks a rule's series (or carries NaN)
leaves that alert exactly as it was: no data is not evidence that the condition cleared.

Notifications are per ``group``: one message lists every firing alert of the group, plus those
that stopped firing since the group was last notified. A change (an alert starts or stops
firing) is notified once it is ``group_wait_s`` old; a group that keeps firing without change is
notified again every ``repeat_interval_s``. Silences match rules by name and/or group until a
time; a silenced alert still changes state but is left out of notifications.

Times are seconds on the engine's clock's wall time (``Clock.time``) unless passed explicitly;
callers passing ``now`` must use that same base. Nothing here does I/O or reads the real clock,
so the engine is deterministic under a :class:`~fogcoord.clock.FakeClock`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.clock import Clock
from fogcoord.config import AlertingConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.stats import AlertConfig, AlertState, AlertTransition, Comparison

SOURCE = "stats"
SILENCE_KEYS = frozenset({"name", "group"})

_COMPARE: dict[Comparison, Callable[[float, float], bool]] = {
    Comparison.GT: operator.gt,
    Comparison.GE: operator.ge,
    Comparison.LT: operator.lt,
    Comparison.LE: operator.le,
}


class AlertView(BaseModel):
    """One rule's alert as of a moment: what dashboards and notifications show."""

    model_config = ConfigDict(frozen=True)

    name: str
    group: str
    state: AlertState
    value: float | None = Field(description="the last value seen; None before any")
    since: float = Field(description="when the alert entered its current state")
    active_since: float | None = Field(
        default=None, description="when the condition started holding, while it holds"
    )
    silenced: bool = False
    series: str
    comparison: Comparison
    threshold: float
    summary: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    def describe(self) -> str:
        """``name: series = value (> threshold)`` with the summary, if any, after a dash."""
        value = "no data" if self.value is None else f"{self.value:g}"
        line = f"{self.name}: {self.series} = {value} ({self.comparison.value} {self.threshold:g})"
        return f"{line} - {self.summary}" if self.summary else line


class Notification(BaseModel):
    """One message for one group: its firing alerts and those that stopped since last time."""

    model_config = ConfigDict(frozen=True)

    group: str
    firing: tuple[AlertView, ...] = ()
    resolved: tuple[AlertView, ...] = ()
    at: float
    repeat: bool = Field(default=False, description="a reminder: nothing changed since last time")

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if self.firing else "resolved"

    def title(self) -> str:
        """Alertmanager's subject line, e.g. ``[FIRING:2] cpu: high_cpu, high_load``."""
        tag = f"FIRING:{len(self.firing)}" if self.firing else "RESOLVED"
        names = ", ".join(a.name for a in (*self.firing, *self.resolved))
        return f"[{tag}] {self.group}: {names}"

    def text(self) -> str:
        """A plain-text body: one line per alert under a heading per status."""
        lines = [self.title()]
        if self.firing:
            lines += ["", "Firing:"] + [f"- {a.describe()}" for a in self.firing]
        if self.resolved:
            lines += ["", "Resolved:"] + [f"- {a.describe()}" for a in self.resolved]
        return "\n".join(lines) + "\n"


class Silence(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    matcher: dict[str, str]
    until: float
    comment: str = ""
    created_at: float

    def active(self, now: float) -> bool:
        return now < self.until

    def matches(self, name: str, group: str) -> bool:
        subject = {"name": name, "group": group}
        return all(subject[key] == value for key, value in self.matcher.items())


@dataclass
class _Alert:
    rule: AlertConfig
    since: float
    state: AlertState = AlertState.INACTIVE
    value: float | None = None
    active_since: float | None = None


@dataclass
class _Group:
    # Alerts as last notified firing, by name: what "resolved" and "new" are measured against.
    notified: dict[str, AlertView] = field(default_factory=dict)
    last_sent: float | None = None
    changed_at: float | None = None


class AlertEngine:
    """Alert rules, their states, silences and the notifications due."""

    def __init__(
        self, clock: Clock, repeat_interval_s: float, *, group_wait_s: float = 0.0
    ) -> None:
        if not math.isfinite(repeat_interval_s) or repeat_interval_s < 0:
            raise ValueError("repeat_interval_s must be a finite number >= 0")
        if not math.isfinite(group_wait_s) or group_wait_s < 0:
            raise ValueError("group_wait_s must be a finite number >= 0")
        self.clock = clock
        self.repeat_interval_s = repeat_interval_s
        self.group_wait_s = group_wait_s
        self._alerts: dict[str, _Alert] = {}
        self._groups: dict[str, _Group] = {}
        self._silences: dict[str, Silence] = {}
        self._silence_seq = 0

    @classmethod
    def from_config(cls, clock: Clock, config: AlertingConfig) -> AlertEngine:
        return cls(
            clock,
            config.alert_cooldown_minutes * 60.0,
            group_wait_s=config.group_wait_seconds,
        )

    def _now(self, now: float | None) -> float:
        return self.clock.time() if now is None else now

    # --- rules -----------------------------------------------------------------------------------

    def add_rule(self, rule: AlertConfig) -> None:
        """Add ``rule``, or replace the rule of that name.

        An identical rule keeps its alert's state; a changed one starts again from inactive,
        since the old condition's history says nothing about the new one.
        """
        _validate(rule)
        current = self._alerts.get(rule.name)
        if current is not None and current.rule == rule:
            return
        self._alerts[rule.name] = _Alert(rule=rule, since=self.clock.time())
        self._groups.setdefault(rule.group, _Group())

    def remove_rule(self, name: str) -> bool:
        """Forget the rule; if its alert had been notified firing, the group hears it resolved."""
        return self._alerts.pop(name, None) is not None

    def rules(self) -> list[AlertConfig]:
        return [a.rule for a in self._alerts.values()]

    # --- evaluation ------------------------------------------------------------------------------

    def evaluate(
        self, values: Mapping[str, float], now: float | None = None
    ) -> list[AlertTransition]:
        """Apply one set of samples to every rule; returns the state changes, in rule order."""
        now = self._now(now)
        out: list[AlertTransition] = []
        for alert in self._alerts.values():
            rule = alert.rule
            raw = values.get(rule.series)
            if raw is None or math.isnan(raw):
                continue
            value = float(raw)
            alert.value = value
            before = alert.state
            after = _step(alert, _COMPARE[rule.comparison](value, rule.threshold), now)
            if after is before:
                continue
            alert.state, alert.since = after, now
            if AlertState.FIRING in (before, after):
                group = self._groups.setdefault(rule.group, _Group())
                if group.changed_at is None:
                    group.changed_at = now
            out.append(
                AlertTransition(
                    source=SOURCE,
                    timestamp=now,
                    rule=rule.name,
                    group=rule.group,
                    state_from=before,
                    state_to=after,
                    value=value,
                    threshold=rule.threshold,
                    series=rule.series,
                    at=now,
                )
            )
        return out

    def state(self, now: float | None = None) -> list[AlertView]:
        now = self._now(now)
        return [self._view(a, now) for a in self._alerts.values()]

    def get(self, name: str, now: float | None = None) -> AlertView:
        """The view of one rule's alert; raises ``KeyError`` for an unknown rule."""
        return self._view(self._alerts[name], self._now(now))

    def _view(self, alert: _Alert, now: float) -> AlertView:
        rule = alert.rule
        return AlertView(
            name=rule.name,
            group=rule.group,
            state=alert.state,
            value=alert.value,
            since=alert.since,
            active_since=alert.active_since,
            silenced=self._silenced(rule.name, rule.group, now),
            series=rule.series,
            comparison=rule.comparison,
            threshold=rule.threshold,
            summary=rule.summary,
            labels=dict(rule.labels),
        )

    # --- notifications ---------------------------------------------------------------------------

    def due_notifications(self, now: float | None = None) -> list[Notification]:
        """The notifications to send now, at most one per group, ordered by group name.

        Calling this records them as sent: each change is returned once.
        """
        now = self._now(now)
        firing: dict[str, dict[str, AlertView]] = {}
        for alert in self._alerts.values():
            if alert.state is AlertState.FIRING:
                view = self._view(alert, now)
                if not view.silenced:
                    firing.setdefault(view.group, {})[view.name] = view
        out: list[Notification] = []
        for name in sorted(self._groups.keys() | firing.keys()):
            group = self._groups.setdefault(name, _Group())
            note = self._group_due(name, group, firing.get(name, {}), now)
            if note is not None:
                out.append(note)
        in_use = {a.rule.group for a in self._alerts.values()}
        for name in [n for n, g in self._groups.items() if n not in in_use and not g.notified]:
            del self._groups[name]
        return out

    def _group_due(
        self, name: str, group: _Group, firing: dict[str, AlertView], now: float
    ) -> Notification | None:
        resolved: list[AlertView] = []
        for alert_name, last in list(group.notified.items()):
            if alert_name in firing:
                continue
            if self._silenced(alert_name, name, now):
                # The silence covered its end; nobody asked to hear about it.
                del group.notified[alert_name]
                continue
            resolved.append(self._resolved_view(alert_name, name, last, now))
        changed = bool(resolved) or bool(firing.keys() - group.notified.keys())
        if not changed:
            group.changed_at = None
            if (
                firing
                and group.last_sent is not None
                and now >= group.last_sent + self.repeat_interval_s
            ):
                group.last_sent = now
                group.notified.update(firing)
                return Notification(group=name, firing=_ordered(firing), at=now, repeat=True)
            return None
        if group.changed_at is None or group.changed_at > now:
            group.changed_at = now
        if now < group.changed_at + self.group_wait_s:
            return None
        for view in resolved:
            group.notified.pop(view.name, None)
        group.notified.update(firing)
        group.last_sent, group.changed_at = now, None
        return Notification(group=name, firing=_ordered(firing), resolved=tuple(resolved), at=now)

    def _resolved_view(self, name: str, group: str, last: AlertView, now: float) -> AlertView:
        alert = self._alerts.get(name)
        if alert is not None and alert.rule.group == group:
            return self._view(alert, now)
        # The rule is gone or moved to another group: as far as this group knows, it resolved.
        return last.model_copy(update={"state": AlertState.RESOLVED, "since": now})

    # --- silences --------------------------------------------------------------------------------

    def silence(
        self,
        matcher: Mapping[str, str],
        until: float,
        comment: str = "",
        *,
        now: float | None = None,
    ) -> str:
        """Mute alerts matching every key of ``matcher`` (``name``, ``group``) until ``until``."""
        now = self._now(now)
        if not matcher:
            raise ValidationFailed("matcher", "needs a name and/or a group")
        unknown = set(matcher) - SILENCE_KEYS
        if unknown:
            raise ValidationFailed("matcher", f"only name and group can be matched, not {unknown}")
        if not all(isinstance(v, str) and v for v in matcher.values()):
            raise ValidationFailed("matcher", "values must be non-empty strings")
        if not math.isfinite(until) or until <= now:
            raise ValidationFailed("until", "must be a time after now")
        self._prune_silences(now)
        self._silence_seq += 1
        silence_id = f"silence-{self._silence_seq}"
        self._silences[silence_id] = Silence(
            id=silence_id, matcher=dict(matcher), until=until, comment=comment, created_at=now
        )
        return silence_id

    def expire_silence(self, silence_id: str) -> bool:
        """End a silence now; ``False`` if there is no such silence."""
        return self._silences.pop(silence_id, None) is not None

    def silences(self, now: float | None = None) -> list[Silence]:
        """The silences in force."""
        now = self._now(now)
        return [s for s in self._silences.values() if s.active(now)]

    def _prune_silences(self, now: float) -> None:
        for silence_id in [i for i, s in self._silences.items() if not s.active(now)]:
            del self._silences[silence_id]

    def _silenced(self, name: str, group: str, now: float) -> bool:
        return any(s.active(now) and s.matches(name, group) for s in self._silences.values())


def _step(alert: _Alert, holds: bool, now: float) -> AlertState:
    """The next state of ``alert`` given whether its condition holds now."""
    state, hold_for = alert.state, alert.rule.for_seconds
    if not holds:
        alert.active_since = None
        if state is AlertState.FIRING:
            return AlertState.RESOLVED
        return AlertState.INACTIVE
    if state in (AlertState.INACTIVE, AlertState.RESOLVED):
        alert.active_since = now
        return AlertState.FIRING if hold_for == 0 else AlertState.PENDING
    if state is AlertState.PENDING:
        started = now if alert.active_since is None else alert.active_since
        # Written as a deadline so "held exactly for_seconds" compares equal in floating point.
        return AlertState.FIRING if now >= started + hold_for else AlertState.PENDING
    return state


def _validate(rule: AlertConfig) -> None:
    if not rule.name.strip():
        raise ValidationFailed("name", "must not be empty")
    if not rule.series.strip():
        raise ValidationFailed("series", "must not be empty")
    if not rule.group.strip():
        raise ValidationFailed("group", "must not be empty")
    if not math.isfinite(rule.threshold):
        raise ValidationFailed("threshold", "must be a finite number")
    if not math.isfinite(rule.for_seconds):
        raise ValidationFailed("for_seconds", "must be a finite number")


def _ordered(views: Mapping[str, AlertView]) -> tuple[AlertView, ...]:
    return tuple(views[k] for k in sorted(views))
