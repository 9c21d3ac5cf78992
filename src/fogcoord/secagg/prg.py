"""Mask expansion and seed derivation for secure aggregation.

Every mask in SecAgg (Bonawitz et al., CCS 2017) and SecAgg+ (Bell et al., CCS 2020) is a
pseudorandom vector expanded from a short seed: the self mask from a client's own secret seed
``b``, and each pairwise mask from a seed both ends of a pair derive from an X25519 key
agreement. Only seeds are ever secret-shared, which is what keeps the cost of dropouts small.

The PRG is ChaCha20 (RFC 8439) keyed with the 32-byte seed, with a zero nonce, encrypting zeros:
its keystream, read as little-endian words, is the mask. A fixed nonce is safe because every
seed is used for exactly one mask -- pairwise seeds come from HKDF-SHA256 (RFC 5869) with the
round id and both client ids in ``info``, and key pairs are fresh per round. ChaCha20 through
OpenSSL runs at several GB/s, so one call per mask (about 60 microseconds for 100,000 words)
keeps mask expansion far from the cost that dominates a round.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 32
_NONCE = bytes(16)
_DOMAIN = b"fogcoord/secagg/v1"


class MaskStream:
    """Expands seeds into mask vectors of one length and word type, reusing its buffers.

    ``expand`` returns a view of an internal buffer that the next call overwrites: callers add
    it into an accumulator straight away, which is the only thing a mask is for.
    """

    def __init__(self, length: int, dtype: npt.DTypeLike) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.length = int(length)
        if self.length < 1:
            raise ValueError("a mask needs at least one word")
        nbytes = self.length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        # update_into wants room for one block beyond the input
        self._buffer = bytearray(nbytes + 64)
        self._view = np.frombuffer(self._buffer, dtype=self.dtype, count=self.length)

    def expand(self, seed: bytes) -> npt.NDArray[np.unsignedinteger]:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")
        encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        return self._view


def expand(seed: bytes, length: int, dtype: npt.DTypeLike) -> npt.NDArray[np.unsignedinteger]:
    """A fresh mask of ``length`` words of ``dtype`` from ``seed`` (uniform over the words)."""
    return MaskStream(length, dtype).expand(seed).copy()


def _context(parts: tuple[str, ...]) -> bytes:
    # length prefixes make the encoding injective: no two different contexts encode alike
    out = bytearray(_DOMAIN)
    for part in parts:
        raw = part.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def derive_seed(secret: bytes, *context: str) -> bytes:
    """A 32-byte seed or key from a shared secret (HKDF-SHA256), bound to ``context``."""
    info = _context(context)
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(secret)


def commitment(secret: bytes, *context: str) -> bytes:
    """A SHA-256 commitment to a uniformly random secret: hiding because the secret has 256
    bits of entropy, binding because SHA-256 resists collisions."""
    return hashlib.sha256(_context(("commitment", *context)) + secret).digest()


def associated_data(*context: str) -> bytes:
    """Context bytes to authenticate alongside a ciphertext."""
    return _context(context)


def pair_seed(shared_secret: bytes, round_id: str, a: str, b: str) -> bytes:
    """The pairwise-mask seed of clients ``a`` and ``b`` (symmetric in the two)."""
    low, high = (a, b) if a < b else (b, a)
    return derive_seed(shared_secret, "pair-mask", round_id, low, high)
