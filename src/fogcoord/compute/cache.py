"""The compiled-module cache: compile a module once per engine configuration, not once per task.

Compiling is the expensive step (milliseconds to seconds); instantiating a compiled module takes
microseconds. Entries are keyed by the SHA-256 of the module bytes as submitted *and* by the
engine fingerprint (wasmtime version, machine, every engine setting, instrumentation version),
because a compiled module carries the settings it was compiled with -- wasmtime does not check,
for instance, that a deserialized module was compiled with NaN canonicalisation -- so code built
under one configuration must never run under another.

In memory the cache is a bounded LRU of live modules. Optionally it also keeps serialized modules
on disk, one file per key under a private directory, so that a restarted worker skips the
compiler. Loading such a file runs native code from it: the directory is created mode 0700 and
must not be writable by anyone the device does not trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import wasmtime

DIR_MODE = 0o700


@dataclass(frozen=True, slots=True)
class CompiledModule:
    """A validated, import-checked module, compiled for one engine and ready to instantiate."""

    sha256: str
    """SHA-256 of the module bytes as submitted (binary or text)."""
    module: wasmtime.Module
    memory_min_pages: int
    table_min_elements: int
    grow_sites: int


@dataclass(frozen=True, slots=True)
class CacheKey:
    sha256: str
    fingerprint: str

    @property
    def file_name(self) -> str:
        return f"{self.fingerprint}-{self.sha256}.cwasm"


class ModuleCache:
    """A thread-safe LRU of compiled modules, with an optional on-disk tier."""

    def __init__(self, capacity: int = 64, directory: Path | str | None = None) -> None:
        if capacity < 1:
            raise ValueError("the cache needs room for at least one module")
        self.capacity = capacity
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._entries: OrderedDict[CacheKey, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: CacheKey, engine: wasmtime.Engine) -> CompiledModule | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
        loaded = self._load(key, engine)
        with self._lock:
            if loaded is None:
                self.misses += 1
                return None
            self.disk_hits += 1
            self._remember(key, loaded)
        return loaded

    def put(self, key: CacheKey, compiled: CompiledModule) -> None:
        with self._lock:
            self._remember(key, compiled)
        self._store(key, compiled)

    def clear(self) -> None:
        """Forget every in-memory entry (files on disk stay)."""
        with self._lock:
            self._entries.clear()

    def _remember(self, key: CacheKey, compiled: CompiledModule) -> None:
        self._entries[key] = compiled
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    # A file is a one-line JSON header (what the sandbox knows beyond the compiled code), then
    # the bytes of Module.serialize().

    def _store(self, key: CacheKey, compiled: CompiledModule) -> None:
        if self.directory is None:
            return
        header = {
            "sha256": compiled.sha256,
            "memory_min_pages": compiled.memory_min_pages,
            "table_min_elements": compiled.table_min_elements,
            "grow_sites": compiled.grow_sites,
        }
        blob = json.dumps(header).encode() + b"\n" + compiled.module.serialize()
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, self.directory / key.file_name)
        except OSError:
            # a cache that cannot write is only slower
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _load(self, key: CacheKey, engine: wasmtime.Engine) -> CompiledModule | None:
        if self.directory is None:
            return None
        path = self.directory / key.file_name
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        try:
            line, _, code = blob.partition(b"\n")
            header = json.loads(line)
            if header["sha256"] != key.sha256:
                raise ValueError("file holds another module")
            return CompiledModule(
                sha256=key.sha256,
                module=wasmtime.Module.deserialize(engine, code),
                memory_min_pages=int(header["memory_min_pages"]),
                table_min_elements=int(header["table_min_elements"]),
                grow_sites=int(header["grow_sites"]),
            )
        except (ValueError, KeyError, TypeError, wasmtime.WasmtimeError):
            # a torn or stale file is dropped and the module compiled again
            with contextlib.suppress(OSError):
                path.unlink()
            return None
