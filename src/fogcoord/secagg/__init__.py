"""Secure aggregation: SecAgg+ (Bell et al., CCS 2020), with SecAgg (Bonawitz et al., CCS 2017)
as its complete-graph case.

The server learns the sum of the clients' (clipped, quantised) vectors and nothing else about
any one of them, even when clients drop out at any stage, as long as at least ``threshold``
survive. Each client hides its vector under a self mask and pairwise masks shared with its
neighbours in a sparse random graph; pairwise masks cancel in the sum, and the masks of dropped
clients are cancelled from Shamir shares their neighbours hold.

* :mod:`.messages` -- the JSON-serialisable messages, stages and errors;
* :mod:`.client` / :mod:`.server` -- the two state machines;
* :mod:`.driver` -- a whole round in one process;
* :mod:`.shamir`, :mod:`.prg`, :mod:`.quantize`, :mod:`.graph` -- the building blocks.
"""

from fogcoord.secagg.client import ClientStage, SecAggClient
from fogcoord.secagg.driver import SecAggRun, run_secure_aggregation, secure_aggregate
from fogcoord.secagg.graph import NeighbourGraph
from fogcoord.secagg.messages import (
    ClientReply,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputReply,
    MaskedInputRequest,
    Message,
    ProtocolError,
    ReconstructionFailed,
    RevealedShare,
    SecAggAborted,
    SecAggError,
    SecAggParams,
    ServerMessage,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    ShareRejected,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    decode_message,
    encode_message,
)
from fogcoord.secagg.quantize import Quantizer
from fogcoord.secagg.server import AggregateResult, SecAggServer

__all__ = [
    "AggregateResult",
    "ClientReply",
    "ClientStage",
    "EncryptedShare",
    "KeyAdvertisement",
    "MaskedInputReply",
    "MaskedInputRequest",
    "Message",
    "NeighbourGraph",
    "ProtocolError",
    "Quantizer",
    "ReconstructionFailed",
    "RevealedShare",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggRun",
    "SecAggServer",
    "ServerMessage",
    "SetupRequest",
    "ShareKeysReply",
    "ShareKeysRequest",
    "ShareRejected",
    "Stage",
    "UnmaskReply",
    "UnmaskRequest",
    "decode_message",
    "encode_message",
    "run_secure_aggregation",
    "secure_aggregate",
]
