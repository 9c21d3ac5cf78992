"""Participant selection: vectorised filters, score-weighted sampling, one device per owner.

Among the devices that pass every hard limit and the request's own filters, devices are drawn
without replacement with probability proportional to their suitability score (the
Efraimidis-Spirakis method: the largest ``log(u) / score`` keys win), then at most one device per
owner is kept, so one person cannot hold several replicas of the same work. With a seed the draw
is reproducible.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fogcoord.config import ParticipantSelectionConfig
from fogcoord.contracts.errors import FogError
from fogcoord.contracts.harvesting import ResourceRequirements
from fogcoord.harvesting.registry import DeviceRegistry, network_code
from fogcoord.harvesting.suitability import LIMITS, limit_masks, scores


class InsufficientDevices(FogError):
    """Not enough eligible devices; ``excluded`` says how many each limit removed."""

    code = "insufficient_devices"
    http_status = 409

    def __init__(self, requested: int, eligible: int, excluded: dict[str, int]) -> None:
        worst = sorted(excluded.items(), key=lambda kv: -kv[1])
        why = ", ".join(f"{name}: {count}" for name, count in worst if count) or "no devices"
        super().__init__(
            f"{requested} devices requested but only {eligible} eligible (excluded by {why})",
            requested=requested,
            eligible=eligible,
            excluded=excluded,
        )


def candidate_mask(
    reg: DeviceRegistry, cfg: ParticipantSelectionConfig, req: ResourceRequirements
) -> tuple[npt.NDArray[np.bool_], dict[str, int]]:
    """Rows passing every limit and filter, and per limit how many rows it excluded first."""
    n = reg.size
    active = reg.active[:n]
    checks: list[tuple[str, npt.NDArray[np.bool_]]] = [
        (name, mask) for name, mask in limit_masks(reg, cfg).items()
    ]
    if req.min_ram_mb is not None:
        checks.append(("min_ram_mb", reg.ram_mb[:n] < req.min_ram_mb))
    if req.min_gflops is not None:
        checks.append(("min_gflops", reg.gflops[:n] < req.min_gflops))
    if req.regions:
        codes = [c for c in (reg.regions.lookup(r) for r in req.regions) if c is not None]
        checks.append(("region", ~np.isin(reg.region[:n], codes)))
    if req.networks:
        checks.append(
            ("network", ~np.isin(reg.network[:n], [network_code(x) for x in req.networks]))
        )
    if req.exclude_owners:
        codes = [c for c in (reg.owners.lookup(o) for o in req.exclude_owners) if c is not None]
        checks.append(("excluded_owner", np.isin(reg.owner[:n], codes)))
    checks.append(("reserved_by_burst", reg.reserved[:n]))
    remaining = active.copy()
    excluded: dict[str, int] = {}
    for name, bad in checks:
        hit = remaining & bad
        excluded[name] = int(hit.sum())
        remaining &= ~bad
    for name in LIMITS:
        excluded.setdefault(name, 0)
    return remaining, excluded


def select(
    reg: DeviceRegistry, cfg: ParticipantSelectionConfig, req: ResourceRequirements
) -> list[str]:
    mask, excluded = candidate_mask(reg, cfg, req)
    cand = np.flatnonzero(mask)
    weights = np.maximum(scores(reg, cfg, cand).astype(np.float64), 1e-9)
    rng = np.random.default_rng(req.seed)
    keys = np.log(rng.random(cand.size)) / weights
    # Only the best few keys can win: rank a short list first (linear time) and fall back to
    # ranking everything when owner duplicates leave it short.
    short = min(cand.size, max(4 * req.count, 64))
    distinct = _distinct_owners(reg, cand, keys, short)
    if distinct.size < req.count and short < cand.size:
        distinct = _distinct_owners(reg, cand, keys, cand.size)
    if distinct.size < req.count:
        excluded["same_owner"] = int(cand.size - distinct.size)
        raise InsufficientDevices(req.count, int(distinct.size), excluded)
    return reg.device_ids(distinct[: req.count])


def _distinct_owners(
    reg: DeviceRegistry,
    cand: npt.NDArray[np.intp],
    keys: npt.NDArray[np.float64],
    top: int,
) -> npt.NDArray[np.intp]:
    """The candidates with the ``top`` largest keys, best first, keeping one per owner."""
    if top < cand.size:
        part = np.argpartition(-keys, top - 1)[:top]
        order = part[np.argsort(-keys[part], kind="stable")]
    else:
        order = np.argsort(-keys, kind="stable")
    ranked = cand[order]
    _, first = np.unique(reg.owner[ranked], return_index=True)
    first.sort()
    out: npt.NDArray[np.intp] = ranked[first]
    return out
