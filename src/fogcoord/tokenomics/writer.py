"""Group commit: one writer task turns concurrent requests into one database transaction.

Callers enqueue operations and wait. The writer takes everything queued (up to a batch limit),
applies it to a copy-on-write view of the ledger state, writes the resulting block in one
transaction in a worker thread, and only then makes the new state visible and answers the
callers. A write that fails is retried (``max_retry_attempts``); if it still fails, every caller
of that batch gets :class:`LedgerUnavailable` and nothing of the batch exists anywhere, so the
same ids can simply be sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fogcoord.clock import Clock
from fogcoord.contracts.errors import ServiceUnavailable
from fogcoord.tokenomics.engine import BatchBuilder, LedgerState
from fogcoord.tokenomics.model import Account, Batch, TransferRequest, TransferResult
from fogcoord.tokenomics.store import LedgerStore

log = logging.getLogger("fogcoord.ledger")
MAX_BATCH = 8190
"""Transfers per block at most (TigerBeetle's batch size)."""


class LedgerUnavailable(ServiceUnavailable):
    code = "ledger_unavailable"


@dataclass
class _Op:
    transfers: Sequence[TransferRequest] = ()
    account: Account | None = None
    future: asyncio.Future[list[TransferResult] | str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Prepared:
    ops: list[_Op]
    builder: BatchBuilder
    answers: list[list[TransferResult] | str | None]
    write: asyncio.Task[None] | None = None


class GroupCommitWriter:
    def __init__(
        self,
        state: LedgerState,
        store: LedgerStore,
        clock: Clock,
        *,
        max_retry_attempts: int = 5,
        retry_backoff_s: float = 0.05,
    ) -> None:
        self.state = state
        self.store = store
        self.clock = clock
        self.max_retry_attempts = max_retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self._queue: deque[_Op] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.committed_transfers = 0
        self.failed_writes = 0
        self.listeners: list[Callable[[Batch], None]] = []

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        while self._queue:
            await asyncio.sleep(0)
            if task.done():
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for op in self._queue:
            if not op.future.done():
                op.future.set_exception(LedgerUnavailable("the ledger is stopping"))
        self._queue.clear()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, transfers: Sequence[TransferRequest]) -> list[TransferResult]:
        op = _Op(transfers=transfers)
        self._enqueue(op)
        result = await op.future
        assert isinstance(result, list)
        return result

    async def create_account(self, account: Account) -> str:
        op = _Op(account=account)
        self._enqueue(op)
        result = await op.future
        assert isinstance(result, str)
        return result

    async def tick(self) -> None:
        """Run one (possibly empty) batch now: expires pending transfers whose time is up."""
        op = _Op()
        self._enqueue(op)
        await op.future

    def _enqueue(self, op: _Op) -> None:
        if self._task is None or self._wake is None:
            raise LedgerUnavailable("the ledger is not running")
        self._queue.append(op)
        self._wake.set()

    async def _run(self) -> None:
        """Two-stage pipeline: block N+1 is built while block N is being written.

        N+1 is built on top of N's uncommitted view. It is written only after N committed; if
        N's write fails, N+1 is thrown away unanswered and its operations are queued again.
        """
        assert self._wake is not None
        inflight: _Prepared | None = None
        while True:
            if not self._queue and inflight is None:
                self._wake.clear()
                await self._wake.wait()
            prepared: _Prepared | None = None
            # Let callers just answered send their next request first: one loop turn turns a
            # trickle of tiny blocks into one full block, and blocks, not transfers, cost fsyncs.
            await asyncio.sleep(0)
            if inflight is not None and len(self._queue) < max(1, len(inflight.ops) // 2):
                # Too little waiting to fill a block of its own: building one now would only add
                # a commit. Land the block in flight; its callers' next requests join the queue.
                await self._land(inflight)
                inflight = None
                continue
            if self._queue:
                ops = self._take()
                try:
                    prepared = await self._prepare(ops, inflight)
                except asyncio.CancelledError:
                    self._fail(ops, "the ledger stopped")
                    raise
                except Exception as exc:
                    # The id lookup reads the database; if that fails, these callers are told
                    # so (they may resend) and the writer carries on, rather than dying and
                    # leaving every caller, now and later, waiting forever.
                    log.exception("ledger batch could not be prepared")
                    self._fail(ops, f"ledger lookup failed: {type(exc).__name__}")
            if inflight is not None:
                committed = await self._land(inflight)
                if not committed and prepared is not None:
                    prepared.builder.abandon()
                    self._queue.extendleft(reversed(prepared.ops))
                    prepared = None
            inflight = None
            if prepared is None:
                continue
            if prepared.builder.empty():
                self._answer(prepared)
                continue
            prepared.write = asyncio.get_running_loop().create_task(
                self._write(prepared.builder.finish())
            )
            inflight = prepared

    def _take(self) -> list[_Op]:
        ops: list[_Op] = []
        count = 0
        while self._queue and (not ops or count + len(self._queue[0].transfers) <= MAX_BATCH):
            op = self._queue.popleft()
            ops.append(op)
            count += len(op.transfers) or 1
        return ops

    async def _prepare(self, ops: list[_Op], parent: _Prepared | None) -> _Prepared:
        ids = [t.id for op in ops for t in op.transfers]
        unknown = self.state.unknown_ids(ids)
        known = await asyncio.to_thread(self.store.lookup, unknown) if unknown else {}
        builder = self.state.begin(
            self.clock.time(), known, parent.builder if parent is not None else None
        )
        builder.expire_due()
        answers: list[list[TransferResult] | str | None] = []
        for op in ops:
            if op.account is not None:
                answers.append(builder.create_account(op.account))
            elif op.transfers:
                answers.append(builder.submit(op.transfers))
            else:
                answers.append(None)
        return _Prepared(ops, builder, answers)

    async def _land(self, prepared: _Prepared) -> bool:
        """Wait for a block's write; commit it to memory and answer, or fail and reload."""
        assert prepared.write is not None
        try:
            await prepared.write
        except asyncio.CancelledError:
            prepared.builder.abandon()
            self._fail(prepared.ops, "the ledger stopped")
            raise
        except Exception as exc:
            # Whether the database kept the batch is unknown (a commit can fail after it
            # landed), so memory is rebuilt from the database: it stays the source of truth
            # and callers resending the same ids get an exact answer either way.
            # Reload before answering: a caller told "unavailable" must then read balances
            # as the database has them (the block may have landed), not the stale memory.
            log.exception("ledger batch failed")
            prepared.builder.abandon()
            try:
                await self._reload()
            finally:
                self._fail(prepared.ops, f"ledger write failed: {type(exc).__name__}")
            return False
        batch = prepared.builder.batch
        self.state.commit(prepared.builder)
        self.batches += 1
        self.committed_transfers += len(batch.transfers)
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:  # a listener's bug must not stop the ledger; the block is durable
                log.exception("block listener failed")
        self._answer(prepared)
        return True

    def _answer(self, prepared: _Prepared) -> None:
        for op, answer in zip(prepared.ops, prepared.answers, strict=True):
            if not op.future.done():
                op.future.set_result([] if answer is None else answer)

    def _fail(self, ops: list[_Op], reason: str) -> None:
        for op in ops:
            if not op.future.done():
                op.future.set_exception(LedgerUnavailable(reason))

    async def _reload(self) -> None:
        try:
            loaded = await asyncio.to_thread(self.store.load)
        except Exception:
            log.exception("ledger reload failed; keeping the last committed state")
            return
        self.state.replace(LedgerState.from_loaded(loaded))

    async def _write(self, batch: Batch) -> None:
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self.store.write, batch)
                return
            except Exception:
                attempt += 1
                self.failed_writes += 1
                if attempt > self.max_retry_attempts:
                    raise
                log.warning("ledger write failed (attempt %d), retrying", attempt)
                await self.clock.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
