"""Per-participant privacy budgets, accounted in Rényi differential privacy (RDP).

Every round of federated training in which a participant's update is released with Gaussian noise
spends some of that participant's privacy. Spending is tracked as an **RDP curve**: for each of a
fixed set of orders ``alpha``, the Rényi divergence of order ``alpha`` the releases so far allow.
Two facts make this the right bookkeeping:

* **RDP composes additively, order by order.** A participant's curve after a round is its curve
  before plus the round's curve, so the round's curve is computed *once* (with dp-accounting's
  ``RdpAccountant``) and added to every participant's stored curve: one numpy addition for the
  whole round, instead of replaying every participant's history through an accountant.
* **A curve converts to (epsilon, delta)** for the configured ``delta``: the epsilon a
  participant has spent is the minimum over the orders of the bound of Proposition 12 of
  Canonne, Kamath & Steinke (2020) (also Asoodeh et al. 2020, eq. 20),
  ``rdp + log1p(-1/alpha) - log(delta * alpha) / (alpha - 1)``, tighter than the classic
  ``rdp + log(1/delta) / (alpha - 1)``. It is exactly the conversion of dp-accounting's
  ``rdp.compute_epsilon`` (same bound, same special cases), written over numpy arrays so that a
  whole round's participants convert at once.

A round is charged **without subsampling amplification**: its curve is that of the plain Gaussian
mechanism, ``alpha * steps / (2 * noise_multiplier**2)``, however few participants took part.
Amplification by sampling would be sound only if the sampling were random and secret and every
participant who *could* have been sampled were charged the amplified amount, whether or not they
were picked; here a round charges just the participants it names, who were chosen by the
coordinator (by trust, availability, price), so each of them is charged in full.

A participant's budget (an epsilon, with the book's ``delta``) is fixed when the participant is
first initialized. :meth:`BudgetBook.charge` refuses a whole round, charging nobody, if it would
take any participant past their budget, and is idempotent per ``(participant, round_id)``: a
retried round is not charged twice.

State lives in two tables over SQLAlchemy Core (SQLite or PostgreSQL): ``privacy_budgets``, one
row per participant (budget, RDP curve as a JSON list over the orders, rounds charged, epsilon
spent), and ``privacy_budget_charges``, one row per participant and round charged. The orders
are fixed for the life of the tables: a book opened with other orders refuses to read curves
recorded over different ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fogcoord.contracts.errors import NotFound, ValidationFailed
from fogcoord.contracts.privacy import PrivacyBudgetExhausted

Curve = npt.NDArray[np.float64]

DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(x) for x in range(11, 64)]
    + [128.0, 256.0, 512.0, 1024.0]
)
"""dp-accounting's default RDP orders: dense near 1, where small budgets are decided."""

MAX_ID_LENGTH = 128
_CHUNK = 500  # ids per IN (...) clause: well under every backend's bound-parameter limit

metadata = sa.MetaData()

budgets_t = sa.Table(
    "privacy_budgets",
    metadata,
    sa.Column("participant_id", sa.String(MAX_ID_LENGTH), primary_key=True),
    sa.Column("budget", sa.Float, nullable=False),
    sa.Column("rdp", sa.Text, nullable=False),
    sa.Column("orders_key", sa.String(16), nullable=False),
    sa.Column("rounds", sa.Integer, nullable=False),
    sa.Column("spent", sa.Float, nullable=False),
)

