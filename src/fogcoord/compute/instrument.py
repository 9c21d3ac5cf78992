"""Binary instrumentation that lets the host see a refused ``memory.grow``.

wasmtime enforces a store's memory limit by making ``memory.grow`` return -1 to the guest; nothing
tells the host. A guest that then traps or exits non-zero would be reported as a plain failure,
and a limit the task merely hit would be indistinguishable from a bug. So before compiling, every
``memory.grow`` in the code section is replaced by a call to one appended function that performs
the grow and, when it returns -1, sets an appended (exported) global. The guest sees exactly the
same results; the host reads the global after the run.

Rewriting needs an exact instruction decoder, which is why the engine disables every proposal
whose opcodes this module does not know (threads, GC, exceptions, multi-memory, memory64, ...):
the module is validated by wasmtime first, so a decoder that meets an unknown opcode is an
internal error, never a silent misreading. Modules without ``memory.grow`` are left byte for byte
unchanged. The appended function costs a few units of fuel per grow; that cost is the same on
every run, so fuel stays reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

INSTRUMENTATION_VERSION = "grow-watch-1"
"""Part of the compiled-module cache key: a change to the rewriting changes the compiled code."""

GROW_REFUSED_EXPORT = "__fogcoord_grow_refused"
"""Name of the exported i32 global that becomes 1 once a ``memory.grow`` has been refused."""

PAGE_BYTES = 65536

_MAGIC = b"\x00asm\x01\x00\x00\x00"
_I32 = 0x7F
# Known sections in the order the binary format requires; custom sections (0) may go anywhere.
_SECTION_ORDER = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)
_TYPE, _IMPORT, _FUNCTION, _TABLE, _MEMORY, _GLOBAL, _EXPORT, _CODE = 1, 2, 3, 4, 5, 6, 7, 10
_MEMORY_GROW = 0x40
_CALL = 0x10


class InstrumentError(ValueError):
    """The module uses an encoding this decoder does not know."""


@dataclass(frozen=True, slots=True)
class ModuleLayout:
    """What the sandbox needs to know about a module besides what wasmtime reports."""

    wasm: bytes
    """The module to compile: instrumented when it grows memory, otherwise the input unchanged."""
    memory_min_pages: int
    """Initial pages of the module's memory (0 without one)."""
    table_min_elements: int
    """Initial elements of all its tables together."""
    grow_sites: int
    """How many ``memory.grow`` instructions were rewritten."""


def layout(wasm: bytes) -> ModuleLayout:
    """The initial memory and tables of a *validated* binary module, its grows instrumented."""
    sections = _sections(wasm)
    func_imports = global_imports = 0
    memory_min = table_min = 0
    for section_id, payload in sections:
        if section_id == _IMPORT:
            func_imports, global_imports, memory_min, table_min = _imports(payload)
        elif section_id == _MEMORY:
            memory_min += sum(_limits_min(payload, 0x01))
        elif section_id == _TABLE:
            table_min += sum(_limits_min(payload, 0x02))
    code = next((p for s, p in sections if s == _CODE), None)
    if code is None:
        return ModuleLayout(wasm, memory_min, table_min, 0)
    funcs = _count(sections, _FUNCTION)
    hook = func_imports + funcs
    bodies, sites = _rewrite_code(code, hook)
    if sites == 0:
        return ModuleLayout(wasm, memory_min, table_min, 0)
    flag = global_imports + _count(sections, _GLOBAL)
    hook_type = _count(sections, _TYPE)
    appended = {
        _TYPE: bytes([0x60, 1, _I32, 1, _I32]),
        _FUNCTION: _uleb(hook_type),
        _GLOBAL: bytes([_I32, 0x01, 0x41, 0x00, 0x0B]),
        _EXPORT: _name(GROW_REFUSED_EXPORT) + b"\x03" + _uleb(flag),
    }
    replaced = {_CODE: bodies + _body(_hook_body(flag))}
    out = _rebuild(sections, appended, replaced)
    return ModuleLayout(out, memory_min, table_min, sites)


