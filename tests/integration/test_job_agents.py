"""A compute job end to end across processes: a real `fogcoord serve`, three real `fogcoord agent`
processes (each its own owner) that bid and run tasks in sandbox worker processes, and a
requester using `fogcoord job` to submit, watch and download verified results."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fogcoord.agent.identity import FileIdentityStore
from fogcoord.compute.examples import load_example, primes_input, primes_output, primes_reference
from tests.integration.test_market_agents import _env, _finish, _requester, _wait_for
from tests.served import Served, cli, start

pytestmark = pytest.mark.slow

RANGES = [(1_000_000 + i * 5_000, 1_000_000 + (i + 1) * 5_000) for i in range(6)]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start(tmp_path / "data", env=_env())
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=10)
        finally:
            _finish(server.proc)


def _owner_key(served: Served, name: str) -> str:
    operator = {"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": served.key}
    created = cli("keys", "create", "--kind", "requester", "--name", name, env=_env(**operator))
    assert created.returncode == 0, created.stderr
    key = re.search(r"(fc_[0-9a-f]{16}_\S{43})", created.stdout)
    assert key is not None, created.stdout
    return key.group(1)


def _registered(store: FileIdentityStore) -> Callable[[], bool]:
    def check() -> bool:
        identity = store.load()
        return identity is not None and identity.registered

    return check


def _agent(served: Served, key: str, state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogcoord",
            "agent",
            "--coordinator",
            served.url,
            "--api-key",
            key,
            "--state-dir",
            str(state),
            "--interval",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


def test_a_job_runs_on_agent_processes_and_its_results_are_verified(
    served: Served, tmp_path: Path
) -> None:
    agents = []
    try:
        for i in range(3):
            state = tmp_path / f"agent-{i}"
            agents.append(_agent(served, _owner_key(served, f"owner-{i}"), state))
        for i in range(3):
            _wait_for(_registered(FileIdentityStore(tmp_path / f"agent-{i}")), what=f"agent {i}")
        time.sleep(1.5)  # a heartbeat or two: the devices are online and eligible
        _, env = _requester(served)
        assert cli("wallet", "create", env=env).returncode == 0
        module = tmp_path / "primes.wat"
        module.write_bytes(load_example("primes"))
        inputs = []
        for i, (lo, hi) in enumerate(RANGES):
            path = tmp_path / f"range-{i}.bin"
            path.write_bytes(primes_input(lo, hi))
            inputs.append(str(path))
        submitted = cli(
            "job",
            "submit",
            str(module),
            *inputs,
            "--fuel",
            "100000000",
            "--max-price",
            "0.01",
            "--replication",
            "2",
            "--slots",
            "2",
            env=env,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        found = re.search(r"job (job-[0-9a-f]+)", submitted.stdout)
        assert found is not None, submitted.stdout
        job_id = found.group(1)

        def settled() -> str | None:
            status = cli("job", "status", job_id, env=env)
            assert status.returncode == 0, status.stderr
            assert "failed" not in status.stdout.split("\n")[0], status.stdout
            return status.stdout if ": settled" in status.stdout else None

        status = _wait_for(settled, timeout=90, what="the job to settle")
        assert f"{len(RANGES)} verified" in status
        archive = tmp_path / "results.zip"
        got = cli("job", "results", job_id, "-o", str(archive), env=env)
        assert got.returncode == 0, got.stderr
        with zipfile.ZipFile(io.BytesIO(archive.read_bytes())) as z:
            manifest = json.loads(z.read("manifest.json"))
            assert manifest["job"]["state"] == "settled"
            for task in manifest["tasks"]:
                lo, hi = RANGES[task["index"]]
                assert primes_output(z.read(task["file"])) == primes_reference(lo, hi)
                assert task["provider"]
                assert task["validators"]
    finally:
        for proc in agents:
            proc.send_signal(signal.SIGINT)
        for proc in agents:
            try:
                proc.wait(timeout=10)
            finally:
                _finish(proc)
