"""Secure aggregation (SecAgg+ / SecAgg): building blocks, the protocol with dropouts at every
stage, aborts, what the server holds, tampering, and the messages on the wire."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Set
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from fogcoord.secagg import (
    ClientReply,
    ClientStage,
    EncryptedShare,
    MaskedInputReply,
    MaskedInputRequest,
    Message,
    NeighbourGraph,
    ProtocolError,
    Quantizer,
    ReconstructionFailed,
    RevealedShare,
    SecAggAborted,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    ServerMessage,
    SetupRequest,
    ShareKeysRequest,
    ShareRejected,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    decode_message,
    encode_message,
    run_secure_aggregation,
    secure_aggregate,
    shamir,
)
from fogcoord.secagg.prg import MaskStream, expand, pair_seed
from fogcoord.secagg.quantize import auto_bits

FloatArray = npt.NDArray[np.float64]


def make_vectors(n: int, d: int, seed: int = 0, scale: float = 0.6) -> dict[str, FloatArray]:
    rng = np.random.default_rng(seed)
    # some coordinates beyond the clip bound of 1, so clipping is exercised
    return {f"client-{i:02d}": rng.normal(0.0, scale, d) for i in range(n)}


def clipped_sum(vectors: Mapping[str, FloatArray], ids: Set[str], clip: float) -> FloatArray:
    total = np.zeros(len(next(iter(vectors.values()))))
    for cid in ids:
        total += np.clip(vectors[cid], -clip, clip)
    return total


def stated_bound(clip: float, bits: int, clients: int, count: int, rounding: str) -> float:
    """The quantisation error bound, restated independently of the implementation: each of
    ``count`` inputs is off by under one step (stochastic) or half a step (deterministic), a
    step being ``2 clip / floor((2^bits - 1) / clients)``; plus float64 rounding."""
    step = 2 * clip / (((1 << bits) - 1) // clients)
    per_input = step if rounding == "stochastic" else step / 2
    return count * (per_input + 2.0**-48 * clip)


# --- Shamir ----------------------------------------------------------------------------------


def random_secret() -> bytes:
    return secrets.token_bytes(shamir.SECRET_BYTES)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_threshold_shares_reconstruct(data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, 8))
    count = data.draw(st.integers(threshold, 12))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split(secret, threshold=threshold, xs=list(range(1, count + 1)))
    chosen = data.draw(st.permutations(shares))[:threshold]
    assert shamir.combine(chosen, threshold) == secret


def lagrange_at(points: list[tuple[int, int]], x: int) -> int:
    p = shamir.PRIME
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (x - xj) % p
                den = den * (xi - xj) % p
        total += yi * num * pow(den, -1, p)
    return total % p


@pytest.mark.parametrize("threshold", [2, 3, 7])
def test_fewer_than_threshold_shares_fit_every_secret(threshold: int) -> None:
    shares = shamir.split(random_secret(), threshold=threshold, xs=list(range(1, 10)))
    known = shares[: threshold - 1]
    for _ in range(5):
        candidate = random_secret()
        # the unique polynomial of degree < threshold through the known shares and (0, candidate)
        points = [(0, int.from_bytes(candidate, "big"))] + [(s.x, s.y) for s in known]
        completing = shamir.Share(50, lagrange_at(points, 50))
        assert shamir.combine([*known, completing], threshold) == candidate


def test_combine_uses_exactly_the_first_threshold_shares() -> None:
    secret = random_secret()
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4])
    # shares past the threshold are never read: an invalid abscissa there would raise
    poison = [shamir.Share(0, 1), shamir.Share(0, 2)]
    assert shamir.combine([*shares[:3], *poison], 3) == secret
    with pytest.raises(ValueError, match="fewer than the threshold"):
        shamir.combine(shares[:2], 3)
    with pytest.raises(ValueError, match="same abscissa"):
        shamir.combine([shares[0], shares[0], shares[1]], 3)
    # a share replaced by garbage almost surely lands the result outside the 32-byte secrets;
    # a small targeted change does not, which is why the server checks commitments as well
    garbage = dataclasses.replace(shares[1], y=secrets.randbelow(shamir.PRIME))
    with pytest.raises(ValueError, match="inconsistent"):
        shamir.combine([shares[0], garbage, shares[2]], 3)
    nudged = dataclasses.replace(shares[1], y=shares[1].y + 1)
    assert shamir.combine([shares[0], nudged, shares[2]], 3) != secret


def test_shamir_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"short", threshold=2, xs=[1, 2])
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(random_secret(), threshold=2, xs=[1, 1])
    with pytest.raises(ValueError, match="cannot meet"):
        shamir.split(random_secret(), threshold=3, xs=[1, 2])
    with pytest.raises(ValueError, match="abscissa"):
        shamir.split(random_secret(), threshold=1, xs=[0])
    with pytest.raises(ValueError, match="field element"):
        shamir.Share.from_bytes(1, b"\xff" * shamir.SHARE_BYTES)


# --- PRG, quantisation, graph ----------------------------------------------------------------


def test_masks_are_deterministic_uniform_and_fast() -> None:
    seed = secrets.token_bytes(32)
    a = expand(seed, 100_000, np.uint32)
    assert np.array_equal(a, expand(seed, 100_000, np.uint32))
    assert not np.array_equal(a, expand(secrets.token_bytes(32), 100_000, np.uint32))
    assert abs(a.mean() / 2**32 - 0.5) < 0.01
    bits = np.unpackbits(a.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.002
    assert expand(seed, 10, np.uint64).dtype == np.dtype("<u8")

    stream = MaskStream(100_000, np.uint32)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        stream.expand(seed)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 1e-3


def test_pair_seed_is_symmetric_and_bound_to_the_round() -> None:
    shared = secrets.token_bytes(32)
    assert pair_seed(shared, "r", "a", "b") == pair_seed(shared, "r", "b", "a")
    assert pair_seed(shared, "r", "a", "b") != pair_seed(shared, "r2", "a", "b")
    assert pair_seed(shared, "r", "a", "bc") != pair_seed(shared, "r", "ab", "c")


@pytest.mark.parametrize("rounding", ["stochastic", "deterministic"])
@pytest.mark.parametrize("bits", [12, 32, 48])
def test_quantised_sums_decode_within_the_bound(rounding: Any, bits: int) -> None:
    clients, clip = 8, 1.5
    q = Quantizer(clip, bits, clients, rounding)
    rng = np.random.default_rng(3)
    xs = [rng.normal(0, 1, 5000) for _ in range(clients)]
    xs[0][:10] = [-9, 9, -1.5, 1.5, 0, np.inf, -np.inf, 1e-300, 3, -3]
    total = np.zeros(5000, dtype=q.dtype)
    for x in xs:
        encoded = q.encode(x, rng)
        assert encoded.dtype == q.dtype
        assert int(encoded.max()) <= q.levels
        total += encoded
    truth = sum(np.clip(x, -clip, clip) for x in xs)
    error = np.abs(q.decode_sum(total, clients) - truth).max()
    assert error <= q.error_bound(clients) == stated_bound(clip, bits, clients, clients, rounding)


def test_stochastic_rounding_is_unbiased() -> None:
    q = Quantizer(1.0, 8, 1, "stochastic")
    value = 0.3 * q.step + 0.1
    encoded = q.encode(np.full(200_000, value), np.random.default_rng(0))
    decoded = q.decode_sum(encoded, 1)
    assert abs(decoded.mean() - value) < 0.01 * q.step
    below = int((value + 1) / q.step)
    assert {int(v) for v in np.unique(encoded)} == {below, below + 1}


def test_the_ring_cannot_overflow() -> None:
    clients = 300
    q = Quantizer(1.0, 16, clients, "deterministic")
    # every client at the maximum: the largest possible sum still fits the ring
    total = np.zeros(4, dtype=q.dtype)
    for _ in range(clients):
        total += q.encode(np.full(4, 5.0))
    assert int(total.max()) <= (1 << 16) - 1
    assert np.allclose(q.decode_sum(total, clients), clients * 1.0)
    with pytest.raises(OverflowError, match=r"cannot hold the sum of 300 inputs.*at least 9 bits"):
        Quantizer(1.0, 8, clients)
    with pytest.raises(OverflowError, match="wrapped"):
        q.decode_sum(total, clients + 1)
    with pytest.raises(ValueError, match="NaN"):
        q.encode(np.array([0.0, np.nan]))
    assert auto_bits(255) == 32
    assert auto_bits(256) == 64


def test_graph_is_deterministic_regular_and_complete_when_dense() -> None:
    ids = [f"c{i}" for i in range(30)]
    seed = secrets.token_bytes(32)
    graph = NeighbourGraph(ids, 7, seed).as_dict()
    assert graph == NeighbourGraph(reversed(ids), 7, seed).as_dict()
    assert graph != NeighbourGraph(ids, 7, secrets.token_bytes(32)).as_dict()
    assert {len(v) for v in graph.values()} == {7}
    assert all(u in graph[v] and u not in graph[u] for u in ids for v in graph[u])
    complete = NeighbourGraph(ids, 29, seed)
    assert complete.complete
    assert NeighbourGraph(ids, None, seed).as_dict() == complete.as_dict()
    odd = NeighbourGraph(ids[:9], 3, seed).as_dict()
    assert sorted(len(v) for v in odd.values()) == [3] * 8 + [4]
    for owner in ids:
        ranks = NeighbourGraph(ids, 7, seed).abscissae(owner)
        assert sorted(ranks.values()) == list(range(1, 8))


# --- the protocol ----------------------------------------------------------------------------

N, D, CLIP = 12, 2000, 1.0

# (stage -> dropping clients, or a name per stage) and the threshold that tolerates them
SCENARIOS: dict[str, tuple[dict[str, set[str]], int]] = {
    "no dropouts": ({}, 3),
    "after setup": ({"advertise_keys": {"client-03", "client-07"}}, 3),
    "after advertise": ({"share_keys": {"client-01", "client-08"}}, 3),
    "after share keys": ({"masked_input": {"client-00", "client-05"}}, 3),
    "dropped after masking": ({"unmasking": {"client-02", "client-11"}}, 3),
    "every stage": (
        {
            "advertise_keys": {"client-04"},
            "share_keys": {"client-09"},
            "masked_input": {"client-06"},
            "unmasking": {"client-10"},
        },
        2,
    ),
}


def included_after(dropouts: Mapping[str, Set[str]]) -> set[str]:
    # clients dropping at unmasking sent their masked input: their vectors are in the sum
    gone = set().union(*(v for k, v in dropouts.items() if k != "unmasking"))
    return {f"client-{i:02d}" for i in range(N)} - gone


@pytest.mark.parametrize("neighbours", [None, 6], ids=["complete", "6-regular"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_sum_is_exact_within_quantisation(neighbours: int | None, scenario: str) -> None:
    dropouts, threshold = SCENARIOS[scenario]
    vectors = make_vectors(N, D, seed=7)
    run = run_secure_aggregation(
        vectors,
        threshold=threshold,
        neighbours=neighbours,
        clip=CLIP,
        dropouts=dropouts,
        rng=np.random.default_rng(11),
    )
    expected = included_after(dropouts)
    assert set(run.result.included) == expected
    for name, dropping in dropouts.items():
        assert run.result.dropped[Stage(name)] == dropping
    truth = clipped_sum(vectors, expected, CLIP)
    bound = stated_bound(CLIP, 32, N, len(expected), "stochastic")
    assert run.result.error_bound == bound
    assert np.abs(run.result.total - truth).max() <= bound
    assert not run.refused
    assert not run.rejected


@pytest.mark.parametrize(("bits", "rounding"), [(20, "deterministic"), (40, "stochastic")])
def test_small_and_wide_rings_with_json_transport(bits: int, rounding: Any) -> None:
    vectors = make_vectors(N, D, seed=2)
    dropouts = {"masked_input": {"client-01"}, "unmasking": {"client-02"}}
    run = run_secure_aggregation(
        vectors,
        threshold=4,
        neighbours=7,
        clip=CLIP,
        bits=bits,
        rounding=rounding,
        dropouts=dropouts,
        rng=np.random.default_rng(5),
        via_json=True,
    )
    expected = included_after(dropouts)
    truth = clipped_sum(vectors, expected, CLIP)
    assert np.abs(run.result.total - truth).max() <= stated_bound(
        CLIP, bits, N, len(expected), rounding
    )


def test_secure_aggregate_returns_the_sum() -> None:
    vectors = make_vectors(5, 300, seed=1)
    total = secure_aggregate(vectors, threshold=3, clip=CLIP, rng=np.random.default_rng(0))
    truth = clipped_sum(vectors, set(vectors), CLIP)
    assert total.dtype == np.float64
    assert total.shape == (300,)
    assert np.abs(total - truth).max() <= stated_bound(CLIP, 32, 5, 5, "stochastic")
    with pytest.raises(ValueError, match="unknown stage 'setup'"):
        secure_aggregate(vectors, threshold=3, clip=CLIP, dropouts={"setup": {"client-00"}})
    with pytest.raises(ValueError, match="without a vector"):
        secure_aggregate(vectors, threshold=3, clip=CLIP, dropouts={"unmasking": {"nobody"}})


@pytest.mark.parametrize("stage", list(Stage))
def test_fewer_survivors_than_threshold_abort_at_that_stage(stage: Stage) -> None:
    vectors = make_vectors(6, 100)
    dropouts = {stage.value: {"client-00", "client-01", "client-02"}}
    with pytest.raises(SecAggAborted) as caught:
        secure_aggregate(vectors, threshold=4, clip=CLIP, dropouts=dropouts)
    error = caught.value
    assert error.stage is stage
    assert error.threshold == 4
    assert len(error.survivors) < 4
    assert f"aborted at stage {stage.value}" in str(error)
    assert "fewer than the threshold 4" in str(error)


def test_a_client_whose_neighbours_fall_below_threshold_aborts() -> None:
    # a 2-regular ring with threshold 2: one dropout leaves each of its neighbours with only
    # one surviving neighbour to hold its shares, though the cohort is large enough
    harness = Harness(make_vectors(8, 200), threshold=2, neighbours=2)
    victim = "client-00"
    with pytest.raises(SecAggAborted) as caught:
        harness.run({Stage.MASKED_INPUT: {victim}})
    error = caught.value
    assert error.stage is Stage.MASKED_INPUT
    assert error.client in harness.server.graph.neighbours(victim)
    assert len(error.survivors) == 1
    assert f"1 surviving neighbours of {error.client}" in str(error)


# --- what the server holds -------------------------------------------------------------------


def held(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every array and byte string reachable from ``obj``'s state."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, str | int | float) or obj is None:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray | bytes | bytearray):
        yield obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from held(getattr(obj, name), seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from held(key, seen)
            yield from held(value, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from held(item, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from held(getattr(obj, f.name), seen)
    elif type(obj).__module__.startswith("fogcoord"):
        yield from held(vars(obj), seen)


class Harness:
    """Drives a round by hand, the way the coordinator does over the network, checking the
    server's whole state after every message it handles."""

    def __init__(
        self,
        vectors: Mapping[str, FloatArray],
        *,
        threshold: int,
        neighbours: int | None = None,
        bits: int | None = None,
    ) -> None:
        self.vectors = vectors
        self.server = SecAggServer(
            vectors,
            threshold=threshold,
            vector_length=len(next(iter(vectors.values()))),
            clip=CLIP,
            neighbours=neighbours,
            bits=bits,
            rounding="deterministic",
        )
        self.clients = {cid: SecAggClient(cid) for cid in vectors}
        quantizer = self.server.params.quantizer()
        # deterministic rounding: exactly what each client's input is before masking
        self.encoded = {cid: quantizer.encode(v) for cid, v in vectors.items()}
        self.bits = self.server.params.bits
        self.messages: list[Message] = []
        self.inspections = 0
        self.running_sums_seen = 0

    def run(
        self,
        dropouts: Mapping[Stage, Set[str]] | None = None,
        tamper: Callable[[ServerMessage], ServerMessage] | None = None,
    ) -> None:
        dropouts = dropouts or {}
        requests: Mapping[str, ServerMessage] = self.server.setup()
        for stage in Stage:
            self.inspect()
            for cid, request in requests.items():
                if cid in dropouts.get(stage, ()):
                    continue
                delivered = tamper(request) if tamper is not None else request
                self.messages.append(delivered)
                client = self.clients[cid]
                try:
                    reply: ClientReply
                    if isinstance(delivered, SetupRequest):
                        reply = client.setup(delivered)
                    elif isinstance(delivered, ShareKeysRequest):
                        reply = client.share_keys(delivered)
                    elif isinstance(delivered, MaskedInputRequest):
                        reply = client.masked_input(delivered, self.vectors[cid])
                    else:
                        assert isinstance(delivered, UnmaskRequest)
                        reply = client.unmask(delivered)
                except ShareRejected:
                    continue
                self.messages.append(reply)
                self.server.receive(reply)
                self.inspect()
            if stage is Stage.ADVERTISE_KEYS:
                requests = self.server.close_advertise_keys()
            elif stage is Stage.SHARE_KEYS:
                requests = self.server.close_share_keys()
            elif stage is Stage.MASKED_INPUT:
                requests = self.server.close_masked_input()
            else:
                self.server.close_unmasking()
        self.inspect()

    def inspect(self) -> None:
        """Nothing the server holds is, or is within quantisation of, any client's input."""
        self.inspections += 1
        d = len(self.encoded[next(iter(self.encoded))])
        step = self.server.params.quantizer().step
        for value in held(self.server):
            if isinstance(value, bytes | bytearray):
                if len(value) % d or len(value) // d not in (4, 8):
                    continue
                value = np.frombuffer(value, dtype=f"<u{len(value) // d}")
            if value.shape != (d,):
                continue
            if np.issubdtype(value.dtype, np.unsignedinteger):
                self.running_sums_seen += 1
                for cid, encoded in self.encoded.items():
                    off = (value.astype(np.uint64) - encoded) & np.uint64((1 << self.bits) - 1)
                    near = np.minimum(off, (1 << self.bits) - off) <= 1
                    assert near.mean() < 0.01, f"server holds {cid}'s encoded input"
            else:
                for cid, vector in self.vectors.items():
                    gap = np.abs(value - np.clip(vector, -CLIP, CLIP))
                    assert (gap <= 2 * step).mean() < 0.01, f"server holds {cid}'s input"


