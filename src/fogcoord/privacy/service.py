"""FogPrivacyService: differential privacy with per-participant budgets, robust aggregation,
Byzantine detection (of compute results and of model updates), secure aggregation, and the onion
network: the relay directory, circuits from the coordinator and hosted hidden services.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, cast

import numpy as np
from sqlalchemy.engine import Engine

from fogcoord import secagg
from fogcoord.clock import Clock
from fogcoord.config import PrivacyConfig
from fogcoord.contracts.errors import Conflict, FeatureUnavailable, NotFound, ValidationFailed
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.contracts.privacy import (
    ByzantineFlag,
    ByzantineFlagged,
    HiddenServiceSpec,
    OnionRoute,
    ParticipantData,
    RouteSpec,
    Tensor,
)
from fogcoord.contracts.tokenomics import Transaction
from fogcoord.lifecycle import Publish, ServiceBase
from fogcoord.onion.client import Circuit, OnionClient
from fogcoord.onion.directory import PathError
from fogcoord.onion.streams import OnionError, Stream
from fogcoord.privacy.budgets import BudgetBook
from fogcoord.privacy.byzantine import compute_flags
from fogcoord.privacy.detect import detect_updates
from fogcoord.privacy.dp import apply_dp, gaussian_sigma
from fogcoord.privacy.grouped import grouped_robust_aggregate, random_groups
from fogcoord.privacy.hidden_services import HiddenServiceHost
from fogcoord.privacy.onion_directory import OnionDirectory
from fogcoord.privacy.robust import robust_mean

NAME = "privacy"
log = logging.getLogger(__name__)


class TooManyByzantine(Conflict):
    """More participants look Byzantine than the configured tolerance: no one is named."""

    code = "too_many_byzantine"

    def __init__(self, share: float, tolerance: float) -> None:
        super().__init__(
            f"{share:.0%} of the participants look Byzantine, more than the tolerated "
            f"{tolerance:.0%}: refusing to guess which",
            suspected_share=share,
            tolerance=tolerance,
        )


class FogPrivacyService(ServiceBase):
    service_type = NAME

    def __init__(
        self,
        config: PrivacyConfig,
        engine: Callable[[], Engine],
        *,
        clock: Clock | None = None,
        publish: Publish | None = None,
        rng: np.random.Generator | None = None,
        resolve: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(NAME, dependencies=("storage",), clock=clock, publish=publish)
        self._resolve = resolve
        self.config = config
        self._engine = engine
        self._budgets: BudgetBook | None = None
        self._rng = rng
        self._sessions: dict[str, Any] = {}
        self._directory: OnionDirectory | None = None
        self._hidden: HiddenServiceHost | None = None
        self._routes: dict[int, tuple[OnionClient, Circuit]] = {}
        self._route_id = 0
        self.flagged = 0

    async def on_start(self) -> None:
        dp = self.config.differential_privacy
        self._budgets = await asyncio.to_thread(
            BudgetBook,
            self._engine(),
            budget_epsilon=dp.budget_per_participant,
            delta=dp.default_delta,
        )
        self._directory = await asyncio.to_thread(OnionDirectory, self._engine())
        directory = self._directory
        self._hidden = await asyncio.to_thread(
            HiddenServiceHost,
            self._engine(),
            lambda: directory.consensus().verify(directory.authority.public_key),
            self._pay_access,
            replication_factor=self.config.hidden_services.replication_factor,
        )
        await self._hidden.restore()

    async def on_stop(self) -> None:
        if self._hidden is not None:
            await self._hidden.close()
        for route_id in list(self._routes):
            await self.close_route(route_id)

    @property
    def budgets(self) -> BudgetBook:
        if self._budgets is None:
            raise RuntimeError("privacy is not started")
        return self._budgets

    async def check_health(self) -> HealthStatus:
        return HealthStatus.passing(f"{self.flagged} participants flagged")

    def _generator(self) -> np.random.Generator:
        # production noise comes from a generator seeded by the OS for every call; tests inject
        return self._rng if self._rng is not None else np.random.default_rng(secrets.randbits(128))

    # --- differential privacy and budgets ------------------------------------------------------

    async def initialize_privacy_budgets(self, participants: list[str]) -> dict[str, float]:
        """Give each participant ``budget_per_participant`` (once); remaining epsilon each."""
        return await asyncio.to_thread(self.budgets.initialize, participants)

    def noise_multiplier(self, epsilon: float, delta: float | None = None) -> float:
        """Gaussian noise per unit of sensitivity for (epsilon, delta) in one round."""
        return gaussian_sigma(epsilon, delta or self.config.differential_privacy.default_delta)

    async def affordable(
        self, participants: list[str], epsilon: float, delta: float | None = None
    ) -> list[str]:
        """Those who can take one more round at (epsilon, delta), in the order given."""
        z = self.noise_multiplier(epsilon, delta)
        able = set(await asyncio.to_thread(self.budgets.can_afford, participants, z))
        return [p for p in participants if p in able]

    async def charge_round(
        self, participants: list[str], epsilon: float, delta: float | None, round_id: str
    ) -> dict[str, float]:
        """Charge exactly these participants for one round (all or none); epsilon spent each."""
        z = self.noise_multiplier(epsilon, delta)
        return await asyncio.to_thread(self.budgets.charge, participants, z, round_id)

    def budget_view(self) -> list[dict[str, Any]]:
        return self.budgets.view()

    async def apply_differential_privacy(
        self,
        data: Tensor,
        epsilon: float,
        *,
        delta: float | None = None,
        clip_norm: float = 1.0,
        mechanism: str = "gaussian",
    ) -> Tensor:
        """Clip ``data`` to ``clip_norm`` (L2) and add noise calibrated for (epsilon, delta)."""
        return apply_dp(
            data,
            epsilon,
            delta=delta or self.config.differential_privacy.default_delta,
            clip_norm=clip_norm,
            mechanism=cast(Any, mechanism),
            rng=self._generator(),
        )

    async def noisy_mean(
        self,
        total: np.ndarray[Any, Any],
        count: int,
        epsilon: float,
        delta: float | None,
        clip_norm: float,
    ) -> tuple[np.ndarray[Any, Any], float]:
        """Central DP: the mean of ``count`` clipped contributions summing to ``total``.

        Gaussian noise with sigma = noise multiplier x ``clip_norm`` (one participant changes the
        sum by at most the clip norm) is added to the sum before dividing; returns (mean, sigma).
        """
        if count <= 0:
            raise ValidationFailed("count", "at least one contribution")
        sigma = self.noise_multiplier(epsilon, delta) * clip_norm
        vector = np.asarray(total, dtype=np.float64)
        noise = self._generator().standard_normal(vector.shape) * sigma
        return (vector + noise) / count, sigma

    # --- robust aggregation --------------------------------------------------------------------

    async def robust_aggregate(
        self, updates: dict[str, np.ndarray[Any, Any]], method: str, round_id: str
    ) -> tuple[np.ndarray[Any, Any], list[ByzantineFlag], bool]:
        """A robust mean of the updates, the participants flagged, and whether too many looked
        Byzantine to name any (then none is flagged and the aggregate is still robust)."""
        aggregate, flags, too_many = await asyncio.to_thread(
            self._robust, updates, method, round_id
        )
        self._flag(flags)
        return aggregate, flags, too_many

    def _robust(
        self, updates: dict[str, np.ndarray[Any, Any]], method: str, round_id: str
    ) -> tuple[np.ndarray[Any, Any], list[ByzantineFlag], bool]:
        tolerance = self.config.secure_aggregation.byzantine_tolerance
        detection = detect_updates(updates, tolerance, round_id=round_id)
        ids = list(updates)
        matrix = np.stack([np.asarray(updates[i], dtype=np.float64) for i in ids])
        try:
            aggregate = robust_mean(matrix, method, tolerance)
        except ValueError:
            # too few updates for this method (Krum needs n >= 2f + 3): the coordinate-wise
            # median still aggregates, with the protection so few updates allow
            aggregate = robust_mean(matrix, "median", tolerance)
        flags = [] if detection.too_many else list(detection.flags)
        return aggregate, flags, detection.too_many

    def groups(self, participants: list[str], group_size: int, seed: str) -> list[list[str]]:
        """Random groups of at least ``group_size``, the same for anyone with the seed."""
        return random_groups(participants, group_size, seed)

    async def grouped_aggregate(
        self,
        group_sums: dict[str, np.ndarray[Any, Any]],
        group_sizes: dict[str, int],
        method: str,
    ) -> np.ndarray[Any, Any]:
        """Robust aggregation across secure group sums: one spoiled group cannot steer it."""
        tolerance = self.config.secure_aggregation.byzantine_tolerance
        f = min(int(tolerance * len(group_sums)), max(0, (len(group_sums) - 3) // 2))
        method = method if method in ("median", "trimmed_mean", "krum", "multi_krum") else "median"
        return await asyncio.to_thread(
            grouped_robust_aggregate, group_sums, group_sizes, cast(Any, method), f
        )

    def _flag(self, flags: list[ByzantineFlag]) -> None:
        self.flagged += len(flags)
        for f in flags:
            self.emit(
                ByzantineFlagged(
                    source=NAME, participant_id=f.participant_id, task_id=f.task_id, reason=f.reason
                )
            )

    async def detect_byzantine_behavior(self, participant_data: list[ParticipantData]) -> list[str]:
        """Ids of the participants whose compute results disagree with the accepted one."""
        return sorted({f.participant_id for f in await self.explain_byzantine(participant_data)})

    async def explain_byzantine(
        self, participant_data: list[ParticipantData]
    ) -> list[ByzantineFlag]:
        updates = {d.participant_id: d.update for d in participant_data if d.update is not None}
        if updates:
            round_id = next((d.task_id for d in participant_data if d.task_id), "") or ""
            tolerance = self.config.secure_aggregation.byzantine_tolerance
            detection = await asyncio.to_thread(
                detect_updates,
                {k: np.asarray(v, dtype=np.float64).ravel() for k, v in updates.items()},
                tolerance,
                round_id=round_id,
            )
            if detection.too_many:
                raise TooManyByzantine(detection.suspected_share, tolerance)
            self._flag(list(detection.flags))
            return list(detection.flags)
        flags = compute_flags(participant_data)
        self.flagged += len(flags)
        for f in flags:
            self.emit(
                ByzantineFlagged(
                    source=NAME, participant_id=f.participant_id, task_id=f.task_id, reason=f.reason
                )
            )
        return flags

    # --- secure aggregation --------------------------------------------------------------------

    def secagg_shape(self, n: int) -> tuple[int | None, int]:
        """(neighbours, threshold) for ``n`` clients: the complete graph (SecAgg) up to 30
        clients, then SecAgg+ with about 2 log2(n) + 1 neighbours; the threshold is a strict
        majority of a client's neighbourhood, never below ``threshold_participants``."""
        floor = self.config.secure_aggregation.threshold_participants
        if n <= 30:
            k = n - 1
            neighbours = None
        else:
            k = min(n - 1, 2 * math.ceil(math.log2(n)) + 1)
            neighbours = k
        threshold = min(k, max(floor, k // 2 + 1))
        return neighbours, threshold

    async def secure_aggregate(
        self, gradients: dict[str, Tensor], *, clip: float | None = None
    ) -> Tensor:
        """The sum of the participants' vectors by running SecAgg+ among them in-process."""
        if len(gradients) < 2:
            raise ValidationFailed("gradients", "secure aggregation needs at least 2 participants")
        vectors = {k: np.asarray(v, dtype=np.float64) for k, v in gradients.items()}
        shape = next(iter(vectors.values())).shape
        flat = {k: v.ravel() for k, v in vectors.items()}
        bound = clip if clip is not None else max(float(np.abs(v).max()) for v in flat.values())
        neighbours, threshold = self.secagg_shape(len(flat))
        total = await asyncio.to_thread(
            secagg.secure_aggregate,
            flat,
            threshold=threshold,
            neighbours=neighbours,
            clip=max(bound, 1e-12),
            rng=self._generator(),
        )
        return np.asarray(total).reshape(shape)

    def secagg_open(
        self, session: str, participants: list[str], vector_length: int, clip: float
    ) -> dict[str, str]:
        """Start a networked SecAgg+ round; the setup request for each client, as JSON."""
        neighbours, threshold = self.secagg_shape(len(participants))
        server = secagg.SecAggServer(
            participants,
            threshold=threshold,
            vector_length=vector_length,
            clip=clip,
            neighbours=neighbours,
            round_id=session,
        )
        self._sessions[session] = server
        return {c: secagg.encode_message(m) for c, m in server.setup().items()}

    def secagg_step(
        self, session: str, replies: dict[str, str]
    ) -> tuple[dict[str, str], np.ndarray[Any, Any] | None, list[str]]:
        """Take one stage's replies; the next requests, or (at the end) the masked sum and the
        clients whose inputs it includes."""
        server = self._sessions[session]
        for client, raw in replies.items():
            try:
                server.receive(cast(Any, secagg.decode_message(raw)))
            except (secagg.ProtocolError, ValueError) as exc:  # counted as a dropout
                log.info("secure aggregation %s: reply of %s refused: %s", session, client, exc)
        stage = server.stage
        try:
            if stage is secagg.Stage.ADVERTISE_KEYS:
                nxt: dict[str, Any] = server.close_advertise_keys()
            elif stage is secagg.Stage.SHARE_KEYS:
                nxt = server.close_share_keys()
            elif stage is secagg.Stage.MASKED_INPUT:
                nxt = server.close_masked_input()
            else:
                result = server.close_unmasking()
                del self._sessions[session]
                return {}, np.asarray(result.total), sorted(result.included)
        except Exception:
            self._sessions.pop(session, None)
            raise
        return {c: secagg.encode_message(m) for c, m in nxt.items()}, None, []

    # --- onion routing -------------------------------------------------------------------------

    @property
    def directory(self) -> OnionDirectory:
        if self._directory is None:
            raise RuntimeError("privacy is not started")
        return self._directory

    async def setup_onion_routing(self, route_spec: RouteSpec) -> OnionRoute:
        """A circuit of ``route_spec.hops`` relays from the coordinator, chosen by bandwidth with
        no two hops of one owner or one /16; open streams with :meth:`open_route_stream`."""
        consensus = self.directory.consensus().verify(self.directory.authority.public_key)
        client = OnionClient(consensus, timeout=10.0)
        try:
            circuit = await client.build_circuit(length=route_spec.hops)
        except (PathError, OnionError) as exc:
            await client.close()
            raise Conflict(f"no onion route: {exc}", hops=route_spec.hops) from None
        self._route_id += 1
        self._routes[self._route_id] = (client, circuit)
        return OnionRoute(circuit_id=self._route_id, relays=tuple(r.id for r in circuit.path))

    async def open_route_stream(self, circuit_id: int, host: str, port: int) -> Stream:
        route = self._routes.get(circuit_id)
        if route is None:
            raise NotFound("onion route", str(circuit_id))
        return await route[1].open_stream(host, port)

    async def close_route(self, circuit_id: int) -> None:
        route = self._routes.pop(circuit_id, None)
        if route is not None:
            await route[1].close()
            await route[0].close()

    @property
    def hidden(self) -> HiddenServiceHost:
        if self._hidden is None:
            raise RuntimeError("privacy is not started")
        return self._hidden

    async def create_hidden_service(self, service_spec: HiddenServiceSpec) -> str:
        """A hidden service in front of the spec's target; its address at once (the descriptor
        is published in the background: see :meth:`hidden_service_view`)."""
        hosted = await self.hidden.create(
            service_spec.owner,
            service_spec.target_host,
            service_spec.target_port,
            service_spec.introduction_points,
            None,
        )
        return hosted.address

    def hidden_service_view(self, address: str) -> dict[str, Any]:
        hosted = self.hidden.get(address)
        service = hosted.service
        return {
            "address": hosted.address,
            "owner": hosted.owner,
            "created": True,
            "published": service.published.is_set(),
            "introduction_points": list(service.intro_relays),
            "stored_on": list(service.stored_on),
            "revision": service.descriptor.revision_counter if service.descriptor else None,
            "access_fee_tokens": self.config.hidden_services.access_fee_tokens,
            "error": hosted.error,
        }

    async def _pay_access(self, payer: str, owner: str, ticket: str) -> None:
        fee = Decimal(repr(self.config.hidden_services.access_fee_tokens))
        if fee <= 0:
            return
        tok = await self._resolve("tokenomics") if self._resolve is not None else None
        if tok is None:
            raise FeatureUnavailable("hidden service fees", "tokenomics is not running")
        if tok.wallet_owner(owner) is None:
            await tok.initialize_wallet(owner)
        result = await tok.process_payment(
            Transaction(
                transaction_id=f"hs-{ticket[:24]}",
                from_wallet=payer,
                to_wallet=owner,
                amount=fee,
                memo="hidden service access",
            )
        )
        if result.status.value == "failed":
            raise Conflict(
                f"the access fee of {fee} tokens could not be paid: {result.code}",
                result=result.code,
            )
