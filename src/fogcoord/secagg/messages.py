"""The messages of one secure-aggregation round, the stages they belong to, and the errors.

The round follows Bonawitz et al. ("Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017, fig. 4, semi-honest variant) restricted to the SecAgg+ neighbour graph of
Bell et al. ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020).
Each stage is one request from the server to every surviving client and one reply back; a
client that does not reply to a stage's request has dropped *at* that stage:

=================  ===========================  ==========================================
stage              server -> client             client -> server
=================  ===========================  ==========================================
advertise_keys     :class:`SetupRequest`        :class:`KeyAdvertisement`
share_keys         :class:`ShareKeysRequest`    :class:`ShareKeysReply`
masked_input       :class:`MaskedInputRequest`  :class:`MaskedInputReply`
unmasking          :class:`UnmaskRequest`       :class:`UnmaskReply`
=================  ===========================  ==========================================

Every message is a frozen pydantic model with a ``kind`` discriminator; binary fields (keys,
ciphertexts, share values, the masked vector) are base64 in JSON, so :func:`encode_message` /
:func:`decode_message` carry them over any text channel. The server only forwards ciphertexts
between clients, it never holds a key that opens them.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from fogcoord.secagg.graph import effective_degree
from fogcoord.secagg.quantize import MAX_BITS, Quantizer, Rounding

KEY_BYTES = 32
NONCE_BYTES = 12


class Stage(enum.StrEnum):
    """The four request/reply exchanges of a round, named by what the clients send."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASKING = "unmasking"


# --- errors ----------------------------------------------------------------------------------


class SecAggError(Exception):
    """Base of every secure-aggregation failure."""


class ProtocolError(SecAggError):
    """A message that does not fit the round: wrong stage, sender, recipient or content.

    The server raises it from ``receive`` and records nothing, so the sender counts as dropped
    at that stage; a client raises it instead of replying.
    """


class ShareRejected(ProtocolError):
    """An encrypted share failed authenticated decryption (tampered, or not for this client).

    The receiving client refuses the rest of the round -- it cannot tell whether the sender or
    the relay misbehaved, and continuing would mask with a peer whose secrets it cannot help
    recover -- so it sends no masked input and the server treats it as dropped at
    ``masked_input``; the round completes without it, or aborts if too few remain.
    """

    def __init__(self, recipient: str, sender: str) -> None:
        super().__init__(f"{recipient} rejected the share from {sender}: authentication failed")
        self.recipient = recipient
        self.sender = sender


class SecAggAborted(SecAggError):
    """Fewer than ``threshold`` parties survived ``stage``: the round cannot finish safely.

    ``client`` is None when the whole cohort fell below the threshold, or names the client whose
    surviving neighbours did (its secrets could no longer be recovered, or its input would be
    unmasked among too few).
    """

    def __init__(
        self,
        stage: Stage,
        survivors: frozenset[str],
        threshold: int,
        client: str | None = None,
    ) -> None:
        whose = "clients" if client is None else f"neighbours of {client}"
        super().__init__(
            f"secure aggregation aborted at stage {stage.value}: {len(survivors)} surviving "
            f"{whose}, fewer than the threshold {threshold}"
        )
        self.stage = stage
        self.survivors = survivors
        self.threshold = threshold
        self.client = client


class ReconstructionFailed(SecAggError):
    """Revealed shares reconstructed a secret that does not match the owner's commitment."""


# --- messages --------------------------------------------------------------------------------

_CONFIG = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

Key = Annotated[bytes, Field(min_length=KEY_BYTES, max_length=KEY_BYTES)]
ClientId = Annotated[str, Field(min_length=1, max_length=256)]
RoundId = Annotated[str, Field(min_length=1, max_length=128)]


class SecAggParams(BaseModel):
    """Everything every party of a round agrees on, sent in the setup."""

    model_config = _CONFIG

    round_id: RoundId
    participants: tuple[ClientId, ...] = Field(min_length=2)
    threshold: int = Field(ge=2)
    neighbours: int | None = Field(default=None, ge=1)
    graph_seed: Key
    vector_length: int = Field(ge=1)
    clip: float = Field(gt=0, allow_inf_nan=False)
    bits: int = Field(ge=1, le=MAX_BITS)
    rounding: Rounding = "stochastic"

    @model_validator(mode="after")
    def _consistent(self) -> SecAggParams:
        if list(self.participants) != sorted(set(self.participants)):
            raise ValueError("participants must be sorted and distinct")
        degree = effective_degree(len(self.participants), self.neighbours)
        if self.threshold > degree:
            raise ValueError(
                f"threshold {self.threshold} exceeds the {degree} neighbours each client shares "
                "its secrets with"
            )
        try:
            self.quantizer()
        except OverflowError as exc:
            # pydantic reports ValueErrors as validation errors, other exceptions escape
            raise ValueError(str(exc)) from None
        return self

    def quantizer(self) -> Quantizer:
        return Quantizer(self.clip, self.bits, len(self.participants), self.rounding)