charges_t = sa.Table(
    "privacy_budget_charges",
    metadata,
    sa.Column("round_id", sa.String(MAX_ID_LENGTH), primary_key=True),
    sa.Column("participant_id", sa.String(MAX_ID_LENGTH), primary_key=True),
    sa.Column("noise_multiplier", sa.Float, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("spent_after", sa.Float, nullable=False),
)


class BudgetBook:
    """Privacy budgets of many participants, persisted in ``engine``.

    Methods are synchronous (an async caller runs them with ``asyncio.to_thread``) and safe to
    call from several threads: one lock serialises them within the process, and a charge reads
    the rows it updates ``FOR UPDATE`` so that books in other processes on PostgreSQL serialise
    too.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        budget_epsilon: float,
        delta: float,
        orders: Sequence[float] = DEFAULT_ORDERS,
    ) -> None:
        if not (_real(budget_epsilon) and 0 < budget_epsilon < math.inf):
            raise ValidationFailed("budget_epsilon", "must be a positive finite number")
        if not (_real(delta) and 0 < delta < 1):
            raise ValidationFailed("delta", "must be strictly between 0 and 1")
        if not orders or not all(_real(a) and 1 < a < math.inf for a in orders):
            raise ValidationFailed("orders", "must be finite RDP orders above 1")
        self.engine = engine
        self.budget_epsilon = float(budget_epsilon)
        self.delta = float(delta)
        self.orders: tuple[float, ...] = tuple(float(a) for a in orders)
        self._alpha = np.array(self.orders, dtype=np.float64)
        # The order-dependent part of the conversion, computed once; see _epsilons.
        with np.errstate(divide="ignore"):
            self._offset = np.where(
                self._alpha > 1.01,
                np.log1p(-1 / self._alpha) - np.log(self.delta * self._alpha) / (self._alpha - 1),
                np.inf,
            )
        self._orders_key = hashlib.sha256(json.dumps(self.orders).encode()).hexdigest()[:16]
        self._zero = json.dumps([0.0] * len(self.orders))
        self._lock = threading.Lock()
        metadata.create_all(engine)

    # --- accounting ----------------------------------------------------------------------------

    def round_curve(self, noise_multiplier: float, steps: int = 1) -> Curve:
        """The RDP curve of one round: ``steps`` Gaussian releases at ``noise_multiplier``.

        ``noise_multiplier`` is the noise's standard deviation over the L2 sensitivity (the clip
        norm). No sampling amplification is applied (see the module docstring).
        """
        _check_noise(noise_multiplier, steps)
        from dp_accounting import (  # type: ignore[import-untyped]
            GaussianDpEvent,
            SelfComposedDpEvent,
        )
        from dp_accounting.rdp import RdpAccountant  # type: ignore[import-untyped]

        accountant = RdpAccountant(self.orders)
        accountant.compose(SelfComposedDpEvent(GaussianDpEvent(float(noise_multiplier)), steps))
        curve: Curve = np.asarray(accountant.rdp, dtype=np.float64)
        return curve

    def epsilon_of(self, curve: npt.ArrayLike) -> float:
        """The epsilon, at the book's delta, that an RDP ``curve`` over the book's orders spends."""
        arr = np.asarray(curve, dtype=np.float64)
        if arr.shape != self._alpha.shape:
            raise ValidationFailed("curve", f"must have one value per order ({len(self.orders)})")
        return float(self._epsilons(arr[np.newaxis, :])[0])

    def _epsilons(self, curves: Curve) -> Curve:
        """Epsilon of each row of ``curves``: dp-accounting's ``compute_epsilon``, vectorised."""
        with np.errstate(invalid="ignore"):
            eps = curves + self._offset
        # Where delta**2 exceeds 1 - exp(-rdp), the KL bound already gives epsilon 0; a negative
        # divergence is numerical noise from an extreme event, also read as 0.
        free = (self.delta**2 + np.expm1(-curves) > 0) | (curves < 0)
        eps = np.where(free, 0.0, eps)
        best: Curve = np.maximum(eps.min(axis=1), 0.0)
        return best

    # --- participants --------------------------------------------------------------------------

    def initialize(self, participants: Iterable[str]) -> dict[str, float]:
        """Give each new participant the book's budget; the remaining epsilon of each.

        Idempotent: a participant already in the book keeps its budget and its spending.
        """
        ids = _ids(participants)
        with self._lock, self.engine.begin() as conn:
            rows = self._rows(conn, ids, lock=False)
            new = [pid for pid in ids if pid not in rows]
            if new:
                conn.execute(
                    budgets_t.insert(),
                    [
                        {
                            "participant_id": pid,
                            "budget": self.budget_epsilon,
                            "rdp": self._zero,
                            "orders_key": self._orders_key,
                            "rounds": 0,
                            "spent": 0.0,
                        }
                        for pid in new
                    ],
                )
        out: dict[str, float] = {}
        for pid in ids:
            row = rows.get(pid)
            out[pid] = self.budget_epsilon if row is None else _left(row)
        return out

    def can_afford(
        self, participants: Iterable[str], noise_multiplier: float, *, steps: int = 1
    ) -> list[str]:
        """The participants (in the given order) whose budget covers one more such round.

        Participants not in the book have no budget and are left out.
        """
        ids = _ids(participants)
        curve = self.round_curve(noise_multiplier, steps)
        with self._lock, self.engine.connect() as conn:
            rows = self._rows(conn, ids, lock=False)
        known = [pid for pid in ids if pid in rows]
        if not known:
            return []
        after = self._epsilons(self._stack(rows, known) + curve)
        budget = np.array([rows[pid]["budget"] for pid in known], dtype=np.float64)
        return [pid for pid, ok in zip(known, after <= budget, strict=True) if ok]

    def charge(
        self,
        participants: Iterable[str],
        noise_multiplier: float,
        round_id: str,
        *,
        steps: int = 1,
    ) -> dict[str, float]:
        """Charge a round to every participant; the epsilon each has spent afterwards.

        All or nothing: if the round would take anyone past their budget, it raises
        :class:`PrivacyBudgetExhausted` naming them and charges nobody. Participants already
        charged for ``round_id`` are not charged again (their current spending is returned), so a
        retried round is safe; retrying it with another noise multiplier or step count is
        rejected. A participant not in the book raises :class:`NotFound`.
        """
        ids = _ids(participants)
        if not isinstance(round_id, str) or not 0 < len(round_id) <= MAX_ID_LENGTH:
            raise ValidationFailed("round_id", f"must be 1 to {MAX_ID_LENGTH} characters")
        curve = self.round_curve(noise_multiplier, steps)
        noise = float(noise_multiplier)
        with self._lock, self.engine.begin() as conn:
            rows = self._rows(conn, ids, lock=True)
            for pid in ids:
                if pid not in rows:
                    raise NotFound("privacy budget", pid)
            done = self._charged(conn, round_id, ids)
            for pid, (was_noise, was_steps) in done.items():
                if was_noise != noise or was_steps != steps:
                    raise ValidationFailed(
                        "round_id",
                        f"round {round_id!r} was charged to {pid!r} with noise multiplier "
                        f"{was_noise:g} and {was_steps} step(s)",
                    )
            fresh = [pid for pid in ids if pid not in done]
            spent = {pid: float(rows[pid]["spent"]) for pid in ids}
            if fresh:
                self._apply(conn, rows, fresh, curve, noise, steps, round_id, spent)
        return spent

    def _apply(
        self,
        conn: Connection,
        rows: dict[str, dict[str, Any]],
        fresh: list[str],
        curve: Curve,
        noise: float,
        steps: int,
        round_id: str,
        spent: dict[str, float],
    ) -> None:
        after = self._stack(rows, fresh) + curve
        eps_after = self._epsilons(after)
        budget = np.array([rows[pid]["budget"] for pid in fresh], dtype=np.float64)
        before = np.array([rows[pid]["spent"] for pid in fresh], dtype=np.float64)
        over = eps_after > budget
        if over.any():
            worst = int(np.argmax(np.where(over, eps_after - budget, -np.inf)))
            raise PrivacyBudgetExhausted(
                [pid for pid, o in zip(fresh, over, strict=True) if o],
                needed=float(eps_after[worst] - before[worst]),
                remaining=float(budget[worst] - before[worst]),
            )
        conn.execute(
            budgets_t.update()
            .where(budgets_t.c.participant_id == sa.bindparam("b_pid"))
            .values(
                rdp=sa.bindparam("b_rdp"),
                spent=sa.bindparam("b_spent"),
                rounds=budgets_t.c.rounds + 1,
            ),
            [
                {"b_pid": pid, "b_rdp": json.dumps(row), "b_spent": float(eps)}
                for pid, row, eps in zip(fresh, after.tolist(), eps_after, strict=True)
            ],
        )
        conn.execute(
            charges_t.insert(),
            [
                {
                    "round_id": round_id,
                    "participant_id": pid,
                    "noise_multiplier": noise,
                    "steps": steps,
                    "spent_after": float(eps),
                }
                for pid, eps in zip(fresh, eps_after, strict=True)
            ],
        )
        for pid, eps in zip(fresh, eps_after, strict=True):
            spent[pid] = float(eps)

    def remaining(self, participant: str) -> float:
        """The epsilon ``participant`` has left; :class:`NotFound` if not in the book."""
        with self._lock, self.engine.connect() as conn:
            rows = self._rows(conn, [participant], lock=False)
        if participant not in rows:
            raise NotFound("privacy budget", participant)
        return _left(rows[participant])

    def curve_of(self, participant: str) -> Curve:
        """The RDP curve ``participant`` has accumulated, over :attr:`orders`."""
        with self._lock, self.engine.connect() as conn:
            rows = self._rows(conn, [participant], lock=False)
        if participant not in rows:
            raise NotFound("privacy budget", participant)
        curve: Curve = self._stack(rows, [participant])[0]
        return curve

    def view(self) -> list[dict[str, Any]]:
        """Every participant's budget, spending and rounds, by participant id (no curves)."""
        cols = budgets_t.c
        query = sa.select(cols.participant_id, cols.budget, cols.spent, cols.rounds).order_by(
            cols.participant_id
        )
        with self._lock, self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {
                "participant_id": r.participant_id,
                "budget_epsilon": float(r.budget),
                "spent_epsilon": float(r.spent),
                "remaining_epsilon": max(0.0, float(r.budget) - float(r.spent)),
                "rounds": int(r.rounds),
                "delta": self.delta,
            }
            for r in rows
        ]

    # --- storage -------------------------------------------------------------------------------

    def _rows(
        self, conn: Connection, ids: Sequence[str], *, lock: bool
    ) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids):
            query = budgets_t.select().where(budgets_t.c.participant_id.in_(chunk))
            if lock:
                query = query.with_for_update()
            for r in conn.execute(query):
                out[r.participant_id] = dict(r._mapping)
        return out

    def _charged(
        self, conn: Connection, round_id: str, ids: Sequence[str]
    ) -> dict[str, tuple[float, int]]:
        out: dict[str, tuple[float, int]] = {}
        cols = charges_t.c
        for chunk in _chunks(ids):
            query = sa.select(cols.participant_id, cols.noise_multiplier, cols.steps).where(
                cols.round_id == round_id, cols.participant_id.in_(chunk)
            )
            for r in conn.execute(query):
                out[r.participant_id] = (float(r.noise_multiplier), int(r.steps))
        return out

    def _stack(self, rows: dict[str, dict[str, Any]], ids: Sequence[str]) -> Curve:
        for pid in ids:
            if rows[pid]["orders_key"] != self._orders_key:
                raise ValueError(
                    f"the RDP curve of {pid!r} was recorded over other orders than this book's"
                )
        stacked: Curve = np.array([json.loads(rows[pid]["rdp"]) for pid in ids], dtype=np.float64)
        return stacked.reshape(len(ids), len(self.orders))


def _left(row: dict[str, Any]) -> float:
    return max(0.0, float(row["budget"]) - float(row["spent"]))


def _ids(participants: Iterable[str]) -> list[str]:
    if isinstance(participants, str):
        raise ValidationFailed("participants", "must be a list of ids, not one string")
    out = list(dict.fromkeys(participants))
    for pid in out:
        if not isinstance(pid, str) or not 0 < len(pid) <= MAX_ID_LENGTH:
            raise ValidationFailed("participants", f"ids must be 1 to {MAX_ID_LENGTH} characters")
    return out


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _check_noise(noise_multiplier: float, steps: int) -> None:
    if not (_real(noise_multiplier) and 0 < noise_multiplier < math.inf):
        raise ValidationFailed("noise_multiplier", "must be a positive finite number")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValidationFailed("steps", "must be a positive integer")


def _real(x: object) -> bool:
    return isinstance(x, int | float | np.floating | np.integer) and not isinstance(x, bool)
