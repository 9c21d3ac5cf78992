"""Running tasks in worker processes, with a wall-clock timeout that is enforced by killing.

Fuel bounds the work a task can do, but not its wall time (a slow or busy device, a huge fuel
allowance), and a guest running inside wasmtime cannot be interrupted from Python. So tasks run
in separate processes, each holding its own :class:`~fogcoord.compute.sandbox.Sandbox`: when a
task overruns its timeout the process is killed, and the next task gets a fresh one. A worker
that dies (killed by the OS, a bug) is replaced the same way.

Workers are persistent, so their compiled-module caches stay warm: a module's bytes cross the
pipe only the first time a worker sees it, later tasks name it by SHA-256 (and the bytes are sent
again if that worker has since evicted it). A worker signals that it is ready before any task
clock starts, so process start-up never counts against a task's timeout.

:meth:`WorkerPool.run` is async but blocks no event loop: each task waits for its worker in a
thread. Sandbox outcomes, failures included, come back as receipts; :class:`TaskTimeout` and
:class:`WorkerCrashed` are raised, because they are facts about this device, not results of the
task, and no verifier could reproduce them (``ComputeError.receipt`` still builds a receipt for
them when one must be reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from time import monotonic
from types import TracebackType
from typing import Any

from fogcoord.compute.errors import TaskTimeout, WorkerCrashed
from fogcoord.compute.sandbox import Sandbox
from fogcoord.contracts.compute import SandboxLimits, WorkReceipt, sha256_hex

DEFAULT_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 60.0
_STOP_GRACE_S = 1.0


class WorkerPool:
    """``workers`` persistent sandbox processes; each task runs in one, under a timeout."""

    def __init__(
        self,
        workers: int = 1,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cache_size: int = 64,
        cache_dir: Path | str | None = None,
        start_method: str = "spawn",
    ) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = timeout_s
        context = multiprocessing.get_context(start_method)
        directory = str(cache_dir) if cache_dir is not None else None
        self._workers = [_Worker(context, cache_size, directory) for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        self._closed = False

    @property
    def pids(self) -> list[int | None]:
        """Process id of each worker, None for one not (or no longer) running."""
        return [w.pid for w in self._workers]

    async def start(self) -> None:
        """Start every worker now instead of on its first task."""
        await asyncio.gather(*(asyncio.to_thread(w.ensure_started) for w in self._workers))

    async def run(
        self,
        module_bytes: bytes,
        input: bytes,
        limits: SandboxLimits,
        task_id: str,
        entry: str = "_start",
        *,
        timeout_s: float | None = None,
    ) -> tuple[WorkReceipt, bytes]:
        """Run one task in a worker: its receipt and output (empty unless it succeeded).

        Raises :class:`TaskTimeout` after ``timeout_s`` (default: the pool's) of wall time and
        :class:`WorkerCrashed` if the worker died; either way that worker is replaced. Cancelling
        the caller does not stop the task: its worker stays busy until it ends or times out.
        """
        return await asyncio.to_thread(
            self.run_blocking, module_bytes, input, limits, task_id, entry, timeout_s=timeout_s
        )

    def run_blocking(
        self,
        module_bytes: bytes,
        input: bytes,
        limits: SandboxLimits,
        task_id: str,
        entry: str = "_start",
        *,
        timeout_s: float | None = None,
    ) -> tuple[WorkReceipt, bytes]:
        """:meth:`run` for callers without an event loop; blocks until a worker is free."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        request = _Request(
            module_hash=sha256_hex(module_bytes),
            module_bytes=module_bytes,
            input=input,
            limits=limits,
            task_id=task_id,
            entry=entry,
        )
        worker = self._idle.get()
        try:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            return worker.run(request, self.timeout_s if timeout_s is None else timeout_s)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop every worker; a task still running is killed."""
        self._closed = True
        for worker in self._workers:
            worker.stop()

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)


@dataclass(frozen=True, slots=True)
class _Request:
    module_hash: str
    module_bytes: bytes
    input: bytes
    limits: SandboxLimits
    task_id: str
    entry: str

    def message(self, *, with_module: bool) -> tuple[Any, ...]:
        # plain types only: the worker need not unpickle anything of ours
        return (
            self.module_hash,
            self.module_bytes if with_module else None,
            self.input,
            self.limits.model_dump(),
            self.task_id,
            self.entry,
        )


class _Worker:
    """One worker process and the parent's end of its pipe. Used by one thread at a time."""

    def __init__(self, context: BaseContext, cache_size: int, cache_dir: str | None) -> None:
        self._context = context
        self._cache_size = cache_size
        self._cache_dir = cache_dir
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._known: set[str] = set()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def ensure_started(self) -> None:
        with self._lock:
            if self._process is not None and self._process.is_alive() and self._conn is not None:
                return
            self._discard()
            parent, child = self._context.Pipe(duplex=True)
            process = self._context.Process(  # type: ignore[attr-defined]
                target=_serve,
                args=(child, self._cache_size, self._cache_dir),
                name="fogcoord-compute-worker",
                daemon=True,
            )
            process.start()
            child.close()
            self._process, self._conn = process, parent
            try:
                if parent.poll(STARTUP_TIMEOUT_S):
                    parent.recv()
                    return
            except (EOFError, OSError):
                pass
            raise WorkerCrashed(self._kill())

    def run(self, request: _Request, timeout_s: float) -> tuple[WorkReceipt, bytes]:
        self.ensure_started()
        deadline = monotonic() + timeout_s
        reply = self._ask(
            request.message(with_module=request.module_hash not in self._known),
            deadline,
            timeout_s,
        )
        if reply[0] == "missing":
            reply = self._ask(request.message(with_module=True), deadline, timeout_s)
        _, receipt, output = reply
        self._known.add(request.module_hash)
        return WorkReceipt.model_validate(receipt), output

    def _ask(self, message: tuple[Any, ...], deadline: float, timeout_s: float) -> tuple[Any, ...]:
        conn = self._conn
        if conn is None:
            raise WorkerCrashed(None)
        try:
            conn.send(message)
            if not conn.poll(max(0.0, deadline - monotonic())):
                self._kill()
                raise TaskTimeout(timeout_s)
            reply: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            raise WorkerCrashed(self._reap()) from None
        return reply

    def _reap(self) -> int | None:
        """Collect a dead worker's exit code and forget it, so the next task starts another."""
        process = self._process
        if process is not None:
            # the pipe can break a moment before the process is gone
            process.join(_STOP_GRACE_S)
        return self._kill()

    def _kill(self) -> int | None:
        process = self._process
        code = None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join()
            code = process.exitcode
        self._discard()
        return code

    def stop(self) -> None:
        """End the worker, busy or not.

        The process goes first and the pipe after it, so a thread waiting on a running task
        sees the end of input at once (and reports a crash) instead of waiting out its timeout.
        """
        with self._lock:
            process = self._process
            if process is not None and process.is_alive():
                process.terminate()
                process.join(_STOP_GRACE_S)
            self._kill()

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._process = None
        self._conn = None
        self._known = set()


def _serve(conn: Connection, cache_size: int, cache_dir: str | None) -> None:
    """A worker process: answer run requests until the parent closes the pipe."""
    # Ctrl-C belongs to the parent, which stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sandbox = Sandbox(cache_size=cache_size, cache_dir=cache_dir)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            module_hash, module_bytes, data, limits, task_id, entry = conn.recv()
        except EOFError:
            return
        if module_bytes is None:
            module = sandbox.cached(module_hash)
            if module is None:
                conn.send(("missing",))
                continue
            receipt, output = sandbox.execute(
                module, data, SandboxLimits.model_validate(limits), task_id=task_id, entry=entry
            )
        else:
            receipt, output = sandbox.execute(
                module_bytes,
                data,
                SandboxLimits.model_validate(limits),
                task_id=task_id,
                entry=entry,
            )
        conn.send(("done", receipt.model_dump(mode="json"), output))