# --- reading ----------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise InstrumentError("unexpected end of module")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    def skip_leb(self) -> None:
        while self.byte() & 0x80:
            pass

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise InstrumentError("unexpected end of module")
        self.pos += n

    def name(self) -> bytes:
        n = self.uleb()
        start = self.pos
        self.skip(n)
        return self.data[start : self.pos]


def _sections(wasm: bytes) -> list[tuple[int, bytes]]:
    if not wasm.startswith(_MAGIC):
        raise InstrumentError("not a binary WebAssembly module")
    r = _Reader(wasm, len(_MAGIC))
    out = []
    while r.pos < len(wasm):
        section_id = r.byte()
        size = r.uleb()
        start = r.pos
        r.skip(size)
        out.append((section_id, wasm[start : r.pos]))
    return out


def _count(sections: Iterable[tuple[int, bytes]], section_id: int) -> int:
    for sid, payload in sections:
        if sid == section_id:
            return _Reader(payload).uleb()
    return 0


def _skip_limits(r: _Reader) -> int:
    flags = r.byte()
    minimum = r.uleb()
    if flags & 0x01:
        r.skip_leb()
    return minimum


def _imports(payload: bytes) -> tuple[int, int, int, int]:
    """Imported functions, imported globals, and the initial sizes of imported memories/tables."""
    r = _Reader(payload)
    funcs = globals_ = memory = table = 0
    for _ in range(r.uleb()):
        r.name()
        r.name()
        kind = r.byte()
        if kind == 0x00:
            r.skip_leb()
            funcs += 1
        elif kind == 0x01:
            r.byte()
            table += _skip_limits(r)
        elif kind == 0x02:
            memory += _skip_limits(r)
        elif kind == 0x03:
            r.byte()
            r.byte()
            globals_ += 1
        else:
            raise InstrumentError(f"unknown import kind {kind:#x}")
    return funcs, globals_, memory, table


def _limits_min(payload: bytes, entry: int) -> list[int]:
    """Initial sizes in a memory section (entry = limits) or a table section (reftype, limits)."""
    r = _Reader(payload)
    out = []
    for _ in range(r.uleb()):
        if entry == 0x02:
            r.byte()
        out.append(_skip_limits(r))
    return out


# --- the instruction decoder ------------------------------------------------------------------

_NO_IMMEDIATE = frozenset(
    [0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B, 0xD1, *range(0x45, 0xC5)],
)
# block types, branch depths, function/local/global/table/memory indices, integer constants
_ONE_LEB = frozenset([0x02, 0x03, 0x04, 0x0C, 0x0D, 0x10, 0x12, *range(0x20, 0x27), 0x3F, 0x40])
_ONE_LEB |= {0x41, 0x42, 0xD0, 0xD2}
_TWO_LEB = frozenset([0x11, 0x13])
_MEMARG = frozenset(range(0x28, 0x3F))
# 0xFC sub-opcodes (saturating truncation, bulk memory, tables) by number of LEB immediates.
_FC_IMMEDIATES = {**dict.fromkeys(range(8), 0), 8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1}
_FC_IMMEDIATES.update({14: 2, 15: 1, 16: 1, 17: 1})


def _skip_memarg(r: _Reader) -> None:
    align = r.uleb()
    if align & 0x40:  # multi-memory: an explicit memory index follows
        r.skip_leb()
    r.skip_leb()


def _skip_simd(r: _Reader) -> None:
    op = r.uleb()
    if op <= 0x0B or op in (0x5C, 0x5D):
        _skip_memarg(r)
    elif op in (0x0C, 0x0D):
        r.skip(16)
    elif 0x15 <= op <= 0x22:
        r.skip(1)
    elif 0x54 <= op <= 0x5B:
        _skip_memarg(r)
        r.skip(1)