class SetupRequest(BaseModel):
    """Opens the round for one client; it answers with its :class:`KeyAdvertisement`."""

    model_config = _CONFIG
    kind: Literal["setup_request"] = "setup_request"
    recipient: ClientId
    params: SecAggParams


class KeyAdvertisement(BaseModel):
    """A client's fresh public keys: ``mask_key`` (c) for pairwise masks, ``share_key`` (s) for
    encrypting shares, and a SHA-256 commitment to its self-mask seed ``b``."""

    model_config = _CONFIG
    kind: Literal["key_advertisement"] = "key_advertisement"
    round_id: RoundId
    sender: ClientId
    mask_key: Key
    share_key: Key
    self_mask_digest: Key


class ShareKeysRequest(BaseModel):
    """The advertisements of the recipient's neighbours that survived ``advertise_keys``."""

    model_config = _CONFIG
    kind: Literal["share_keys_request"] = "share_keys_request"
    round_id: RoundId
    recipient: ClientId
    keys: tuple[KeyAdvertisement, ...]


class EncryptedShare(BaseModel):
    """The sender's shares of ``b`` and of its mask private key, sealed for the recipient."""

    model_config = _CONFIG
    sender: ClientId
    recipient: ClientId
    nonce: Annotated[bytes, Field(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
    ciphertext: Annotated[bytes, Field(min_length=1, max_length=4096)]


class ShareKeysReply(BaseModel):
    model_config = _CONFIG
    kind: Literal["share_keys_reply"] = "share_keys_reply"
    round_id: RoundId
    sender: ClientId
    shares: tuple[EncryptedShare, ...]


class MaskedInputRequest(BaseModel):
    """The shares addressed to the recipient by its neighbours that survived ``share_keys``."""

    model_config = _CONFIG
    kind: Literal["masked_input_request"] = "masked_input_request"
    round_id: RoundId
    recipient: ClientId
    shares: tuple[EncryptedShare, ...]


class MaskedInputReply(BaseModel):
    """The masked input: ring elements as little-endian words (``uint32`` up to 32 bits)."""

    model_config = _CONFIG
    kind: Literal["masked_input_reply"] = "masked_input_reply"
    round_id: RoundId
    sender: ClientId
    masked: bytes


class UnmaskRequest(BaseModel):
    """Which shares the recipient must reveal: of ``b`` for neighbours whose masked input
    arrived (``survivors``), of the mask private key for those whose did not (``dropped``).
    The two never name the same client."""

    model_config = _CONFIG
    kind: Literal["unmask_request"] = "unmask_request"
    round_id: RoundId
    recipient: ClientId
    survivors: tuple[ClientId, ...]
    dropped: tuple[ClientId, ...]


class RevealedShare(BaseModel):
    """A share in the clear, ``(x, y)`` of the secret of ``owner``."""

    model_config = _CONFIG
    owner: ClientId
    x: int = Field(ge=1)
    y: bytes


class UnmaskReply(BaseModel):
    model_config = _CONFIG
    kind: Literal["unmask_reply"] = "unmask_reply"
    round_id: RoundId
    sender: ClientId
    self_mask_shares: tuple[RevealedShare, ...]
    mask_key_shares: tuple[RevealedShare, ...]


ServerMessage = SetupRequest | ShareKeysRequest | MaskedInputRequest | UnmaskRequest
ClientReply = KeyAdvertisement | ShareKeysReply | MaskedInputReply | UnmaskReply
Message = ServerMessage | ClientReply

_ADAPTER: TypeAdapter[Message] = TypeAdapter(Annotated[Message, Field(discriminator="kind")])

#: which reply each stage collects
REPLY_TYPES: dict[Stage, type[ClientReply]] = {
    Stage.ADVERTISE_KEYS: KeyAdvertisement,
    Stage.SHARE_KEYS: ShareKeysReply,
    Stage.MASKED_INPUT: MaskedInputReply,
    Stage.UNMASKING: UnmaskReply,
}


def encode_message(message: Message) -> str:
    """JSON text of any round message."""
    return message.model_dump_json()


def decode_message(data: str | bytes) -> Message:
    """The message a JSON text encodes, of the type its ``kind`` names."""
    return _ADAPTER.validate_json(data)
