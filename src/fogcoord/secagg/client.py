"""The client side of SecAgg / SecAgg+: one state machine per client and round.

Following Bonawitz et al. (CCS 2017, fig. 4) on the neighbour graph of Bell et al. (CCS 2020),
a client ``u`` with neighbours ``N(u)``:

1. **advertise keys** -- draws fresh X25519 key pairs ``(c_u, C_u)`` for pairwise masks and
   ``(s_u, S_u)`` for encrypting shares, and a 32-byte self-mask seed ``b_u``; sends ``C_u``,
   ``S_u`` and a commitment to ``b_u``.
2. **share keys** -- Shamir-shares ``b_u`` and ``c_u`` (t of ``|N(u)|``) and sends each
   neighbour ``v`` its pair of shares sealed with ChaCha20-Poly1305 under
   ``HKDF(X25519(s_u, S_v))``, the round and both ids bound in as associated data. The server
   relays the ciphertexts but cannot open them.
3. **masked input** -- opens the shares addressed to it (a failed authentication raises
   :class:`ShareRejected` and the client stops), quantises its vector (see
   :mod:`~fogcoord.secagg.quantize`) and sends
   ``y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2, u < v} PRG(s_uv)
   - sum_{v in N(u) ∩ U2, u > v} PRG(s_uv)  (mod 2^bits)``
   with ``s_uv = HKDF(X25519(c_u, C_v))``. Pairwise masks cancel in the sum over clients whose
   input arrives; ``b_u`` hides ``y_u`` even if ``u``'s pairwise secrets are later revealed
   because the server wrongly believed ``u`` dropped.
4. **unmasking** -- reveals, for each neighbour, the share the server asks for: of ``b_v`` if
   ``v``'s input arrived, of ``c_v`` if it did not, never both for one ``v`` (the client checks
   the two lists are disjoint and cover exactly the neighbours it holds shares of).

Threat model: an honest-but-curious server and clients. There is no PKI signing the advertised
keys and no consistency round, so a server that substitutes keys or tells different clients
different stories about who dropped (the active attacks, which Bonawitz et al. counter with
signatures, a consistency check and ``t > 2n/3``) is out of scope, as in the paper's
semi-honest protocol. Each method checks the request belongs to this round, this
client and this stage, and raises :class:`ProtocolError` instead of replying if it does not;
any failure leaves the client in ``FAILED`` and it answers nothing further.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fogcoord.secagg import shamir
from fogcoord.secagg.graph import NeighbourGraph
from fogcoord.secagg.messages import (
    NONCE_BYTES,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputReply,
    MaskedInputRequest,
    ProtocolError,
    RevealedShare,
    SecAggParams,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    ShareRejected,
    UnmaskReply,
    UnmaskRequest,
)
from fogcoord.secagg.prg import (
    MaskStream,
    associated_data,
    commitment,
    derive_seed,
    pair_seed,
)
from fogcoord.secagg.quantize import ring_mask

_X_BYTES = 4
_PLAINTEXT_BYTES = _X_BYTES + 2 * shamir.SHARE_BYTES


class ClientStage(enum.StrEnum):
    """What the client expects next; ``DONE`` and ``FAILED`` expect nothing."""

    SETUP = "setup"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASKING = "unmasking"
    DONE = "done"
    FAILED = "failed"


def self_mask_commitment(seed: bytes, round_id: str, client: str) -> bytes:
    """The commitment to ``b`` a client advertises and the server checks reconstruction against."""
    return commitment(seed, "self-mask", round_id, client)


def share_context(round_id: str, sender: str, recipient: str) -> tuple[str, str, str, str]:
    """What a sealed share is bound to: its direction, so no ciphertext can be replayed to
    another client, back to its sender or into another round."""
    return ("share", round_id, sender, recipient)


_S = TypeVar("_S", bound="SecAggClient")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _stage(
    expected: ClientStage, following: ClientStage
) -> Callable[[Callable[Concatenate[_S, _P], _R]], Callable[Concatenate[_S, _P], _R]]:
    # every stage method: refuse when out of order, and stop the client for good on any failure
    def wrap(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        def run(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            if self.stage is not expected:
                raise ProtocolError(
                    f"{self.client_id}: {method.__name__} called in stage {self.stage.value}"
                )
            try:
                reply = method(self, *args, **kwargs)
            except Exception:
                self._fail()
                raise
            self.stage = following
            return reply

        functools.update_wrapper(run, method)
        return run

    return wrap


class SecAggClient:
    """One client's side of one round: call the four stage methods in order, each with the
    server's request, and send back what it returns.

    ``rng`` drives only stochastic rounding; keys, seeds and nonces always come from the OS
    CSPRNG (:func:`os.urandom` / the ``cryptography`` package).
    """

    def __init__(self, client_id: str, *, rng: np.random.Generator | None = None) -> None:
        self.client_id = client_id
        self.stage = ClientStage.SETUP
        self._rng = rng if rng is not None else np.random.default_rng()
        self._params: SecAggParams | None = None
        self._graph: NeighbourGraph | None = None
        self._neighbours: frozenset[str] = frozenset()
        self._mask_key: X25519PrivateKey | None = None
        self._share_key: X25519PrivateKey | None = None
        self._self_seed = b""
        self._peers: dict[str, KeyAdvertisement] = {}
        # X25519(s_u, S_v) per neighbour: sealing to v and opening from v use the same one
        self._share_secrets: dict[str, bytes] = {}
        # neighbour -> (x, share of its b, share of its mask key), as received
        self._held: dict[str, tuple[int, bytes, bytes]] = {}

    # --- stages -------------------------------------------------------------------------------

    @_stage(ClientStage.SETUP, ClientStage.SHARE_KEYS)
    def setup(self, request: SetupRequest) -> KeyAdvertisement:
        """Join the round described by ``request.params``: fresh keys and self-mask seed."""
        params = request.params
        self._check_recipient(request.recipient)
        if self.client_id not in params.participants:
            raise ProtocolError(f"{self.client_id} is not a participant of {params.round_id}")
        graph = NeighbourGraph(params.participants, params.neighbours, params.graph_seed)
        self._params = params
        self._graph = graph
        self._neighbours = graph.neighbours(self.client_id)
        self._mask_key = X25519PrivateKey.generate()
        self._share_key = X25519PrivateKey.generate()
        self._self_seed = os.urandom(shamir.SECRET_BYTES)
        return KeyAdvertisement(
            round_id=params.round_id,
            sender=self.client_id,
            mask_key=self._mask_key.public_key().public_bytes_raw(),
            share_key=self._share_key.public_key().public_bytes_raw(),
            self_mask_digest=self_mask_commitment(self._self_seed, params.round_id, self.client_id),
        )

    @_stage(ClientStage.SHARE_KEYS, ClientStage.MASKED_INPUT)
    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Seal a share of ``b`` and of the mask private key for every advertised neighbour."""
        params, mask_key, share_key = self._secrets()
        self._check_header(request.round_id, request.recipient)
        peers: dict[str, KeyAdvertisement] = {}
        own = {
            mask_key.public_key().public_bytes_raw(),
            share_key.public_key().public_bytes_raw(),
        }
        seen_keys = set(own)
        for advert in request.keys:
            if advert.round_id != params.round_id:
                raise ProtocolError(f"advertisement of {advert.sender} is for another round")
            if advert.sender not in self._neighbours or advert.sender in peers:
                raise ProtocolError(f"unexpected advertisement from {advert.sender}")
            # a key seen twice would let one party pose as two, or this client as its own peer
            if advert.mask_key in seen_keys or advert.share_key in seen_keys:
                raise ProtocolError(f"advertisement of {advert.sender} repeats a public key")
            seen_keys |= {advert.mask_key, advert.share_key}
            peers[advert.sender] = advert
        self._require(len(peers), "neighbours advertised keys")
        self._peers = peers

        assert self._graph is not None
        abscissae = self._graph.abscissae(self.client_id)
        holders = sorted(peers)
        xs = [abscissae[v] for v in holders]
        b_shares = shamir.split(self._self_seed, threshold=params.threshold, xs=xs)
        key_shares = shamir.split(mask_key.private_bytes_raw(), threshold=params.threshold, xs=xs)
        sealed = []
        for v, b_share, key_share in zip(holders, b_shares, key_shares, strict=True):
            context = share_context(params.round_id, self.client_id, v)
            secret = share_key.exchange(X25519PublicKey.from_public_bytes(peers[v].share_key))
            self._share_secrets[v] = secret
            aead = ChaCha20Poly1305(derive_seed(secret, *context))
            nonce = os.urandom(NONCE_BYTES)
            plaintext = (
                b_share.x.to_bytes(_X_BYTES, "big") + b_share.y_bytes() + key_share.y_bytes()
            )
            sealed.append(
                EncryptedShare(
                    sender=self.client_id,
                    recipient=v,
                    nonce=nonce,
                    ciphertext=aead.encrypt(nonce, plaintext, associated_data(*context)),
                )
            )
        return ShareKeysReply(round_id=params.round_id, sender=self.client_id, shares=tuple(sealed))

    @_stage(ClientStage.MASKED_INPUT, ClientStage.UNMASKING)
    def masked_input(self, request: MaskedInputRequest, vector: npt.ArrayLike) -> MaskedInputReply:
        """Open the neighbours' shares, then send ``vector`` quantised and masked.

        Raises :class:`ShareRejected` if a share fails authentication, ``ValueError`` if
        ``vector`` is not of the round's length.
        """
        params, mask_key, _ = self._secrets()
        self._check_header(request.round_id, request.recipient)
        held: dict[str, tuple[int, bytes, bytes]] = {}
        for sealed in request.shares:
            v = sealed.sender
            if sealed.recipient != self.client_id or v not in self._peers or v in held:
                raise ProtocolError(f"unexpected share from {v} to {sealed.recipient}")
            context = share_context(params.round_id, v, self.client_id)
            key = derive_seed(self._share_secrets[v], *context)
            try:
                plaintext = ChaCha20Poly1305(key).decrypt(
                    sealed.nonce, sealed.ciphertext, associated_data(*context)
                )
            except InvalidTag:
                raise ShareRejected(self.client_id, v) from None
            x = int.from_bytes(plaintext[:_X_BYTES], "big")
            assert self._graph is not None
            if len(plaintext) != _PLAINTEXT_BYTES or x != self._graph.abscissa(v, self.client_id):
                raise ProtocolError(f"malformed share from {v}")
            cut = _X_BYTES + shamir.SHARE_BYTES
            held[v] = (x, plaintext[_X_BYTES:cut], plaintext[cut:])
        # fewer neighbours than the threshold could not recover this client's secrets, and
        # would leave its input hidden among too few others
        self._require(len(held), "neighbours sent shares")

        quantizer = params.quantizer()
        x_vec = np.asarray(vector)
        if x_vec.shape != (params.vector_length,):
            raise ValueError(
                f"expected a vector of length {params.vector_length}, got shape {x_vec.shape}"
            )
        masked = quantizer.encode(x_vec, self._rng)
        stream = MaskStream(params.vector_length, masked.dtype)
        np.add(masked, stream.expand(self._self_seed), out=masked)
        for v in sorted(held):
            secret = mask_key.exchange(X25519PublicKey.from_public_bytes(self._peers[v].mask_key))
            mask = stream.expand(pair_seed(secret, params.round_id, self.client_id, v))
            # the lower id adds, the higher subtracts: the pair's masks cancel in the sum
            if self.client_id < v:
                np.add(masked, mask, out=masked)
            else:
                np.subtract(masked, mask, out=masked)
        if params.bits < 8 * masked.dtype.itemsize:
            np.bitwise_and(masked, masked.dtype.type(ring_mask(params.bits)), out=masked)
        self._held = held
        return MaskedInputReply(
            round_id=params.round_id, sender=self.client_id, masked=masked.tobytes()
        )

    @_stage(ClientStage.UNMASKING, ClientStage.DONE)
    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal the share of ``b`` of each surviving neighbour and of the mask private key of
        each dropped one; refuse a request that asks for both of anyone."""
        params, _, _ = self._secrets()
        self._check_header(request.round_id, request.recipient)
        survivors, dropped = set(request.survivors), set(request.dropped)
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise ProtocolError("unmask request names a client twice")
        if survivors & dropped:
            raise ProtocolError(
                f"unmask request asks for both shares of {sorted(survivors & dropped)}"
            )
        if survivors | dropped != set(self._held):
            raise ProtocolError("unmask request does not account for exactly my neighbours")
        # the server aborts before unmasking fewer than the threshold together; a request that
        # claims otherwise is not from an honest server
        self._require(len(survivors), "neighbours' inputs arrived")
        reply = UnmaskReply(
            round_id=params.round_id,
            sender=self.client_id,
            self_mask_shares=tuple(
                RevealedShare(owner=v, x=self._held[v][0], y=self._held[v][1])
                for v in request.survivors
            ),
            mask_key_shares=tuple(
                RevealedShare(owner=v, x=self._held[v][0], y=self._held[v][2])
                for v in request.dropped
            ),
        )
        self._forget()
        return reply

    # --- helpers ------------------------------------------------------------------------------

    def _secrets(self) -> tuple[SecAggParams, X25519PrivateKey, X25519PrivateKey]:
        if self._params is None or self._mask_key is None or self._share_key is None:
            raise ProtocolError(f"{self.client_id} has not been set up")
        return self._params, self._mask_key, self._share_key

    def _check_recipient(self, recipient: str) -> None:
        if recipient != self.client_id:
            raise ProtocolError(f"message for {recipient} delivered to {self.client_id}")

    def _check_header(self, round_id: str, recipient: str) -> None:
        self._check_recipient(recipient)
        if self._params is None or round_id != self._params.round_id:
            raise ProtocolError(f"message for round {round_id} in another round")

    def _require(self, count: int, what: str) -> None:
        assert self._params is not None
        if count < self._params.threshold:
            raise ProtocolError(
                f"{self.client_id}: only {count} {what}, fewer than the threshold "
                f"{self._params.threshold}"
            )

    def _forget(self) -> None:
        self._mask_key = None
        self._share_key = None
        self._self_seed = b""
        self._share_secrets = {}
        self._held = {}

    def _fail(self) -> None:
        self._forget()
        self.stage = ClientStage.FAILED
