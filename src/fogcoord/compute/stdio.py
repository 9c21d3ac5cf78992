"""A guest's stdio, kept in memory: the task input on stdin, bounded captures of stdout and stderr.

Nothing touches the file system. A stdin *file* (all the Python API offers) would also leak the
host through ``fd_filestat_get`` (inode, timestamps), so stdin is the C API's in-memory byte
stream. stdout and stderr are Python callbacks; stdout fails the guest's write once the output
limit is crossed (the run then ends as ``output_too_large``), stderr is truncated silently.

wasmtime drives WASI streams from its own (tokio) threads and releases a stream's callback there,
sometimes after the guest has returned. A Python callback released on a foreign thread while the
interpreter is shutting down aborts the whole process, so :meth:`Stdio.settle` waits, after the
store is closed, until both callbacks have been released: no run leaves one behind.
"""

from __future__ import annotations

import ctypes
import threading
import weakref

import wasmtime
from wasmtime import _ffi as wasmtime_ffi

STDERR_LIMIT = 64 * 1024
"""Guest stderr kept for diagnostics; the rest is dropped without failing the guest."""
SETTLE_TIMEOUT_S = 5.0
_EIO = 29


class Capture:
    """An output stream's bytes, up to ``limit``."""

    __slots__ = ("chunks", "fail", "limit", "overflowed", "size")

    def __init__(self, limit: int, *, fail: bool) -> None:
        self.limit = limit
        self.fail = fail
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflowed = False

    def write(self, data: bytes) -> int:
        written = len(data)
        room = self.limit - self.size
        if self.overflowed or written > room:
            self.overflowed = True
            if self.fail:
                # the guest's write fails, so a guest that checks stops early
                return -_EIO
            # a truncated diagnostic stream still reports every byte written
            data = data[:room]
        self.chunks.append(data)
        self.size += len(data)
        return written

    def value(self) -> bytes:
        return b"".join(self.chunks)


class _Sink:
    """The callback wasmtime holds; only wasmtime references it, so its release is observable."""

    __slots__ = ("__weakref__", "capture")

    def __init__(self, capture: Capture) -> None:
        self.capture = capture

    def __call__(self, data: bytes) -> int:
        return self.capture.write(data)


class Stdio:
    """The streams of one run."""

    def __init__(self, data: bytes, max_output_bytes: int) -> None:
        self.stdin = data
        self.stdout = Capture(max_output_bytes, fail=True)
        self.stderr = Capture(STDERR_LIMIT, fail=False)
        self._released: list[threading.Event] = []
        self.attached = False
        """Set once a store owns the streams; until then they are released with the config."""

    def configure(self, wasi: wasmtime.WasiConfig) -> None:
        _set_stdin(wasi, self.stdin)
        wasi.stdout_custom = self._sink(self.stdout)
        wasi.stderr_custom = self._sink(self.stderr)

    def _sink(self, capture: Capture) -> _Sink:
        released = threading.Event()
        sink = _Sink(capture)
        weakref.finalize(sink, released.set)
        self._released.append(released)
        return sink

    def settle(self) -> None:
        """Wait until wasmtime has released both callbacks (call after closing the store)."""
        if not self.attached:
            return
        for released in self._released:
            released.wait(SETTLE_TIMEOUT_S)


def _set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    vec = wasmtime_ffi.wasm_byte_vec_t()
    source = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    wasmtime_ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), source)
    # the configuration takes ownership of the vector
    wasmtime_ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))