def _rewrite_code(payload: bytes, hook: int) -> tuple[bytes, int]:
    """The code section with each ``memory.grow`` turned into ``call hook``, and how many.

    The count already includes the hook, whose body the caller appends.
    """
    r = _Reader(payload)
    count = r.uleb()
    call = bytes([_CALL]) + _uleb(hook)
    bodies = [_uleb(count + 1)]
    sites = 0
    for _ in range(count):
        size = r.uleb()
        end = r.pos + size
        body_start = r.pos
        for _ in range(r.uleb()):
            r.skip_leb()
            r.byte()
        chunks = [payload[body_start : r.pos]]
        copied = r.pos
        while r.pos < end:
            at = r.pos
            op = r.byte()
            if op == _MEMORY_GROW:
                if r.uleb() != 0:
                    raise InstrumentError("memory.grow on a memory other than 0")
                chunks.append(payload[copied:at])
                chunks.append(call)
                copied = r.pos
                sites += 1
            else:
                _skip_immediates(r, op)
        if r.pos != end:
            raise InstrumentError("function body overruns its size")
        chunks.append(payload[copied:end])
        bodies.append(_body(b"".join(chunks)))
    if r.pos != len(payload):
        raise InstrumentError("trailing bytes in the code section")
    return b"".join(bodies), sites


def _skip_immediates(r: _Reader, op: int) -> None:
    if op in _NO_IMMEDIATE:
        return
    if op in _ONE_LEB:
        r.skip_leb()
    elif op in _MEMARG:
        _skip_memarg(r)
    elif op in _TWO_LEB:
        r.skip_leb()
        r.skip_leb()
    elif op == 0x43:
        r.skip(4)
    elif op == 0x44:
        r.skip(8)
    elif op == 0x0E:
        for _ in range(r.uleb() + 1):
            r.skip_leb()
    elif op == 0x1C:
        r.skip(r.uleb())
    elif op == 0xFC:
        sub = r.uleb()
        if sub not in _FC_IMMEDIATES:
            raise InstrumentError(f"unknown opcode 0xfc {sub}")
        for _ in range(_FC_IMMEDIATES[sub]):
            r.skip_leb()
    elif op == 0xFD:
        _skip_simd(r)
    else:
        raise InstrumentError(f"unknown opcode {op:#04x}")


# --- writing ----------------------------------------------------------------------------------


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _name(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _uleb(len(raw)) + raw


def _body(code: bytes) -> bytes:
    return _uleb(len(code)) + code


def _hook_body(flag: int) -> bytes:
    """``(func (param i32) (result i32) (local i32))``: grow, and note a refusal in ``flag``."""
    return b"".join(
        [
            bytes([0x01, 0x01, _I32]),  # one local i32
            bytes([0x20, 0x00, 0x40, 0x00, 0x22, 0x01]),  # local.get 0; memory.grow; local.tee 1
            bytes([0x41, 0x7F, 0x46, 0x04, 0x40]),  # i32.const -1; i32.eq; if
            bytes([0x41, 0x01, 0x24]) + _uleb(flag),  # i32.const 1; global.set flag
            bytes([0x0B, 0x20, 0x01, 0x0B]),  # end; local.get 1; end
        ]
    )


def _append(payload: bytes | None, entry: bytes) -> bytes:
    if payload is None:
        return _uleb(1) + entry
    r = _Reader(payload)
    count = r.uleb()
    return _uleb(count + 1) + payload[r.pos :] + entry


def _rebuild(
    sections: list[tuple[int, bytes]], appended: dict[int, bytes], replaced: dict[int, bytes]
) -> bytes:
    present = {sid for sid, _ in sections}
    out: list[tuple[int, bytes]] = []
    for sid, payload in sections:
        if sid in replaced:
            out.append((sid, replaced[sid]))
        elif sid in appended:
            out.append((sid, _append(payload, appended[sid])))
        else:
            out.append((sid, payload))
    for sid in appended:
        if sid in present:
            continue
        rank = _SECTION_ORDER.index(sid)
        at = len(out)
        for i, (other, _) in enumerate(out):
            if other != 0 and _SECTION_ORDER.index(other) > rank:
                at = i
                break
        out.insert(at, (sid, _append(None, appended[sid])))
    return _MAGIC + b"".join(bytes([sid]) + _body(payload) for sid, payload in out)
