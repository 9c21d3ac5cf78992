"""Byzantine detection for compute results: who disagrees with the accepted result of a task.

Fuel is exactly repeatable and outputs are deterministic (see ``fogcoord.compute``), so honest
replicas of a task agree on ``(output_hash, fuel_used)`` bit for bit. For each task the reference
is the strict plurality of replicas agreeing on that pair; every replica outside it is flagged,
with the reason (wrong output, wrong fuel, or both). A task whose largest groups tie has no
reference and flags nobody: guessing would punish honest devices as often as cheaters.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from fogcoord.contracts.privacy import ByzantineFlag, ParticipantData


def compute_flags(data: Sequence[ParticipantData]) -> list[ByzantineFlag]:
    by_task: dict[str, list[ParticipantData]] = defaultdict(list)
    for d in data:
        if d.task_id is not None and d.output_hash is not None:
            by_task[d.task_id].append(d)
    flags: list[ByzantineFlag] = []
    for task_id, replicas in by_task.items():
        votes = Counter((r.output_hash, r.fuel_used) for r in replicas)
        ranked = votes.most_common(2)
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            continue
        (ref_hash, ref_fuel), _ = ranked[0]
        for r in replicas:
            wrong_output = r.output_hash != ref_hash
            wrong_fuel = r.fuel_used != ref_fuel
            if wrong_output or wrong_fuel:
                what = (
                    "output and fuel"
                    if wrong_output and wrong_fuel
                    else ("output" if wrong_output else f"fuel {r.fuel_used} vs {ref_fuel}")
                )
                flags.append(
                    ByzantineFlag(
                        participant_id=r.participant_id,
                        task_id=task_id,
                        reason=f"disagrees with the accepted {what}",
                    )
                )
    return flags
