"""A federated study end to end on one machine.

It serves a coordinator on a free local port (in a temporary data directory), starts a workforce
of real agents (each with its own key, device identity and WebSocket channel; a few of them send
poisoned updates), creates a study as a requester, follows its rounds and evaluates the final
model on the task's held-out set.

    python examples/federated/run_study.py                      # robust aggregation
    python examples/federated/run_study.py --aggregation secure
    python examples/federated/run_study.py --aggregation grouped --group-size 4
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

from fogcoord.agent.workforce import Workforce
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogClient
from fogcoord.config import parse_config
from fogcoord.contracts.studies import StudySpec, StudyState, decode_model, encode_model
from fogcoord.coordinator import Coordinator
from fogcoord.serve import serve
from fogcoord.trainers.logreg import accuracy, held_out_set, initial_model


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aggregation", default="robust", choices=["robust", "secure", "grouped"])
    parser.add_argument("--method", default="multi_krum", help="robust method")
    parser.add_argument("--group-size", type=int, default=5)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--poisoners", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=20, help="clients per round")
    parser.add_argument("--epsilon", type=float, default=4.0, help="per round")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--budget", type=float, default=40.0, help="epsilon per participant")
    return parser.parse_args()


async def run(args: argparse.Namespace) -> None:
    config = parse_config(
        {
            "server": {"data_dir": tempfile.mkdtemp(prefix="fog-study-"), "port": 0},
            "privacy": {"differential_privacy": {"budget_per_participant": args.budget}},
        }
    )
    x_test, y_test = held_out_set({})

    async def on_ready(coord: Coordinator, port: int) -> bool:
        url = f"http://127.0.0.1:{port}"
        operator = coord.auth.bootstrap_key
        assert operator is not None
        workforce = Workforce(url, operator.key, args.devices, poisoners=args.poisoners)
        await workforce.start()
        print(f"{await workforce.wait_online()} of {args.devices} devices online")
        try:
            async with FogClient(url, operator.key) as admin:
                issued = await admin.create_key(kind=PrincipalKind.REQUESTER, name="researcher")
            async with FogClient(url, issued.key) as fog:
                await fog.create_wallet()
                await follow(fog, args, workforce.poisoner_ids(), x_test, y_test)
        finally:
            await workforce.stop()
        return False  # stop serving

    await serve(config, on_ready=on_ready)


async def follow(
    fog: FogClient, args: argparse.Namespace, poisoners: set[str], x: Any, y: Any
) -> None:
    """Create the study, print each round as it is recorded, then judge the final model."""
    spec = StudySpec(
        name="logreg example",
        model=encode_model(initial_model({})),
        trainer="logreg",
        rounds=args.rounds,
        clients_per_round=args.clients,
        clip_norm=args.clip,
        epsilon=args.epsilon,
        aggregation=args.aggregation,
        robust_method=args.method,
        group_size=args.group_size,
    )
    view = await fog.create_study(spec)
    print(
        f"study {view.study_id}: {view.aggregation.value} aggregation, {view.rounds} rounds of "
        f"{view.clients_per_round}, epsilon {view.epsilon_per_round} per round "
        f"(delta {view.delta:g}), {view.held} tokens in escrow"
    )
    print("round  devices  dropped  flagged  accuracy   loss  noise sigma  max epsilon  paid")
    shown = 0
    started = time.monotonic()
    while view.state is StudyState.RUNNING and time.monotonic() - started < 300:
        await asyncio.sleep(0.1)
        view = await fog.study(view.study_id)
        for record in view.history[shown:]:
            # accuracy and loss: the devices' own held-out data after their local training
            acc = f"{record.accuracy:8.3f}" if record.accuracy is not None else "       -"
            loss = f"{record.loss:6.3f}" if record.loss is not None else "     -"
            print(
                f"{record.round:5d}  {len(record.participants):7d}  {len(record.dropped):7d}  "
                f"{len(record.flagged):7d}  {acc}  {loss}  {record.noise_sigma:11.3f}  "
                f"{record.epsilon_spent_max:11.2f}  {record.paid}"
            )
        shown = len(view.history)
    print(f"study {view.state.value} {view.reason}".rstrip())
    flagged = set(view.flagged_total)
    print(f"poisoners: {len(poisoners)} in the workforce, {len(flagged & poisoners)} flagged")
    for device in sorted(poisoners):
        rounds = [r.round for r in view.history if device in r.participants]
        caught = [r.round for r in view.history if device in r.flagged]
        if caught:
            how = f"took part in rounds {rounds}, flagged in round {caught[0]}"
        elif rounds:
            how = f"took part in rounds {rounds} and was not flagged"
        else:
            how = "never selected"
        print(f"  {device}: {how}")
    if flagged - poisoners:
        print(f"honest devices flagged: {sorted(flagged - poisoners)}")
    final = decode_model(await fog.study_model(view.study_id))
    print(f"paid {view.paid} tokens to the participants")
    print(f"held-out accuracy of the final model: {accuracy(final, x, y):.3f}")


if __name__ == "__main__":
    asyncio.run(run(arguments()))