def test_the_server_only_ever_holds_masked_vectors() -> None:
    vectors = make_vectors(8, 4000, seed=4)
    harness = Harness(vectors, threshold=2, neighbours=4)
    harness.run({Stage.MASKED_INPUT: {"client-01"}, Stage.UNMASKING: {"client-05"}})
    assert harness.running_sums_seen > 0, "the inspection never saw the running sum"
    result = harness.server.result
    assert result is not None
    truth = clipped_sum(vectors, set(result.included), CLIP)
    assert np.abs(result.total - truth).max() <= result.error_bound
    # the server never asked anyone for both shares of one client
    asked_b = {v for m in harness.messages if isinstance(m, UnmaskRequest) for v in m.survivors}
    asked_key = {v for m in harness.messages if isinstance(m, UnmaskRequest) for v in m.dropped}
    assert asked_b == set(result.included)
    assert asked_key == {"client-01"}
    assert not asked_b & asked_key
    # and it would notice an input if the server kept one
    harness.server.result = dataclasses.replace(result, total=vectors["client-03"].copy())
    with pytest.raises(AssertionError, match="client-03's input"):
        harness.inspect()
    harness.server.result = dataclasses.replace(result, error_bound=0.0)
    harness.server.__dict__["leak"] = [harness.encoded["client-06"] + 1]
    with pytest.raises(AssertionError, match="client-06's encoded input"):
        harness.inspect()


