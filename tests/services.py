"""Reaching the external services tests need (NATS, PostgreSQL).

Tests that need one skip with a clear reason when it is unreachable, unless
``FOGCOORD_REQUIRE_SERVICES=1`` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

NATS_URL = os.environ.get("FOGCOORD_TEST_NATS_URL", "nats://127.0.0.1:4222")
PG_URL = os.environ.get("FOGCOORD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def services_required() -> bool:
    return os.environ.get("FOGCOORD_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need(name: str, host: str, port: int) -> None:
    if reachable(host, port):
        return
    reason = f"{name} is not reachable at {host}:{port}"
    if services_required():
        pytest.fail(f"{reason} and FOGCOORD_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


def unique(prefix: str) -> str:
    """A name no other test run uses: services keep state between runs."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
