"""The server side of SecAgg / SecAgg+: collect each stage, track dropouts, unmask the sum.

The server of Bonawitz et al. (CCS 2017) and Bell et al. (CCS 2020) learns only the sum of the
inputs that reached it. It keeps four nested sets of clients -- ``U1`` advertised keys, ``U2``
sent shares, ``U3`` sent a masked input, ``U4`` answered the unmasking -- and after every stage
checks that enough of them survive: at least ``threshold`` clients overall, and for every client
whose secrets may still have to be reconstructed at least ``threshold`` surviving neighbours to
hold its shares. Otherwise it raises :class:`SecAggAborted` rather than carry on into a round
that could only fail later, or unmask a sum of too few inputs.

Unmasking removes two kinds of mask from the running sum of masked inputs:

* for each client ``u`` in ``U3`` it reconstructs the self-mask seed ``b_u`` from ``threshold``
  shares and subtracts ``PRG(b_u)``;
* for each client ``v`` in ``U2 \\ U3`` (shared keys, then dropped) it reconstructs ``v``'s
  pairwise-mask private key and, with each surviving neighbour's public key, recomputes and
  cancels the pairwise mask that neighbour added for ``v``.

It asks each client for exactly one kind of share per neighbour -- ``U3`` and ``U2 \\ U3`` are
disjoint -- so no client's ``b`` and mask key are ever both revealed, which is what keeps a
late-arriving input private. Reconstructed secrets are checked against what their owner
committed to at the start (the hash of ``b``, the public mask key), so a corrupted share is
detected instead of silently skewing the sum.

What the server holds: public keys, ciphertexts it cannot open (until relayed), the running
ring sum of masked inputs -- each input is added and dropped on arrival -- and at the end the
revealed shares and the aggregate. Replies are validated on :meth:`SecAggServer.receive`; an
invalid reply raises :class:`ProtocolError`, is not recorded, and so counts as a dropout.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fogcoord.secagg import shamir
from fogcoord.secagg.client import self_mask_commitment
from fogcoord.secagg.graph import NeighbourGraph
from fogcoord.secagg.messages import (
    REPLY_TYPES,
    ClientReply,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputReply,
    MaskedInputRequest,
    ProtocolError,
    ReconstructionFailed,
    RevealedShare,
    SecAggAborted,
    SecAggError,
    SecAggParams,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)
from fogcoord.secagg.prg import SEED_BYTES, MaskStream, pair_seed
from fogcoord.secagg.quantize import Rounding, auto_bits, ring_mask


@dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum and who is in it.

    ``total`` is the sum of the clipped inputs of ``included`` (the clients whose masked input
    arrived, ``U3``), within ``error_bound`` per coordinate. ``dropped`` maps each stage to the
    clients that did not answer it.
    """

    total: npt.NDArray[np.float64]
    included: tuple[str, ...]
    dropped: Mapping[Stage, frozenset[str]]
    error_bound: float


