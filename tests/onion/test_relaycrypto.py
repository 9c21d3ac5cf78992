"""Layered AES-CTR and the running-digest "recognized" check, without any network."""

from __future__ import annotations

import os

import pytest

from fogcoord.onion.cells import RelayCell, RelayCommand
from fogcoord.onion.ntor import KEY_MATERIAL_LEN, CircuitKeys
from fogcoord.onion.relaycrypto import HopCrypto, OriginCrypto, RelayCryptoError


def random_keys() -> CircuitKeys:
    return CircuitKeys.from_material(os.urandom(KEY_MATERIAL_LEN))


def circuit(n: int) -> tuple[OriginCrypto, list[HopCrypto]]:
    keys = [random_keys() for _ in range(n)]
    return OriginCrypto([HopCrypto(k) for k in keys]), [HopCrypto(k) for k in keys]


def relay_forward(relays: list[HopCrypto], payload: bytes) -> tuple[int, RelayCell]:
    """What the relays do with an outbound cell: peel, check, pass on."""
    for i, relay in enumerate(relays):
        payload = relay.peel_forward(payload)
        found = relay.recognize_forward(payload)
        if found is not None:
            return i, found[0]
    raise RelayCryptoError("reached the end unrecognised")


def relay_backward(relays: list[HopCrypto], sender: int, cell: RelayCell) -> bytes:
    payload, _ = relays[sender].originate_backward(cell)
    for i in range(sender - 1, -1, -1):
        payload = relays[i].add_backward(payload)
    return payload


def test_each_hop_sees_only_its_own_cells() -> None:
    origin, relays = circuit(3)
    for n in range(200):
        target = n % 3
        cell = RelayCell(RelayCommand.DATA, 1 + n % 5, os.urandom(n % 499))
        payload, _ = origin.encrypt(cell, target)
        assert len(cell.data) < 16 or cell.data not in payload
        hop, got = relay_forward(relays, payload)
        assert (hop, got.data, got.stream_id) == (target, cell.data, cell.stream_id)


def test_backward_cells_are_attributed_to_their_sender() -> None:
    origin, relays = circuit(3)
    for n in range(200):
        sender = (n * 7) % 3
        cell = RelayCell(RelayCommand.DATA, 3, os.urandom(100))
        hop, got, _ = origin.decrypt(relay_backward(relays, sender, cell))
        assert hop == sender
        assert got.data == cell.data


def test_both_ends_agree_on_the_running_digest() -> None:
    """The full 20-byte digest after each cell is what a version-1 SENDME quotes."""
    origin, relays = circuit(2)
    for n in range(20):
        payload, sent = origin.encrypt(RelayCell(RelayCommand.DATA, 1, bytes([n])), 1)
        plain = relays[1].peel_forward(relays[0].peel_forward(payload))
        found = relays[1].recognize_forward(plain)
        assert found is not None
        assert found[1] == sent
        back, received = relays[1].originate_backward(RelayCell(RelayCommand.SENDME, 0))
        assert origin.decrypt(relays[0].add_backward(back))[2] == received


def test_a_tampered_cell_is_not_recognised() -> None:
    origin, relays = circuit(3)
    payload, _ = origin.encrypt(RelayCell(RelayCommand.DATA, 1, b"pay me 100"), 2)
    tampered = bytearray(payload)
    tampered[20] ^= 0x01  # CTR is malleable: this flips exactly one plaintext bit
    with pytest.raises(RelayCryptoError):
        relay_forward(relays, bytes(tampered))


def test_a_tampered_backward_cell_is_refused_by_the_origin() -> None:
    origin, relays = circuit(3)
    payload = bytearray(relay_backward(relays, 2, RelayCell(RelayCommand.DATA, 1, b"abc")))
    payload[11] ^= 0x80
    with pytest.raises(RelayCryptoError):
        origin.decrypt(bytes(payload))


def test_passing_cells_do_not_disturb_a_hops_digest() -> None:
    origin, relays = circuit(2)
    for n in range(50):
        # cells for hop 1 pass hop 0, and must not upset hop 0's digest for the next one
        relay_forward(relays, origin.encrypt(RelayCell(RelayCommand.DROP, 0, b"x"), 1)[0])
        hop, _ = relay_forward(relays, origin.encrypt(RelayCell(RelayCommand.DROP, 0, b""), 0)[0])
        assert hop == 0, n


def test_reversed_hop_swaps_directions() -> None:
    keys = random_keys()
    initiator = OriginCrypto([HopCrypto(keys)])
    responder = OriginCrypto([HopCrypto(keys, reverse=True)])
    payload, _ = initiator.encrypt(RelayCell(RelayCommand.DATA, 9, b"to the service"), 0)
    hop, cell, _ = responder.decrypt(payload)
    assert (hop, cell.data) == (0, b"to the service")
    payload, _ = responder.encrypt(RelayCell(RelayCommand.DATA, 9, b"to the client"), 0)
    assert initiator.decrypt(payload)[1].data == b"to the client"
