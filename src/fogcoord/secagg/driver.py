"""Run a whole SecAgg+ round in one process, over the protocol's own messages.

:func:`secure_aggregate` plays the server and every client of one round of SecAgg+ (Bell et
al., CCS 2020; with ``neighbours=None`` the complete graph, i.e. SecAgg of Bonawitz et al., CCS
2017) and returns the sum. The parties share nothing but messages: each request goes from the
:class:`SecAggServer` to one :class:`SecAggClient` and each reply back, optionally through JSON
(``via_json``) and an ``intercept`` hook that can alter or drop any message in transit, which is
how tests play a network adversary. ``dropouts`` makes chosen clients go silent at a chosen
stage, the way a device that loses its connection does.

Over the network the same objects are used unchanged: the coordinator drives a server and
relays its requests, the device agents each drive a client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from time import perf_counter
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from fogcoord.secagg.client import SecAggClient
from fogcoord.secagg.messages import (
    ClientReply,
    MaskedInputRequest,
    Message,
    ProtocolError,
    SecAggError,
    ServerMessage,
    SetupRequest,
    ShareKeysRequest,
    Stage,
    UnmaskRequest,
    decode_message,
    encode_message,
)
from fogcoord.secagg.quantize import Rounding
from fogcoord.secagg.server import AggregateResult, SecAggServer

Intercept = Callable[[Message], Message | None]
_M = TypeVar("_M", bound=Message)


@dataclass
class SecAggRun:
    """A finished round: the result, both sides' objects, and what went wrong on the way.

    ``refused`` holds the clients that raised instead of replying (for example
    :class:`ShareRejected`), ``rejected`` the replies the server refused; both count as
    dropouts. Times are wall-clock seconds spent inside the server's and each client's methods.
    """

    result: AggregateResult
    server: SecAggServer
    clients: dict[str, SecAggClient]
    refused: dict[str, SecAggError] = field(default_factory=dict)
    rejected: dict[str, ProtocolError] = field(default_factory=dict)
    server_seconds: float = 0.0
    client_seconds: dict[str, float] = field(default_factory=dict)


def _stage_dropouts(
    dropouts: Mapping[str, Set[str]] | None, ids: Set[str]
) -> dict[Stage, Set[str]]:
    out: dict[Stage, Set[str]] = {stage: frozenset() for stage in Stage}
    for name, dropping in (dropouts or {}).items():
        try:
            stage = Stage(name)
        except ValueError:
            valid = ", ".join(s.value for s in Stage)
            raise ValueError(f"unknown stage {name!r}: stages are {valid}") from None
        unknown = set(dropping) - ids
        if unknown:
            raise ValueError(f"dropouts name clients without a vector: {sorted(unknown)}")
        out[stage] = frozenset(dropping)
    return out


def run_secure_aggregation(
    vectors: Mapping[str, npt.ArrayLike],
    *,
    threshold: int,
    neighbours: int | None = None,
    clip: float,
    bits: int | None = None,
    dropouts: Mapping[str, Set[str]] | None = None,
    rng: np.random.Generator | None = None,
    rounding: Rounding = "stochastic",
    via_json: bool = False,
    intercept: Intercept | None = None,
) -> SecAggRun:
    """Run one round; see :func:`secure_aggregate`. Returns the run for inspection."""
    rng = rng if rng is not None else np.random.default_rng()
    inputs = {cid: np.asarray(v) for cid, v in vectors.items()}
    lengths = {v.shape for v in inputs.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"every client needs a flat vector of one common length, got {lengths}")
    (length,) = next(iter(lengths))
    drop = _stage_dropouts(dropouts, set(inputs))

    def wire(message: _M) -> _M | None:
        sent: Message | None = intercept(message) if intercept is not None else message
        if sent is None:
            return None
        if via_json:
            sent = decode_message(encode_message(sent))
        if not isinstance(sent, type(message)):
            raise TypeError(f"a {type(message).__name__} arrived as a {type(sent).__name__}")
        return sent

    clock = perf_counter()
    server = SecAggServer(
        inputs,
        threshold=threshold,
        vector_length=length,
        clip=clip,
        neighbours=neighbours,
        bits=bits,
        rounding=rounding,
        round_id=rng.bytes(8).hex(),
        graph_seed=rng.bytes(32),
    )
    requests: Mapping[str, ServerMessage] = server.setup()
    server_seconds = perf_counter() - clock

    clients: dict[str, SecAggClient] = {}
    client_seconds: dict[str, float] = {}
    for cid in sorted(inputs):
        clock = perf_counter()
        clients[cid] = SecAggClient(cid, rng=np.random.default_rng(rng.integers(1 << 63)))
        client_seconds[cid] = perf_counter() - clock
    run_refused: dict[str, SecAggError] = {}
    run_rejected: dict[str, ProtocolError] = {}
    gone: set[str] = set()

    closers: tuple[Callable[[], Mapping[str, ServerMessage]], ...] = (
        server.close_advertise_keys,
        server.close_share_keys,
        server.close_masked_input,
    )
    for index, stage in enumerate(Stage):
        for cid, request in requests.items():
            delivered = wire(request)
            if delivered is None or cid in gone or cid in drop[stage]:
                gone.add(cid)
                continue
            clock = perf_counter()
            try:
                reply = _answer(clients[cid], delivered, inputs[cid])
            except SecAggError as exc:
                run_refused[cid] = exc
                gone.add(cid)
                continue
            finally:
                client_seconds[cid] += perf_counter() - clock
            arrived = wire(reply)
            if arrived is None:
                continue
            clock = perf_counter()
            try:
                server.receive(arrived)
            except ProtocolError as exc:
                run_rejected[cid] = exc
            finally:
                server_seconds += perf_counter() - clock
        clock = perf_counter()
        try:
            if index < len(closers):
                requests = closers[index]()
            else:
                result = server.close_unmasking()
        finally:
            server_seconds += perf_counter() - clock

    return SecAggRun(
        result=result,
        server=server,
        clients=clients,
        refused=run_refused,
        rejected=run_rejected,
        server_seconds=server_seconds,
        client_seconds=client_seconds,
    )


def _answer(client: SecAggClient, request: ServerMessage, vector: npt.ArrayLike) -> ClientReply:
    if isinstance(request, SetupRequest):
        return client.setup(request)
    if isinstance(request, ShareKeysRequest):
        return client.share_keys(request)
    if isinstance(request, MaskedInputRequest):
        return client.masked_input(request, vector)
    if isinstance(request, UnmaskRequest):
        return client.unmask(request)
    raise TypeError(f"not a server request: {type(request).__name__}")


def secure_aggregate(
    vectors: Mapping[str, npt.ArrayLike],
    *,
    threshold: int,
    neighbours: int | None = None,
    clip: float,
    bits: int | None = None,
    dropouts: Mapping[str, Set[str]] | None = None,
    rng: np.random.Generator | None = None,
    rounding: Rounding = "stochastic",
) -> npt.NDArray[np.float64]:
    """The sum of the clients' clipped vectors, computed by secure aggregation.

    ``vectors`` maps client ids to equal-length flat vectors. ``threshold`` is the Shamir
    threshold: the fewest clients (overall, and among each client's neighbours) that must
    survive every stage. ``neighbours`` is the SecAgg+ degree ``k`` (``None``: complete graph,
    plain SecAgg). Each coordinate is clipped to ``[-clip, clip]`` and quantised into a ring of
    ``bits`` bits (``None``: 32 up to 255 clients, else 64). ``dropouts`` maps a stage name
    (:class:`Stage`: ``advertise_keys``, ``share_keys``, ``masked_input``, ``unmasking``) to
    the clients that go silent at it. ``rng`` seeds the public graph, the round id and the
    stochastic rounding; secrets never come from it.

    The sum covers the clients whose masked input arrived -- those dropping at ``unmasking``
    included -- within ``AggregateResult.error_bound`` per coordinate. Raises
    :class:`SecAggAborted` when too few clients survive a stage.
    """
    return run_secure_aggregation(
        vectors,
        threshold=threshold,
        neighbours=neighbours,
        clip=clip,
        bits=bits,
        dropouts=dropouts,
        rng=rng,
        rounding=rounding,
    ).result.total
