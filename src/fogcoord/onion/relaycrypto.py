"""Layered relay-cell encryption and the "recognized" check (tor-spec 0.3, 5.5, 6.1).

Each hop of a circuit shares with the origin four long-lived state objects, created from the
ntor key material (:class:`~fogcoord.onion.ntor.CircuitKeys`):

* two AES-128-CTR keystreams with an all-zero IV, one per direction (``Kf`` towards the hop,
  ``Kb`` back to the origin). They are never restarted: every 509-byte payload that passes the
  hop consumes the next 509 keystream bytes, so the two ends stay in step only because cells
  are delivered in order and never dropped;
* two running SHA-1 digests seeded with ``Df`` and ``Db``, over every relay payload that starts
  or ends at that hop (with the 4-byte digest field zeroed while hashing).

Sending forward (section 5.5.2.1), the origin writes the first 4 bytes of the target hop's
running digest into the cell, then encrypts with ``Kf`` of the target hop, then of each hop
before it, so the first hop's layer is outermost. Each relay removes its layer; if the
plaintext has ``recognized == 0`` *and* its digest matches the relay's running digest, the cell
is for that relay; otherwise it is passed on. A cell that reaches the last hop still
unrecognised has been tampered with (or mis-routed) and the circuit is destroyed with reason
PROTOCOL. Backwards (section 5.5.3) each relay adds a layer with ``Kb`` and the origin peels
layers hop by hop until one recognises the cell, which also tells it which hop sent it.

CTR mode is malleable; the 32-bit digest is what stops a relay in the middle from flipping
chosen bits of another hop's plaintext undetected (with probability 2**-32 per try).

A trial digest is computed on a copy of the running state and committed only when it matches,
so cells that merely pass through never disturb this hop's digest (section 6.1).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from fogcoord.onion.cells import PAYLOAD_LEN, CellError, RelayCell
from fogcoord.onion.ntor import CircuitKeys

_ZERO_IV = bytes(16)
_ZERO_DIGEST = bytes(4)
_NOT_RECOGNIZED = b"\0\0"


class RelayCryptoError(Exception):
    """An inbound cell that no hop of the circuit recognises: tampering or a protocol bug."""


def _ctr(key: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()


def _sha1(seed: bytes) -> hashes.Hash:
    digest = hashes.Hash(hashes.SHA1())
    digest.update(seed)
    return digest


class _Direction:
    """One direction of one hop: a keystream and a running digest."""

    __slots__ = ("cipher", "digest")

    def __init__(self, key: bytes, seed: bytes) -> None:
        self.cipher = _ctr(key)
        self.digest = _sha1(seed)

    def seal(self, cell: RelayCell) -> tuple[bytes, bytes]:
        """The cell's plaintext payload with its digest field filled, and the full digest."""
        plain = cell.encode() if cell.digest == _ZERO_DIGEST else _zeroed(cell.encode())
        self.digest.update(plain)
        full = self.digest.copy().finalize()
        return plain[:5] + full[:4] + plain[9:], full

    def recognize(self, plain: bytes) -> tuple[RelayCell, bytes] | None:
        """``(cell, full running digest)`` if ``plain`` is meant for this end, else None.

        Raises :class:`CellError` for a recognised cell that is malformed.
        """
        if plain[1:3] != _NOT_RECOGNIZED:
            return None
        trial = self.digest.copy()
        trial.update(plain[:5] + _ZERO_DIGEST + plain[9:])
        full = trial.copy().finalize()
        if full[:4] != plain[5:9]:
            return None
        self.digest = trial
        return RelayCell.decode(plain), full


def _zeroed(payload: bytes) -> bytes:
    return payload[:5] + _ZERO_DIGEST + payload[9:]


class HopCrypto:
    """The crypto state one hop shares with the origin, usable from either end.

    ``reverse=True`` swaps the roles of the two directions. The origin of a circuit uses a hop
    as-is; a hidden service, which answers a rendezvous as the *responder* of a virtual hop on
    its own circuit, uses the hop reversed so that its outbound cells use the backward keys.
    """

    __slots__ = ("backward", "forward")

    def __init__(self, keys: CircuitKeys, *, reverse: bool = False) -> None:
        fwd = _Direction(keys.kf, keys.df)
        bwd = _Direction(keys.kb, keys.db)
        self.forward, self.backward = (bwd, fwd) if reverse else (fwd, bwd)

    # -- relay side --------------------------------------------------------------------------

    def peel_forward(self, payload: bytes) -> bytes:
        """Remove this hop's forward layer (a relay receiving from the origin's side)."""
        return self.forward.cipher.update(payload)

    def recognize_forward(self, plain: bytes) -> tuple[RelayCell, bytes] | None:
        return self.forward.recognize(plain)

    def originate_backward(self, cell: RelayCell) -> tuple[bytes, bytes]:
        """Seal and encrypt a cell this hop sends to the origin: ``(payload, full digest)``."""
        plain, full = self.backward.seal(cell)
        return self.backward.cipher.update(plain), full

    def add_backward(self, payload: bytes) -> bytes:
        """Add this hop's backward layer to a cell passing towards the origin."""
        return self.backward.cipher.update(payload)


class OriginCrypto:
    """The origin's view of a whole circuit: one :class:`HopCrypto` per hop, first hop first."""

    __slots__ = ("hops",)

    def __init__(self, hops: list[HopCrypto] | None = None) -> None:
        self.hops: list[HopCrypto] = hops if hops is not None else []

    def add_hop(self, hop: HopCrypto) -> None:
        self.hops.append(hop)

    def encrypt(self, cell: RelayCell, hop: int) -> tuple[bytes, bytes]:
        """``(payload, full digest)`` of ``cell`` addressed to ``hop`` (0-based).

        The target hop's layer goes on first (innermost), the first hop's last (outermost).
        """
        if not 0 <= hop < len(self.hops):
            raise IndexError(f"no hop {hop} on a circuit of {len(self.hops)}")
        target = self.hops[hop].forward
        plain, full = target.seal(cell)
        payload = target.cipher.update(plain)
        for i in range(hop - 1, -1, -1):
            payload = self.hops[i].forward.cipher.update(payload)
        return payload, full

    def decrypt(self, payload: bytes) -> tuple[int, RelayCell, bytes]:
        """``(hop, cell, full digest)``: peel layers until a hop recognises the cell.

        Raises :class:`RelayCryptoError` when none does, :class:`CellError` when the recognised
        plaintext is malformed.
        """
        if len(payload) != PAYLOAD_LEN:
            raise CellError(f"a relay payload is {PAYLOAD_LEN} bytes, got {len(payload)}")
        for i, hop in enumerate(self.hops):
            payload = hop.backward.cipher.update(payload)
            found = hop.backward.recognize(payload)
            if found is not None:
                return i, found[0], found[1]
        raise RelayCryptoError("no hop of the circuit recognises the cell")


__all__ = ["HopCrypto", "OriginCrypto", "RelayCryptoError"]