class SecAggServer:
    """One round's server: :meth:`setup`, then for each stage :meth:`receive` every reply as it
    arrives and close the stage (``close_advertise_keys``, ``close_share_keys``,
    ``close_masked_input``, ``close_unmasking``) when the deadline passes. Each closer returns
    the requests of the next stage, addressed by client id; clients that have not replied by
    then have dropped.

    Raises :class:`SecAggAborted` from a closer when too few clients survive; the server is then
    finished and accepts nothing more.
    """

    def __init__(
        self,
        participants: Iterable[str],
        *,
        threshold: int,
        vector_length: int,
        clip: float,
        neighbours: int | None = None,
        bits: int | None = None,
        rounding: Rounding = "stochastic",
        round_id: str | None = None,
        graph_seed: bytes | None = None,
    ) -> None:
        ids = tuple(sorted(set(participants)))
        self.params = SecAggParams(
            round_id=round_id if round_id is not None else secrets.token_hex(8),
            participants=ids,
            threshold=threshold,
            neighbours=neighbours,
            graph_seed=graph_seed if graph_seed is not None else secrets.token_bytes(SEED_BYTES),
            vector_length=vector_length,
            clip=clip,
            bits=bits if bits is not None else auto_bits(len(ids)),
            rounding=rounding,
        )
        self.graph = NeighbourGraph(ids, neighbours, self.params.graph_seed)
        self.stage: Stage | None = None
        self.dropped: dict[Stage, frozenset[str]] = {}
        self.result: AggregateResult | None = None
        self._started = False
        # who the current stage expects replies from, and who has replied
        self._expected: frozenset[str] = frozenset()
        self._replied: set[str] = set()
        self._adverts: dict[str, KeyAdvertisement] = {}
        # recipient -> sender -> ciphertext, held only until relayed
        self._mailbox: dict[str, dict[str, EncryptedShare]] = {}
        self._shared: frozenset[str] = frozenset()
        self._masked: frozenset[str] = frozenset()
        self._sum: npt.NDArray[np.unsignedinteger] | None = None
        self._unmask_requests: dict[str, UnmaskRequest] = {}
        # owner -> revealed shares, by holder
        self._self_mask_shares: dict[str, dict[str, shamir.Share]] = {}
        self._mask_key_shares: dict[str, dict[str, shamir.Share]] = {}

    @property
    def threshold(self) -> int:
        return self.params.threshold

    @property
    def survivors(self) -> frozenset[str]:
        """Who the current stage still waits on (or, once finished, whose input is in the sum)."""
        return self._expected

    # --- stages -------------------------------------------------------------------------------

    def setup(self) -> dict[str, SetupRequest]:
        """Open the round: one setup request per participant."""
        if self._started:
            raise ProtocolError("the round is already set up")
        self._started = True
        self._open(Stage.ADVERTISE_KEYS, frozenset(self.params.participants))
        return {p: SetupRequest(recipient=p, params=self.params) for p in self.params.participants}

    def receive(self, reply: ClientReply) -> None:
        """Record one client's reply to the current stage.

        Raises :class:`ProtocolError` (recording nothing) when the reply is not for this round
        and stage, comes from a client not expected to answer, repeats one, or is malformed.
        """
        stage = self.stage
        if stage is None:
            raise ProtocolError("the server is not collecting replies")
        if not isinstance(reply, REPLY_TYPES[stage]):
            raise ProtocolError(f"a {type(reply).__name__} does not answer stage {stage.value}")
        if reply.round_id != self.params.round_id:
            raise ProtocolError(f"reply from {reply.sender} is for round {reply.round_id}")
        if reply.sender not in self._expected:
            raise ProtocolError(f"{reply.sender} is not expected at stage {stage.value}")
        if reply.sender in self._replied:
            raise ProtocolError(f"{reply.sender} already replied at stage {stage.value}")
        if isinstance(reply, KeyAdvertisement):
            self._take_advert(reply)
        elif isinstance(reply, ShareKeysReply):
            self._take_shares(reply)
        elif isinstance(reply, MaskedInputReply):
            self._take_masked(reply)
        else:
            self._take_unmask(reply)
        self._replied.add(reply.sender)

    def close_advertise_keys(self) -> dict[str, ShareKeysRequest]:
        """End ``advertise_keys``; relay each client's neighbours' public keys."""
        advertised = self._close(Stage.ADVERTISE_KEYS)
        self._check(Stage.ADVERTISE_KEYS, advertised, advertised)
        self._open(Stage.SHARE_KEYS, advertised)
        requests = {}
        for u in sorted(advertised):
            keys = tuple(self._adverts[v] for v in sorted(self.graph.neighbours(u) & advertised))
            requests[u] = ShareKeysRequest(round_id=self.params.round_id, recipient=u, keys=keys)
        return requests

    def close_share_keys(self) -> dict[str, MaskedInputRequest]:
        """End ``share_keys``; relay to each client the shares its surviving neighbours sealed
        for it. Shares from clients that did not finish the stage are discarded."""
        shared = self._close(Stage.SHARE_KEYS)
        self._check(Stage.SHARE_KEYS, shared, shared)
        self._shared = shared
        self._open(Stage.MASKED_INPUT, shared)
        requests = {}
        for u in sorted(shared):
            inbox = self._mailbox.get(u, {})
            shares = tuple(inbox[v] for v in sorted(self.graph.neighbours(u) & shared))
            requests[u] = MaskedInputRequest(
                round_id=self.params.round_id, recipient=u, shares=shares
            )
        self._mailbox = {}
        return requests

    def close_masked_input(self) -> dict[str, UnmaskRequest]:
        """End ``masked_input``; ask each client whose input arrived for its shares: of ``b``
        for neighbours whose input arrived, of the mask key for those whose did not."""
        masked = self._close(Stage.MASKED_INPUT)
        # every client of U2 may need its secrets reconstructed by neighbours that reach U3
        self._check(Stage.MASKED_INPUT, masked, self._shared)
        self._masked = masked
        self._open(Stage.UNMASKING, masked)
        requests = {}
        for u in sorted(masked):
            around = self.graph.neighbours(u) & self._shared
            requests[u] = UnmaskRequest(
                round_id=self.params.round_id,
                recipient=u,
                survivors=tuple(sorted(around & masked)),
                dropped=tuple(sorted(around - masked)),
            )
        self._unmask_requests = requests
        return requests

    def close_unmasking(self) -> AggregateResult:
        """End ``unmasking``: reconstruct the secrets, strip the masks, decode the sum."""
        unmasked = self._close(Stage.UNMASKING)
        # a holder reveals a share of every neighbour in U2, so the neighbours of an owner that
        # answered are exactly the shares there are to combine
        self._check(Stage.UNMASKING, unmasked, self._shared)
        try:
            return self._unmask()
        except SecAggError:
            self._abort()
            raise

    def _unmask(self) -> AggregateResult:
        total = self._sum
        assert total is not None
        stream = MaskStream(self.params.vector_length, total.dtype)
        round_id = self.params.round_id
        masked, shared = self._masked, self._shared

        for u in sorted(masked):
            seed = self._reconstruct(u, self._self_mask_shares)
            if self_mask_commitment(seed, round_id, u) != self._adverts[u].self_mask_digest:
                raise ReconstructionFailed(
                    f"the self-mask seed of {u} does not match its commitment"
                )
            np.subtract(total, stream.expand(seed), out=total)

        for v in sorted(shared - masked):
            key = X25519PrivateKey.from_private_bytes(self._reconstruct(v, self._mask_key_shares))
            if key.public_key().public_bytes_raw() != self._adverts[v].mask_key:
                raise ReconstructionFailed(f"the mask key of {v} does not match its public key")
            for u in sorted(self.graph.neighbours(v) & masked):
                secret = key.exchange(X25519PublicKey.from_public_bytes(self._adverts[u].mask_key))
                mask = stream.expand(pair_seed(secret, round_id, u, v))
                # undo what u did for v: the lower id added the pair mask, the higher subtracted
                if u < v:
                    np.subtract(total, mask, out=total)
                else:
                    np.add(total, mask, out=total)

        bits = self.params.bits
        if bits < 8 * total.dtype.itemsize:
            np.bitwise_and(total, total.dtype.type(ring_mask(bits)), out=total)
        quantizer = self.params.quantizer()
        included = tuple(sorted(masked))
        self.result = AggregateResult(
            total=quantizer.decode_sum(total, len(included)),
            included=included,
            dropped=dict(self.dropped),
            error_bound=quantizer.error_bound(len(included)),
        )
        self._sum = None
        self._self_mask_shares = {}
        self._mask_key_shares = {}
        self._expected = masked
        return self.result

    # --- replies ------------------------------------------------------------------------------

    def _take_advert(self, reply: KeyAdvertisement) -> None:
        if reply.mask_key == reply.share_key:
            raise ProtocolError(f"{reply.sender} advertised the same key twice")
        self._adverts[reply.sender] = reply

    def _take_shares(self, reply: ShareKeysReply) -> None:
        u = reply.sender
        expected = self.graph.neighbours(u) & self._expected
        recipients = [s.recipient for s in reply.shares]
        if len(set(recipients)) != len(recipients) or set(recipients) != expected:
            raise ProtocolError(f"{u} did not send one share to each advertised neighbour")
        if any(s.sender != u for s in reply.shares):
            raise ProtocolError(f"{u} sent shares in another client's name")
        for share in reply.shares:
            self._mailbox.setdefault(share.recipient, {})[u] = share

    def _take_masked(self, reply: MaskedInputReply) -> None:
        dtype = self.params.quantizer().dtype
        if len(reply.masked) != self.params.vector_length * dtype.itemsize:
            raise ProtocolError(
                f"masked input of {reply.sender} is {len(reply.masked)} bytes, expected "
                f"{self.params.vector_length} words of {dtype.itemsize}"
            )
        words = np.frombuffer(reply.masked, dtype=dtype)
        bits = self.params.bits
        if bits < 8 * dtype.itemsize and int(words.max()) > ring_mask(bits):
            raise ProtocolError(f"masked input of {reply.sender} is outside Z_2^{bits}")
        # only the running sum is kept: an input is added on arrival and never stored, and the
        # sum starts as the first masked input rather than zeros
        if self._sum is None:
            self._sum = words.copy()
        else:
            np.add(self._sum, words, out=self._sum)

    def _take_unmask(self, reply: UnmaskReply) -> None:
        holder = reply.sender
        request = self._unmask_requests[holder]
        parsed: list[tuple[dict[str, dict[str, shamir.Share]], str, shamir.Share]] = []
        for store, revealed, wanted in (
            (self._self_mask_shares, reply.self_mask_shares, request.survivors),
            (self._mask_key_shares, reply.mask_key_shares, request.dropped),
        ):
            owners = [s.owner for s in revealed]
            if sorted(owners) != sorted(wanted):
                raise ProtocolError(f"{holder} did not reveal exactly the shares asked for")
            for share in revealed:
                parsed.append((store, share.owner, self._parse_share(holder, share)))
        for store, owner, point in parsed:
            store.setdefault(owner, {})[holder] = point

    def _parse_share(self, holder: str, share: RevealedShare) -> shamir.Share:
        if share.x != self.graph.abscissa(share.owner, holder):
            raise ProtocolError(f"{holder} revealed a share of {share.owner} at the wrong x")
        try:
            return shamir.Share.from_bytes(share.x, share.y)
        except ValueError as exc:
            raise ProtocolError(f"{holder} revealed a malformed share: {exc}") from None

    # --- bookkeeping --------------------------------------------------------------------------

    def _open(self, stage: Stage, expected: frozenset[str]) -> None:
        self.stage = stage
        self._expected = expected
        self._replied = set()

    def _close(self, stage: Stage) -> frozenset[str]:
        if self.stage is not stage:
            now = "finished" if self.stage is None else f"at stage {self.stage.value}"
            raise ProtocolError(f"cannot close stage {stage.value}: the round is {now}")
        replied = frozenset(self._replied)
        self.dropped[stage] = self._expected - replied
        self.stage = None
        return replied

    def _check(self, stage: Stage, alive: frozenset[str], owners: frozenset[str]) -> None:
        """Abort unless ``alive`` meets the threshold, overall and around every owner whose
        secrets the surviving neighbours may have to reconstruct."""
        threshold = self.threshold
        try:
            if len(alive) < threshold:
                raise SecAggAborted(stage, alive, threshold)
            for owner in sorted(owners):
                around = self.graph.neighbours(owner) & alive
                if len(around) < threshold:
                    raise SecAggAborted(stage, around, threshold, client=owner)
        except SecAggAborted:
            self._abort()
            raise

    def _reconstruct(self, owner: str, store: Mapping[str, Mapping[str, shamir.Share]]) -> bytes:
        held = store.get(owner, {})
        if len(held) < self.threshold:
            raise SecAggAborted(Stage.UNMASKING, frozenset(held), self.threshold, client=owner)
        # exactly threshold shares, taken in holder order so the choice is reproducible
        chosen = [held[h] for h in sorted(held)[: self.threshold]]
        try:
            return shamir.combine(chosen, self.threshold)
        except ValueError as exc:
            raise ReconstructionFailed(f"the shares of {owner} are inconsistent: {exc}") from None

    def _abort(self) -> None:
        self.stage = None
        self._sum = None
        self._mailbox = {}
        self._self_mask_shares = {}
        self._mask_key_shares = {}
