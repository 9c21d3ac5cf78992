"""Crash safety: SIGKILL a process writing to the ledger at random moments, reopen, check.

A child process (``ledger_crash_child.py``) writes single transfers, linked chains and
pending+post pairs through ``Ledger`` on a SQLite file and prints each id only after the ledger
answered. The parent kills it with SIGKILL 50-400 ms after it is ready, again and again; after
every kill the database must hold every acknowledged id, no chain may be partial, and
``verify_ledger`` must find nothing wrong. The next child starts on the same file and carries on.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from fogcoord.tokenomics.model import FailedId, PendingState
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import verify_ledger
from tests.tokenomics.ledger_crash_child import CHAIN_LEGS
from tests.tokenomics.ledger_support import double_entry_holds, sqlite_engine

CHILD = Path(__file__).with_name("ledger_crash_child.py")
KILLS = 12
CHAIN_RE = re.compile(r"^(g\d+-c-\d+-\d+)-(\d+)$")


class Child:
    def __init__(self, db: Path, gen: str, limit: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(db), gen, str(limit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"the child did not start (got {line!r}):\n{err}")

    def kill(self) -> str:
        self.proc.send_signal(signal.SIGKILL)
        out, _ = self.proc.communicate(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL
        return out

    def finish(self) -> str:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return out


def parse(out: str) -> tuple[set[str], set[str]]:
    acked, refused = set(), set()
    for line in out.split("\n")[:-1]:  # the piece after the last newline was cut short
        kind, _, tid = line.partition(" ")
        if kind == "ACK":
            acked.add(tid)
        elif kind == "REFUSED":
            refused.add(tid)
    return acked, refused


def check(db: Path, acked: set[str], refused: set[str]) -> int:
    """Everything the children were told is in the database, and the database is sound."""
    with sqlite_engine(db) as engine:
        store = SqlLedgerStore(engine)
        report = verify_ledger(store)
        assert report.ok, report.problems
        transfers = {t.id: t for t in store.all_transfers()}
        missing = acked - set(transfers)
        assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
        found = store.lookup(sorted(refused))
        assert all(isinstance(v, FailedId) for v in found.values())
        chains: dict[str, set[str]] = defaultdict(set)
        for tid in transfers:
            m = CHAIN_RE.match(tid)
            if m:
                chains[m.group(1)].add(m.group(2))
        partial = {c: legs for c, legs in chains.items() if len(legs) != CHAIN_LEGS}
        assert not partial, f"partial chains: {partial}"
        states = store.pending_states()
        for t in transfers.values():
            if t.pending_id is not None:  # a post never exists without its pending transfer
                assert t.pending_id in transfers
                assert states[t.pending_id] is PendingState.POSTED
        assert double_entry_holds(store.accounts())
        loaded = store.load()
        assert loaded.next_seq == len(transfers) + 1
        return len(transfers)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acked: set[str] = set()
    refused: set[str] = set()
    count = 0
    started = time.monotonic()
    for gen in range(KILLS):
        child = Child(db, f"g{gen}")
        child.wait_ready()
        time.sleep(rng.uniform(0.05, 0.4))
        new_acked, new_refused = parse(child.kill())
        acked |= new_acked
        refused |= new_refused
        total = check(db, acked, refused)
        assert total >= count, f"seed {seed}: transfers disappeared"
        count = total
    # a last child carries on after all those crashes and stops cleanly
    child = Child(db, "g99", limit=200)
    child.wait_ready()
    out = child.finish()
    assert out.rstrip().endswith("DONE")
    final_acked, final_refused = parse(out)
    assert len(final_acked) >= 200
    acked |= final_acked
    refused |= final_refused
    assert check(db, acked, refused) > count
    assert len(acked) > 200, f"seed {seed}: the killed children acknowledged almost nothing"
    assert time.monotonic() - started < 60