def test_a_masked_vector_looks_uniform() -> None:
    vectors = make_vectors(4, 20_000, seed=9, scale=0.5)
    harness = Harness(vectors, threshold=2)
    harness.run()
    masked = [m for m in harness.messages if isinstance(m, MaskedInputReply)]
    assert len(masked) == 4
    for reply in masked:
        words = np.frombuffer(reply.masked, dtype="<u4").astype(np.float64)
        truth = vectors[reply.sender]
        assert abs(np.corrcoef(words, truth)[0, 1]) < 0.05
        assert abs(np.corrcoef(words, harness.encoded[reply.sender])[0, 1]) < 0.05
        assert abs(words.mean() / 2**32 - 0.5) < 0.01
        counts = np.bincount((words // 2**28).astype(np.int64), minlength=16)
        expected = len(words) / 16
        assert ((counts - expected) ** 2 / expected).sum() < 60  # chi-square, 15 d.o.f.


def test_both_shares_of_one_client_are_never_revealed() -> None:
    vectors = make_vectors(5, 200)
    harness = Harness(vectors, threshold=2)
    seen: list[UnmaskRequest] = []

    def greedy(request: ServerMessage) -> ServerMessage:
        # a server that asks for both of the shares it holds of someone
        if isinstance(request, UnmaskRequest):
            both = request.model_copy(update={"dropped": request.survivors[:1]})
            seen.append(both)
            return both
        return request

    with pytest.raises(ProtocolError, match="both shares"):
        harness.run(tamper=greedy)
    client = harness.clients[seen[0].recipient]
    assert client.stage is ClientStage.FAILED


# --- tampering -------------------------------------------------------------------------------


def flip_share(target: str, victim_sender: str | None = None) -> Callable[[Message], Message]:
    def intercept(message: Message) -> Message:
        if isinstance(message, MaskedInputRequest) and message.recipient == target:
            shares = list(message.shares)
            index = 0
            if victim_sender is not None:
                index = [s.sender for s in shares].index(victim_sender)
            bad = bytearray(shares[index].ciphertext)
            bad[5] ^= 0x40
            shares[index] = shares[index].model_copy(update={"ciphertext": bytes(bad)})
            return message.model_copy(update={"shares": tuple(shares)})
        return message

    return intercept


def test_a_tampered_share_is_rejected_and_its_recipient_dropped() -> None:
    vectors = make_vectors(N, 500, seed=3)
    run = run_secure_aggregation(
        vectors,
        threshold=3,
        neighbours=6,
        clip=CLIP,
        intercept=flip_share("client-04"),
        rng=np.random.default_rng(8),
    )
    assert isinstance(run.refused["client-04"], ShareRejected)
    assert run.clients["client-04"].stage is ClientStage.FAILED
    assert run.result.dropped[Stage.MASKED_INPUT] == {"client-04"}
    expected = {f"client-{i:02d}" for i in range(N)} - {"client-04"}
    assert set(run.result.included) == expected
    truth = clipped_sum(vectors, expected, CLIP)
    assert np.abs(run.result.total - truth).max() <= run.result.error_bound


def test_shares_cannot_be_redirected_or_swapped() -> None:
    vectors = make_vectors(4, 20)

    def swap_senders(message: Message) -> Message:
        # relabel a share as coming from another neighbour: the key and associated data differ
        if isinstance(message, MaskedInputRequest) and message.recipient == "client-00":
            a, b, *rest = message.shares
            swapped = (
                a.model_copy(update={"sender": b.sender}),
                b.model_copy(update={"sender": a.sender}),
            )
            return message.model_copy(update={"shares": (*swapped, *rest)})
        return message

    run = run_secure_aggregation(vectors, threshold=2, clip=CLIP, intercept=swap_senders)
    assert isinstance(run.refused["client-00"], ShareRejected)

    def redirect(message: Message) -> Message:
        if isinstance(message, MaskedInputRequest) and message.recipient == "client-01":
            share = message.shares[0]
            moved = share.model_copy(update={"recipient": "client-02"})
            return message.model_copy(update={"shares": (moved, *message.shares[1:])})
        return message

    run = run_secure_aggregation(vectors, threshold=2, clip=CLIP, intercept=redirect)
    refused = run.refused["client-01"]
    assert isinstance(refused, ProtocolError)
    assert not isinstance(refused, ShareRejected)


def test_too_many_rejected_shares_abort_cleanly() -> None:
    vectors = make_vectors(4, 20)

    def tamper_all(message: Message) -> Message:
        if isinstance(message, MaskedInputRequest) and message.recipient != "client-00":
            return flip_share(message.recipient)(message)
        return message

    with pytest.raises(SecAggAborted) as caught:
        run_secure_aggregation(vectors, threshold=2, clip=CLIP, intercept=tamper_all)
    assert caught.value.stage is Stage.MASKED_INPUT


def test_a_corrupted_revealed_share_is_detected() -> None:
    vectors = make_vectors(6, 50)

    def lie(message: Message) -> Message:
        if isinstance(message, UnmaskReply) and message.self_mask_shares:
            first = message.self_mask_shares[0]
            y = (int.from_bytes(first.y, "big") + 1) % shamir.PRIME
            forged = first.model_copy(update={"y": y.to_bytes(shamir.SHARE_BYTES, "big")})
            return message.model_copy(
                update={"self_mask_shares": (forged, *message.self_mask_shares[1:])}
            )
        return message

    with pytest.raises(ReconstructionFailed):
        run_secure_aggregation(vectors, threshold=3, clip=CLIP, intercept=lie)


# --- the server's and clients' guards --------------------------------------------------------


def started(n: int = 4) -> tuple[SecAggServer, dict[str, SecAggClient], dict[str, SetupRequest]]:
    ids = [f"client-{i:02d}" for i in range(n)]
    server = SecAggServer(ids, threshold=2, vector_length=8, clip=CLIP)
    return server, {cid: SecAggClient(cid) for cid in ids}, server.setup()


def test_the_server_rejects_replies_that_do_not_fit() -> None:
    server, clients, setups = started()
    adverts = {cid: clients[cid].setup(r) for cid, r in setups.items()}
    server.receive(adverts["client-00"])
    with pytest.raises(ProtocolError, match="already replied"):
        server.receive(adverts["client-00"])
    with pytest.raises(ProtocolError, match="is for round other"):
        server.receive(adverts["client-01"].model_copy(update={"round_id": "other"}))
    with pytest.raises(ProtocolError, match="not expected"):
        server.receive(adverts["client-01"].model_copy(update={"sender": "mallory"}))
    for cid in ("client-01", "client-02", "client-03"):
        server.receive(adverts[cid])
    share_requests = server.close_advertise_keys()
    with pytest.raises(ProtocolError, match="does not answer stage share_keys"):
        server.receive(adverts["client-00"])
    replies = {cid: clients[cid].share_keys(r) for cid, r in share_requests.items()}
    partial = replies["client-00"].model_copy(update={"shares": replies["client-00"].shares[:1]})
    with pytest.raises(ProtocolError, match="one share to each"):
        server.receive(partial)
    for reply in replies.values():
        server.receive(reply)
    masked_requests = server.close_share_keys()
    masked = clients["client-00"].masked_input(masked_requests["client-00"], np.zeros(8))
    with pytest.raises(ProtocolError, match="bytes, expected"):
        server.receive(masked.model_copy(update={"masked": masked.masked[:-4]}))
    with pytest.raises(ProtocolError, match="cannot close stage unmasking"):
        server.close_unmasking()


def test_the_client_refuses_out_of_order_and_misaddressed_messages() -> None:
    server, clients, setups = started()
    client = clients["client-00"]
    with pytest.raises(ProtocolError, match="delivered to client-00"):
        client.setup(setups["client-01"])
    assert client.stage is ClientStage.FAILED
    fresh = SecAggClient("client-00")
    with pytest.raises(ProtocolError, match="share_keys called in stage setup"):
        fresh.share_keys(ShareKeysRequest(round_id="r", recipient="client-00", keys=()))
    assert fresh.stage is ClientStage.SETUP  # an out-of-order call changes nothing
    fresh.setup(setups["client-00"])
    with pytest.raises(ProtocolError, match="only 0 neighbours advertised keys"):
        fresh.share_keys(
            ShareKeysRequest(round_id=server.params.round_id, recipient="client-00", keys=())
        )


def test_params_are_validated() -> None:
    base: dict[str, Any] = {
        "round_id": "r",
        "participants": ("a", "b", "c", "d"),
        "threshold": 2,
        "graph_seed": bytes(32),
        "vector_length": 4,
        "clip": 1.0,
        "bits": 32,
    }
    SecAggParams(**base)
    with pytest.raises(ValidationError, match="exceeds the 3 neighbours"):
        SecAggParams(**{**base, "threshold": 4})
    with pytest.raises(ValidationError, match="exceeds the 2 neighbours"):
        SecAggParams(**{**base, "threshold": 3, "neighbours": 2})
    with pytest.raises(ValidationError, match="sorted and distinct"):
        SecAggParams(**{**base, "participants": ("b", "a", "c", "d")})
    with pytest.raises(ValidationError, match="cannot hold"):
        SecAggParams(**{**base, "bits": 2})
    with pytest.raises(ValidationError):
        SecAggParams(**{**base, "clip": float("inf")})


# --- the wire --------------------------------------------------------------------------------


def test_every_message_round_trips_through_json() -> None:
    vectors = make_vectors(6, 64)
    seen: list[Message] = []

    def record(message: Message) -> Message:
        seen.append(message)
        return message

    run_secure_aggregation(
        vectors,
        threshold=2,
        neighbours=3,
        clip=CLIP,
        dropouts={"masked_input": {"client-03"}},
        intercept=record,
        via_json=True,
    )
    kinds = {type(m).__name__ for m in seen}
    assert kinds == {
        "SetupRequest",
        "KeyAdvertisement",
        "ShareKeysRequest",
        "ShareKeysReply",
        "MaskedInputRequest",
        "MaskedInputReply",
        "UnmaskRequest",
        "UnmaskReply",
    }
    assert any(isinstance(m, UnmaskReply) and m.mask_key_shares for m in seen)
    for message in seen:
        text = encode_message(message)
        back = decode_message(text)
        assert type(back) is type(message)
        assert back == message
        assert decode_message(text.encode()) == message
    share = EncryptedShare(sender="a", recipient="b", nonce=bytes(12), ciphertext=b"\x00\xff")
    assert EncryptedShare.model_validate_json(share.model_dump_json()) == share
    revealed = RevealedShare(owner="a", x=3, y=b"\x01" * 66)
    assert RevealedShare.model_validate_json(revealed.model_dump_json()) == revealed
    with pytest.raises(ValidationError):
        decode_message('{"kind": "nonsense"}')
