"""The compute value types: limits, task specs, receipts and their signed encoding."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from fogcoord.compute import sign_receipt, verify_receipt
from fogcoord.contracts.compute import (
    ExecutionOutcome,
    SandboxLimits,
    TaskSpec,
    WorkReceipt,
    sha256_hex,
)

H_MODULE = sha256_hex(b"module")
H_INPUT = sha256_hex(b"input")
H_OUTPUT = sha256_hex(b"output")


def receipt(**changes: object) -> WorkReceipt:
    fields: dict[str, object] = {
        "task_id": "task-1",
        "module_hash": H_MODULE,
        "input_hash": H_INPUT,
        "fuel_used": 36_422_438,
        "output_hash": H_OUTPUT,
        "outcome": ExecutionOutcome.OK,
        "exit_code": 0,
    }
    fields.update(changes)
    return WorkReceipt.model_validate(fields)


def test_sha256_hex_is_lowercase_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_limits_defaults_and_bounds() -> None:
    limits = SandboxLimits(fuel=1)
    assert limits.memory_bytes == 64 * 2**20
    assert limits.table_elements == 10_000
    assert limits.max_output_bytes == limits.max_input_bytes == 16 * 2**20
    with pytest.raises(ValidationError):
        SandboxLimits(fuel=0)
    with pytest.raises(ValidationError):
        limits.fuel = 5  # type: ignore[misc]


def test_task_spec_names_content_by_hash() -> None:
    spec = TaskSpec(
        task_id="t", module_hash=H_MODULE, input_hash=H_INPUT, limits=SandboxLimits(fuel=10)
    )
    assert spec.entry == "_start"
    with pytest.raises(ValidationError):
        TaskSpec(task_id="t", module_hash="abc", input_hash=H_INPUT, limits=SandboxLimits(fuel=10))
    with pytest.raises(ValidationError):
        TaskSpec(
            task_id="t",
            module_hash=H_MODULE.upper(),
            input_hash=H_INPUT,
            limits=SandboxLimits(fuel=10),
        )


def test_canonical_bytes_golden_value() -> None:
    """The signed encoding must never change silently: devices and verifiers depend on it."""
    expected = (
        "fogcoord-receipt-v1\n"
        'task_id="task-1"\n'
        f'module_hash="{H_MODULE}"\n'
        f'input_hash="{H_INPUT}"\n'
        "fuel_used=36422438\n"
        f'output_hash="{H_OUTPUT}"\n'
        'outcome="ok"\n'
        "exit_code=0\n"
        'detail=""'
    ).encode()
    assert receipt().canonical_bytes() == expected
    assert sha256_hex(expected) == (
        "0c7acb8ec4baafb76a4d249b65733ec104414ef37f55c861b5f85c182c34e8ab"
    )


def test_canonical_bytes_escape_what_could_forge_a_field() -> None:
    failed = receipt(outcome=ExecutionOutcome.TRAP, exit_code=None, detail='x"\nfuel_used=1\u00e9')
    text = failed.canonical_bytes().decode("ascii")
    assert text.count("\n") == 8
    assert 'detail="x\\"\\nfuel_used=1\\u00e9"' in text
    assert "exit_code=null" in text


def test_every_field_changes_the_bytes() -> None:
    base = receipt().canonical_bytes()
    for change in (
        {"task_id": "task-2"},
        {"module_hash": H_INPUT},
        {"input_hash": H_MODULE},
        {"fuel_used": 36_422_439},
        {"output_hash": H_MODULE},
        {"outcome": ExecutionOutcome.EXIT_NONZERO},
        {"exit_code": None},
        {"detail": "x"},
    ):
        assert receipt(**change).canonical_bytes() != base, change


def test_signature_round_trip_and_tamper() -> None:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes_raw()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    signed = receipt()
    signature = sign_receipt(signed, private)
    assert verify_receipt(signed, signature, public)
    assert not verify_receipt(receipt(fuel_used=36_422_439), signature, public)
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert not verify_receipt(signed, signature, other.hex())
    assert not verify_receipt(signed, "zz", public)
    assert not verify_receipt(signed, signature, "00")


def test_receipt_round_trips_through_json() -> None:
    r = receipt(outcome=ExecutionOutcome.OUT_OF_FUEL, exit_code=None, detail="all fuel consumed")
    again = WorkReceipt.model_validate_json(r.model_dump_json())
    assert again == r
    assert again.canonical_bytes() == r.canonical_bytes()
