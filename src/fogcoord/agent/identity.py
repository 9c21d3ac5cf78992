"""A device's identity: its Ed25519 key pair, its device id and its own API key.

The key pair is made once; the device id is derived from the public key (``dev-`` and the first
16 hex digits of its SHA-256), so the id is bound to the key that signed the registration. The
coordinator answers a registration with the device's own API key, shown once; the agent keeps it
in ``<state dir>/identity.json`` (mode 0600, written atomically) and a restarted agent reuses it
instead of registering again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

IDENTITY_FILE = "identity.json"
FILE_MODE = 0o600
DIR_MODE = 0o700


def registration_message(device_id: str, public_key: str) -> bytes:
    """The bytes a device signs to register: the coordinator checks exactly these."""
    return f"fogcoord-register|{device_id}|{public_key}".encode()


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    private_key: bytes = b""
    """The raw 32-byte Ed25519 private key."""
    device_key: str | None = None
    """The device's own API key, once registered."""
    coordinator: str = ""
    """The coordinator that issued ``device_key``."""

    @classmethod
    def generate(cls, coordinator: str = "") -> DeviceIdentity:
        raw = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(
            device_id=device_id_for(_public_hex(raw)), private_key=raw, coordinator=coordinator
        )

    @property
    def public_key(self) -> str:
        """The Ed25519 public key, hex."""
        return _public_hex(self.private_key)

    @property
    def registered(self) -> bool:
        return self.device_key is not None

    def sign(self, message: bytes) -> str:
        """An Ed25519 signature of ``message``, hex."""
        return Ed25519PrivateKey.from_private_bytes(self.private_key).sign(message).hex()

    def registration_signature(self) -> str:
        return self.sign(registration_message(self.device_id, self.public_key))

    def with_key(self, device_key: str | None, coordinator: str | None = None) -> DeviceIdentity:
        return replace(
            self,
            device_key=device_key,
            coordinator=self.coordinator if coordinator is None else coordinator,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "public_key": self.public_key,
            "private_key": self.private_key.hex(),
            "device_key": self.device_key,
            "coordinator": self.coordinator,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceIdentity:
        raw = bytes.fromhex(str(data["private_key"]))
        if len(raw) != 32:
            raise ValueError("private_key must be 32 bytes")
        key = data.get("device_key")
        return cls(
            device_id=str(data["device_id"]),
            private_key=raw,
            device_key=str(key) if key else None,
            coordinator=str(data.get("coordinator", "")),
        )


def device_id_for(public_key: str) -> str:
    return "dev-" + hashlib.sha256(bytes.fromhex(public_key)).hexdigest()[:16]


def _public_hex(raw: bytes) -> str:
    key = Ed25519PrivateKey.from_private_bytes(raw).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


class IdentityStore(Protocol):
    """Where an agent keeps its identity between runs."""

    def load(self) -> DeviceIdentity | None: ...

    def save(self, identity: DeviceIdentity) -> None: ...


class MemoryIdentityStore:
    """Keeps the identity in memory only (simulated devices)."""

    __slots__ = ("identity",)

    def __init__(self, identity: DeviceIdentity | None = None) -> None:
        self.identity = identity

    def load(self) -> DeviceIdentity | None:
        return self.identity

    def save(self, identity: DeviceIdentity) -> None:
        self.identity = identity


class FileIdentityStore:
    """``<state dir>/identity.json``, readable by its owner only."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / IDENTITY_FILE

    def load(self) -> DeviceIdentity | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return DeviceIdentity.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path}: not a valid identity file ({exc})") from None

    def save(self, identity: DeviceIdentity) -> None:
        write_private(self.path, json.dumps(identity.to_json(), indent=2) + "\n")


def ensure_dir(path: Path) -> Path:
    """Create a private state directory (0700) if it does not exist."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a file only its owner can read (0600).

    The data goes to a temporary file in the same directory, created 0600, is flushed to disk and
    then renamed over ``path``: a reader sees the old file or the new one, never half of one.
    """
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp already creates 0600 on POSIX; be explicit
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
