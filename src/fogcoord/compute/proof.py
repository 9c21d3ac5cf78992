"""Results and the proof of work built from them.

A run that finished yields an :class:`ExecutionResult`: the output and the exact fuel it took.
What a device reports is the :class:`~fogcoord.contracts.compute.WorkReceipt` built from it (or
from the error, for a failed run), signed with the device's Ed25519 key over the receipt's
canonical bytes. Because fuel, output and outcome are deterministic, a verifier checks a receipt
by running the same task itself and comparing: :func:`disagreements` names the fields that
differ, and an honest device's receipt has none.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fogcoord.contracts.compute import ExecutionOutcome, WorkReceipt, sha256_hex

# Only these fields are a function of (module, input, limits); task_id names the task and detail
# is a human-readable explanation.
REPRODUCIBLE_FIELDS = ("module_hash", "input_hash", "fuel_used", "output_hash", "outcome")


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """A run that succeeded: the guest returned from its entry point or exited with code 0."""

    module_hash: str
    input_hash: str
    output: bytes
    fuel_used: int
    exit_code: int = 0
    stderr: bytes = b""

    @property
    def output_hash(self) -> str:
        return sha256_hex(self.output)

    def receipt(self, task_id: str) -> WorkReceipt:
        return WorkReceipt(
            task_id=task_id,
            module_hash=self.module_hash,
            input_hash=self.input_hash,
            fuel_used=self.fuel_used,
            output_hash=self.output_hash,
            outcome=ExecutionOutcome.OK,
            exit_code=self.exit_code,
        )


def sign_receipt(receipt: WorkReceipt, private_key: bytes) -> str:
    """Ed25519 signature (hex) of the receipt's canonical bytes with a raw 32-byte private key."""
    return Ed25519PrivateKey.from_private_bytes(private_key).sign(receipt.canonical_bytes()).hex()


def verify_receipt(receipt: WorkReceipt, signature: str, public_key: str) -> bool:
    """Whether ``signature`` (hex) is ``receipt`` signed by the key ``public_key`` (raw, hex)."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
        key.verify(bytes.fromhex(signature), receipt.canonical_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


def disagreements(claimed: WorkReceipt, reproduced: WorkReceipt) -> list[str]:
    """The reproducible fields in which a device's receipt differs from the verifier's own.

    Timeouts and crashes are not results of the task, so a receipt with either outcome can
    never be confirmed this way.
    """
    nondeterministic = {ExecutionOutcome.TIMEOUT, ExecutionOutcome.CRASHED}
    if claimed.outcome in nondeterministic or reproduced.outcome in nondeterministic:
        return ["outcome"]
    return [f for f in REPRODUCIBLE_FIELDS if getattr(claimed, f) != getattr(reproduced, f)]
