"""The federated-study workflow: select, send the model, train on devices, aggregate, pay.

Each round: devices with privacy budget left are selected (harvesting's selection, then the
privacy service's per-participant accounting); each gets the model and trains with the study's
trainer plugin, clips its update and returns it — in the clear to a robust aggregator, or hidden
by secure aggregation (whose server side the privacy service runs; this workflow only relays
its messages). The privacy service adds Gaussian noise calibrated to the clip norm and the
round's (epsilon, delta), flags Byzantine updates, and charges the round to exactly the
participants it used. Honest participants are paid from the study's escrow; the round is
recorded with its accuracy (devices' held-out accuracy, weighted by their examples) and the
privacy spent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.contracts.errors import Conflict, FogError, Forbidden, NotFound, ValidationFailed
from fogcoord.contracts.harvesting import (
    DeviceResultVerified,
    HarvestingProtocol,
    ResourceRequirements,
)
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.studies import (
    Aggregation,
    EncodedArray,
    RoundRecord,
    StudyRoundCompleted,
    StudySpec,
    StudyState,
    StudyStateChanged,
    StudyView,
    decode_model,
    encode_model,
)
from fogcoord.contracts.tokenomics import PayoutLeg, TokenomicsProtocol
from fogcoord.contracts.units import to_micro, to_tokens
from fogcoord.lifecycle import Publish, Resolve, ServiceBase, require_service
from fogcoord.studies.exchange import Exchange, Send
from fogcoord.studies.store import SqlStudyStore, pack, unpack

log = logging.getLogger(__name__)

NAME = "studies"
Connected = Callable[[str], bool]
Arrays = dict[str, np.ndarray[Any, Any]]


def flatten(arrays: Arrays, names: list[str]) -> np.ndarray[Any, Any]:
    return np.concatenate([arrays[n].astype(np.float64).ravel() for n in names])


def unflatten(vector: np.ndarray[Any, Any], like: Arrays, names: list[str]) -> Arrays:
    out: Arrays = {}
    at = 0
    for n in names:
        size = like[n].size
        out[n] = vector[at : at + size].reshape(like[n].shape).astype(like[n].dtype)
        at += size
    return out


class Study:
    def __init__(self, study_id: str, requester: str, wallet: str, spec: StudySpec) -> None:
        self.study_id = study_id
        self.requester = requester
        self.wallet = wallet
        self.spec = spec
        self.state = StudyState.CREATED
        self.reason = ""
        self.model: Arrays = decode_model(spec.model)
        self.names = sorted(self.model)
        self.history: list[RoundRecord] = []
        self.held = 0
        self.paid = 0
        self.flagged: dict[str, int] = {}
        self.attempts = 0
        self.task: asyncio.Task[None] | None = None


class StudyRunner(ServiceBase):
    service_type = NAME

    def __init__(
        self,
        engine: Callable[[], Engine],
        *,
        resolve: Resolve,
        send: Send,
        connected: Connected,
        default_delta: float,
        clock: Clock | None = None,
        publish: Publish | None = None,
    ) -> None:
        super().__init__(
            NAME,
            dependencies=("storage", "harvesting", "tokenomics", "privacy"),
            clock=clock,
            publish=publish,
        )
        self._engine = engine
        self._resolve = resolve
        self.exchange = Exchange(send)
        self._connected = connected
        self.default_delta = default_delta
        self._store: SqlStudyStore | None = None
        self.studies: dict[str, Study] = {}

    @property
    def store(self) -> SqlStudyStore:
        if self._store is None:
            raise RuntimeError("studies are not started")
        return self._store

    async def on_start(self) -> None:
        self._store = await asyncio.to_thread(SqlStudyStore, self._engine())
        for row in await asyncio.to_thread(self.store.all):
            study = Study(
                row["study_id"],
                row["requester"],
                row["wallet"],
                StudySpec.model_validate_json(row["spec"]),
            )
            study.state = StudyState(row["state"])
            study.reason = row["reason"] or ""
            study.model = unpack(row["model"])
            study.held, study.paid = row["held"], row["paid"]
            for record in await asyncio.to_thread(self.store.rounds, study.study_id):
                study.history.append(RoundRecord.model_validate_json(record))
            for r in study.history:
                for device in r.flagged:
                    study.flagged[device] = study.flagged.get(device, 0) + 1
            self.studies[study.study_id] = study
            if study.state is StudyState.RUNNING:
                self._launch(study)

    async def on_stop(self) -> None:
        for study in self.studies.values():
            if study.task is not None:
                study.task.cancel()
        tasks = [s.task for s in self.studies.values() if s.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def check_health(self) -> HealthStatus:
        running = sum(1 for s in self.studies.values() if s.state is StudyState.RUNNING)
        return HealthStatus.passing(f"{running} studies running")

    async def _svc(self, name: str) -> Any:
        return await require_service(self._resolve, name)

    def on_reply(self, device_id: str, message: dict[str, Any]) -> dict[str, Any]:
        taken = self.exchange.reply(device_id, message)
        return {"type": "ack", "request_id": message.get("request_id"), "taken": taken}

    # --- creation ------------------------------------------------------------------------------

    async def create(self, requester: str, spec: StudySpec) -> StudyView:
        tok = cast(TokenomicsProtocol, await self._svc("tokenomics"))
        wallet = spec.wallet or requester
        owner = tok.wallet_owner(wallet)
        if owner is None:
            raise NotFound("wallet", wallet)
        if owner != requester:
            raise Forbidden(f"wallet {wallet!r} belongs to another principal", wallet=wallet)
        try:
            model = decode_model(spec.model)
        except ValueError as exc:
            raise ValidationFailed("model", str(exc)) from None
        if spec.aggregation is not Aggregation.ROBUST and spec.clients_per_round < 3:
            raise ValidationFailed("clients_per_round", "secure aggregation needs at least 3")
        study_id = "study-" + secrets.token_hex(8)
        per_round = to_micro(spec.payment_per_round) * spec.clients_per_round
        held = per_round * spec.rounds
        study = Study(study_id, requester, wallet, spec)
        study.model = model
        if held > 0:
            await tok.hold_escrow(study_id, wallet, held)
            await tok.capture_escrow(study_id, held)
        study.held = held
        await asyncio.to_thread(
            self.store.create,
            {
                "study_id": study_id,
                "requester": requester,
                "wallet": wallet,
                "spec": spec.model_dump_json(),
                "state": StudyState.RUNNING.value,
                "reason": "",
                "rounds_done": 0,
                "model": pack(model),
                "held": held,
                "paid": 0,
                "created_at": self.clock.time(),
            },
        )
        study.state = StudyState.RUNNING
        self.studies[study_id] = study
        self.emit(StudyStateChanged(source=NAME, study_id=study_id, previous="", state="running"))
        self._launch(study)
        return self.view(study_id)

    def _launch(self, study: Study) -> None:
        study.task = asyncio.get_running_loop().create_task(self._run(study))

    # --- rounds --------------------------------------------------------------------------------

    async def _run(self, study: Study) -> None:
        spec = study.spec
        try:
            while len(study.history) < spec.rounds and study.state is StudyState.RUNNING:
                record = await self._round(study, len(study.history))
                if record is None:
                    await self.clock.sleep(1.0)  # not enough devices now: try again shortly
                    continue
            if study.state is StudyState.RUNNING:
                await self._end(study, StudyState.COMPLETED, "")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a study that cannot go on ends failed, with its money back
            log.exception("study %s failed", study.study_id)
            await self._end(study, StudyState.FAILED, str(exc) or type(exc).__name__)

    async def _select(self, study: Study, epsilon: float, delta: float) -> list[str]:
        spec = study.spec
        harvesting = cast(HarvestingProtocol, await self._svc("harvesting"))
        privacy = await self._svc("privacy")
        study.attempts += 1
        seed = len(study.history) * 1_000 + study.attempts
        try:
            candidates = await harvesting.select_participants(
                ResourceRequirements(count=spec.clients_per_round * 4, seed=seed)
            )
        except FogError as exc:
            available = exc.fields.get("eligible")
            if not available:
                return []
            # fewer eligible devices than asked for: take them all, budget decides below
            candidates = await harvesting.select_participants(
                ResourceRequirements(count=int(available), seed=seed)
            )
        live = [d for d in candidates if self._connected(d) and d not in study.flagged]
        await privacy.initialize_privacy_budgets(live)
        affordable: list[str] = await privacy.affordable(live, epsilon, delta)
        return affordable[: spec.clients_per_round]

    async def _round(self, study: Study, number: int) -> RoundRecord | None:
        spec = study.spec
        started = time.perf_counter()
        delta = spec.delta or self.default_delta
        chosen = await self._select(study, spec.epsilon, delta)
        minimum = 2 if spec.aggregation is Aggregation.ROBUST else 3
        if len(chosen) < minimum:
            log.info("study %s round %d: only %d devices", study.study_id, number, len(chosen))
            return None
        privacy = await self._svc("privacy")
        round_id = f"{study.study_id}:{number}"
        base = {
            "type": "study",
            "timeout": spec.round_timeout_seconds,
            "study_id": study.study_id,
            "round": number,
            "trainer": spec.trainer,
            "trainer_config": spec.trainer_config,
            "clip_norm": spec.clip_norm,
            "model": {k: v.model_dump() for k, v in encode_model(study.model).items()},
        }
        if spec.aggregation is Aggregation.ROBUST:
            outcome = await self._robust_round(study, chosen, base, round_id)
        else:
            outcome = await self._secure_round(study, chosen, base, round_id)
        used, total, flagged, metrics = outcome
        if not used:
            return None
        mean, sigma = await privacy.noisy_mean(
            total, len(used), spec.epsilon, delta, spec.clip_norm
        )
        try:
            # charged before the model moves: a round nobody could be charged for never counts
            spent = await privacy.charge_round(used, spec.epsilon, delta, round_id)
        except Conflict as exc:  # budget spent meanwhile (another study): try the round again
            log.info("study %s round %d not charged: %s", study.study_id, number, exc)
            return None
        step = unflatten(np.asarray(mean) * spec.server_learning_rate, study.model, study.names)
        study.model = {
            n: (study.model[n] + step[n]).astype(study.model[n].dtype) for n in study.names
        }
        paid = await self._pay(study, [d for d in used if d not in flagged], number)
        weights = [m["examples"] for m in metrics.values() if "accuracy" in m]
        acc = (
            float(
                np.average(
                    [m["accuracy"] for m in metrics.values() if "accuracy" in m], weights=weights
                )
            )
            if weights and sum(weights) > 0
            else None
        )
        losses = [m["loss"] for m in metrics.values() if "loss" in m]
        record = RoundRecord(
            round=number,
            participants=tuple(sorted(used)),
            dropped=tuple(sorted(set(chosen) - set(used))),
            flagged=flagged,
            accuracy=acc,
            loss=float(np.mean(losses)) if losses else None,
            noise_sigma=float(sigma),
            epsilon_spent_max=max(spent.values(), default=0.0),
            update_norm=float(np.linalg.norm(mean)),
            paid=to_tokens(paid),
            seconds=time.perf_counter() - started,
            aggregation=spec.aggregation.value,
        )
        for device in flagged:
            study.flagged[device] = study.flagged.get(device, 0) + 1
            # a poisoned update is a refuted result: the device loses trust like a cheater
            self.emit(
                DeviceResultVerified(source=NAME, device_id=device, task_id=round_id, valid=False)
            )
        study.history.append(record)
        study.paid += paid
        await asyncio.to_thread(
            self.store.finish_round,
            study.study_id,
            number,
            record.model_dump_json(),
            rounds_done=len(study.history),
            model=pack(study.model),
            paid=study.paid,
        )
        self.emit(
            StudyRoundCompleted(
                source=NAME,
                study_id=study.study_id,
                round=number,
                participants=len(used),
                flagged=len(flagged),
                accuracy=acc,
                epsilon_spent_max=record.epsilon_spent_max,
            )
        )
        return record

    async def _robust_round(
        self, study: Study, chosen: list[str], base: dict[str, Any], round_id: str
    ) -> tuple[list[str], np.ndarray[Any, Any], dict[str, str], dict[str, dict[str, float]]]:
        spec = study.spec
        replies = await self.exchange.gather(
            {d: {**base, "op": "train"} for d in chosen}, spec.round_timeout_seconds
        )
        updates: dict[str, np.ndarray[Any, Any]] = {}
        metrics: dict[str, dict[str, float]] = {}
        for device, reply in replies.items():
            try:
                arrays = {
                    k: EncodedArray.model_validate(v).decode()
                    for k, v in dict(reply["update"]).items()
                }
                vector = flatten(arrays, study.names)
            except (KeyError, ValueError, TypeError) as exc:
                log.info("study %s: unusable update from %s: %s", study.study_id, device, exc)
                continue
            if vector.size != sum(study.model[n].size for n in study.names):
                continue
            # the device says it clipped; the coordinator makes sure (sensitivity depends on it)
            norm = float(np.linalg.norm(vector))
            if norm > spec.clip_norm:
                vector *= spec.clip_norm / norm
            updates[device] = vector
            metrics[device] = {
                "examples": float(reply.get("examples", 0)),
                **{k: float(v) for k, v in dict(reply.get("metrics", {})).items()},
            }
        if len(updates) < 2:
            return [], np.zeros(0), {}, {}
        privacy = await self._svc("privacy")
        aggregate, flags, too_many = await privacy.robust_aggregate(
            updates, spec.robust_method.value, round_id
        )
        flagged = {} if too_many else {f.participant_id: f.reason for f in flags}
        used = list(updates)
        # the robust aggregate is a mean; the noise is calibrated on the sum of clipped updates
        return used, np.asarray(aggregate) * len(used), flagged, metrics

    async def _secure_round(
        self, study: Study, chosen: list[str], base: dict[str, Any], round_id: str
    ) -> tuple[list[str], np.ndarray[Any, Any], dict[str, str], dict[str, dict[str, float]]]:
        """SecAgg+ among all participants, or inside random groups with robust aggregation
        across the group sums; the coordinator relays protocol messages and sees only sums."""
        spec = study.spec
        privacy = await self._svc("privacy")
        if spec.aggregation is Aggregation.SECURE:
            groups = [chosen]
        else:
            groups = privacy.groups(chosen, spec.group_size, round_id)
        length = sum(study.model[n].size for n in study.names)
        results = await asyncio.gather(
            *(
                self._secagg_group(f"{round_id}:g{i}", members, base, length)
                for i, members in enumerate(groups)
            ),
            return_exceptions=True,
        )
        sums: dict[str, np.ndarray[Any, Any]] = {}
        sizes: dict[str, int] = {}
        used: list[str] = []
        metrics: dict[str, dict[str, float]] = {}
        for i, outcome in enumerate(results):
            if isinstance(outcome, BaseException):
                log.info("study %s: group %d gave no sum: %s", study.study_id, i, outcome)
                continue
            total, included, group_metrics = outcome
            sums[f"g{i}"], sizes[f"g{i}"] = total, len(included)
            used += included
            metrics.update(group_metrics)
        if not sums:
            return [], np.zeros(0), {}, {}
        if spec.aggregation is Aggregation.SECURE or len(sums) < 3:
            total = np.sum(list(sums.values()), axis=0)
        else:
            mean = await privacy.grouped_aggregate(sums, sizes, spec.robust_method.value)
            total = np.asarray(mean) * len(used)
        return used, total, {}, metrics

    async def _secagg_group(
        self, session: str, members: list[str], base: dict[str, Any], length: int
    ) -> tuple[np.ndarray[Any, Any], list[str], dict[str, dict[str, float]]]:
        privacy = await self._svc("privacy")
        timeout = float(base.get("timeout", 60.0))
        setups = privacy.secagg_open(session, members, length, float(base["clip_norm"]))
        replies = await self.exchange.gather(
            {
                d: {**base, "op": "secagg_setup", "session": session, "message": m}
                for d, m in setups.items()
            },
            timeout,
        )
        metrics = {
            d: {
                "examples": float(r.get("examples", 0)),
                **{k: float(v) for k, v in dict(r.get("metrics", {})).items()},
            }
            for d, r in replies.items()
            if "message" in r
        }
        answers = {d: str(r["message"]) for d, r in replies.items() if "message" in r}
        while True:
            requests, total, included = privacy.secagg_step(session, answers)
            if total is not None:
                return np.asarray(total), list(included), metrics
            replies = await self.exchange.gather(
                {
                    d: {"type": "study", "op": "secagg", "session": session, "message": m}
                    for d, m in requests.items()
                },
                timeout,
            )
            answers = {d: str(r["message"]) for d, r in replies.items() if "message" in r}

    async def _pay(self, study: Study, devices: list[str], number: int) -> int:
        amount = to_micro(study.spec.payment_per_round)
        if amount <= 0 or not devices:
            return 0
        tok = cast(TokenomicsProtocol, await self._svc("tokenomics"))
        harvesting = cast(HarvestingProtocol, await self._svc("harvesting"))
        standing = await harvesting.device_standing(devices)
        legs = []
        for device in sorted(devices):
            owner = standing[device].owner if device in standing else ""
            if not owner:
                continue
            if tok.wallet_owner(owner) is None:
                await tok.initialize_wallet(owner)
            legs.append(
                PayoutLeg(
                    transfer_id=f"study:{study.study_id}:{number}:{device}",
                    to_wallet=owner,
                    amount_micro=amount,
                    memo=f"study {study.study_id} round {number}",
                )
            )
        if not legs:
            return 0
        await tok.pay_from_escrow(study.study_id, legs)
        return amount * len(legs)

    async def _end(self, study: Study, state: StudyState, reason: str) -> None:
        previous = study.state
        study.state, study.reason = state, reason
        if study.held > 0:
            tok = cast(TokenomicsProtocol, await self._svc("tokenomics"))
            await tok.close_escrow(study.study_id)
        await asyncio.to_thread(self.store.update, study.study_id, state=state.value, reason=reason)
        self.emit(
            StudyStateChanged(
                source=NAME,
                study_id=study.study_id,
                previous=previous.value,
                state=state.value,
                reason=reason,
            )
        )

    async def cancel(self, study_id: str, requester: str) -> StudyView:
        study = self._study(study_id)
        if study.requester != requester:
            raise Forbidden("only the requester may cancel its study")
        if study.state is not StudyState.RUNNING:
            raise Conflict(f"study {study_id} is {study.state.value}")
        if study.task is not None:
            study.task.cancel()
        await self._end(study, StudyState.CANCELLED, "cancelled by the requester")
        return self.view(study_id)

    # --- views ---------------------------------------------------------------------------------

    def _study(self, study_id: str) -> Study:
        study = self.studies.get(study_id)
        if study is None:
            raise NotFound("study", study_id)
        return study

    def view(self, study_id: str) -> StudyView:
        s = self._study(study_id)
        return StudyView(
            study_id=s.study_id,
            name=s.spec.name,
            requester=s.requester,
            state=s.state,
            reason=s.reason,
            trainer=s.spec.trainer,
            aggregation=s.spec.aggregation,
            rounds=s.spec.rounds,
            rounds_done=len(s.history),
            clients_per_round=s.spec.clients_per_round,
            epsilon_per_round=s.spec.epsilon,
            delta=s.spec.delta or self.default_delta,
            held=to_tokens(s.held),
            paid=to_tokens(s.paid),
            history=tuple(s.history),
            flagged_total=dict(s.flagged),
        )

    def model(self, study_id: str) -> dict[str, EncodedArray]:
        return encode_model(self._study(study_id).model)

    def list_studies(self, requester: str | None = None) -> list[StudyView]:
        return [
            self.view(s.study_id)
            for s in self.studies.values()
            if requester is None or s.requester == requester
        ]
