"""Reverse auctions: the rules an ask must pass and the uniform-price clearing.

An auction buys ``slots`` devices to share a stated amount of work. Providers ask a price per
GFLOP; the ``slots`` lowest eligible asks win (ties: higher trust first, then the earlier ask) and
every winner is paid the same clearing price per GFLOP:

- the (N+1)-th lowest eligible ask when there is one. This is the multi-unit Vickrey rule for
  providers that each supply one slot: a winner's ask only decides *whether* it wins, never what
  it is paid, and a loser could only have won by asking below a price it finds too low. So asking
  one's true cost is the best strategy: nobody gains by shading an ask up or down;
- the N-th (highest winning) ask when only N (or fewer, on a partial fill) eligible asks exist.
  The price then depends on a winner's own ask, so the marginal winner has a reason to ask above
  its cost: truthfulness is given up for the marginal provider, and in exchange the requester
  still gets its slots without waiting for a competitor that may never come.

Prices are integer micro-tokens per GFLOP. Asks sit on a grid: ``step`` is
``min_bid_increment`` x the auction's quoted price per GFLOP (at least one micro-token), because the
seed's increment of 0.01 read as tokens would be ten times its own base price of 0.001 per GFLOP;
read as a fraction it is a 1 % grid, which is what an increment that small is for. A provider may
replace its ask only by lowering it at least one step, so an auction converges and cannot be
spammed with sideways moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from fogcoord.contracts.errors import Conflict
from fogcoord.contracts.marketplace import AuctionResult, AuctionStatus


class BidRefused(Conflict):
    """An ask broke one of the auction's rules; ``rule`` names which."""

    code = "bid_refused"

    def __init__(self, auction_id: str, rule: str, reason: str) -> None:
        super().__init__(f"ask refused ({rule}): {reason}", auction_id=auction_id, rule=rule)
        self.rule = rule


@dataclass(slots=True)
class AskRec:
    provider: str
    owner: str
    price: int
    seq: int
    at: float


@dataclass(slots=True)
class AuctionState:
    auction_id: str
    requester: str
    wallet: str
    escrow_id: str
    job_id: str | None
    slots: int
    gflop: Decimal
    ceiling: int
    floor: int
    step: int
    quote_price: int
    hold: int
    opened_at: float
    closes_at: float
    allow_partial: bool
    status: AuctionStatus = AuctionStatus.OPEN
    asks: dict[str, AskRec] = field(default_factory=dict)
    result: AuctionResult | None = None
    price: int | None = None
    """Clearing price per GFLOP once settled."""
    closed: bool = False
    """The job has ended: pending payouts posted or voided and the escrow emptied."""
    seq: int = 0
    column_provider: list[str] = field(default_factory=list)
    column_price: list[int] = field(default_factory=list)
    column_seq: list[int] = field(default_factory=list)
    column_index: dict[str, int] = field(default_factory=dict)

    def check(self, provider: str, owner: str, price: int, now: float) -> None:
        """Raise ``BidRefused`` naming the first rule the ask breaks."""
        aid = self.auction_id
        if self.status is not AuctionStatus.OPEN:
            raise BidRefused(aid, "auction_closed", f"the auction is {self.status.value}")
        if now >= self.closes_at:
            raise BidRefused(aid, "auction_expired", "the auction's time is over")
        if owner == self.requester:
            raise BidRefused(aid, "own_auction", "a requester cannot bid in its own auction")
        if price > self.ceiling:
            raise BidRefused(aid, "above_ceiling", f"{price} > ceiling {self.ceiling} micro/GFLOP")
        if price < self.floor:
            raise BidRefused(aid, "below_reserve", f"{price} < reserve {self.floor} micro/GFLOP")
        if price % self.step:
            raise BidRefused(aid, "off_grid", f"asks are multiples of {self.step} micro/GFLOP")
        current = self.asks.get(provider)
        if current is not None and price > current.price - self.step:
            raise BidRefused(
                aid,
                "not_lower",
                f"a new ask must be at least {self.step} below the current {current.price}",
            )

    def place(self, provider: str, owner: str, price: int, now: float) -> AskRec:
        self.seq += 1
        rec = AskRec(provider, owner, price, self.seq, now)
        self.asks[provider] = rec
        # the same asks column-wise, kept as they come: settlement reads thousands at once
        at = self.column_index.get(provider)
        if at is None:
            self.column_index[provider] = len(self.column_provider)
            self.column_provider.append(provider)
            self.column_price.append(price)
            self.column_seq.append(self.seq)
        else:
            self.column_price[at] = price
            self.column_seq[at] = self.seq
        return rec

    def withdraw(self, providers: list[str]) -> None:
        """Drop these asks (no longer eligible); the columns are rebuilt from what is left."""
        for p in providers:
            self.asks.pop(p, None)
        left = sorted(self.asks.values(), key=lambda x: x.seq)
        self.column_provider = [x.provider for x in left]
        self.column_price = [x.price for x in left]
        self.column_seq = [x.seq for x in left]
        self.column_index = {p: i for i, p in enumerate(self.column_provider)}


@dataclass(frozen=True, slots=True)
class Clearing:
    winners: tuple[str, ...]
    price: int | None
    """Clearing price per GFLOP in micro-tokens; None when nobody won."""
    status: AuctionStatus
    reason: str = ""


def rank_columns(
    price: npt.NDArray[np.int64], trust: npt.NDArray[np.float64], seq: npt.NDArray[np.int64]
) -> npt.NDArray[np.intp]:
    """Ask indices from best to worst: lowest price, then highest trust, then earliest."""
    # lexsort sorts by the last key first
    return np.lexsort((seq, -trust, price))


def clear_columns(
    providers: Sequence[str],
    price: npt.NDArray[np.int64],
    trust: npt.NDArray[np.float64],
    seq: npt.NDArray[np.int64],
    slots: int,
    allow_partial: bool,
) -> Clearing:
    """Winners and uniform price among eligible asks given column-wise (what settlement uses)."""
    n = len(providers)
    order = rank_columns(price, trust, seq)
    if n > slots:
        top = order[:slots].tolist()
        return Clearing(
            tuple(providers[i] for i in top), int(price[order[slots]]), AuctionStatus.SETTLED
        )
    if n == slots or (n > 0 and allow_partial):
        status = AuctionStatus.SETTLED if n == slots else AuctionStatus.PARTIAL
        return Clearing(tuple(providers[i] for i in order.tolist()), int(price[order[-1]]), status)
    return Clearing(
        (), None, AuctionStatus.FAILED, f"{n} eligible asks for {slots} slots, no partial fill"
    )


def _columns(
    asks: Sequence[AskRec],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    price = np.fromiter((a.price for a in asks), dtype=np.int64, count=len(asks))
    seq = np.fromiter((a.seq for a in asks), dtype=np.int64, count=len(asks))
    return price, seq


def rank(asks: Sequence[AskRec], trust: Sequence[float]) -> list[int]:
    """Indices of ``asks`` from best to worst: lowest price, then highest trust, then earliest."""
    if not asks:
        return []
    price, seq = _columns(asks)
    return [int(i) for i in rank_columns(price, np.asarray(trust, dtype=np.float64), seq)]


def clear(
    asks: Sequence[AskRec], trust: Sequence[float], slots: int, allow_partial: bool
) -> Clearing:
    """Winners and uniform price among ``asks``, all of which are eligible."""
    price, seq = _columns(asks)
    return clear_columns(
        [a.provider for a in asks],
        price,
        np.asarray(trust, dtype=np.float64),
        seq,
        slots,
        allow_partial,
    )
