"""memory.grow instrumentation: exact decoding, unchanged behaviour, and what the host learns."""

from __future__ import annotations

import struct

import pytest
import wasmtime

from fogcoord.compute import MalformedModule, Sandbox
from fogcoord.compute.instrument import GROW_REFUSED_EXPORT, InstrumentError, layout
from fogcoord.contracts.compute import SandboxLimits

LIMITS = SandboxLimits(fuel=10**8, memory_bytes=8 * 2**20)

# Every immediate encoding the decoder must step over, several of them containing a 0x40 byte
# (the memory.grow opcode): `i32.const 64`, f32/f64 2.0, empty block types, memarg offsets of 64,
# local 64, v128 constants and shuffles, lanes, bulk memory and table instructions.
KITCHEN_SINK = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (type $pair (func (param i32) (result i32 i32)))
  (memory (export "memory") 1)
  (table $t 4 funcref)
  (table $u 2 externref)
  (global $g (mut i32) (i32.const 0))
  (global $h (mut i64) (i64.const 0x4040404040404040))
  (data $d "\\40\\40\\40\\40")
  (elem $e func $id $twice)
  (elem (table $t) (i32.const 0) func $id $twice)
  (func $id (param i32) (result i32) (local.get 0))
  (func $twice (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
  (func $tail (param i32) (result i32) (return_call $id (local.get 0)))
  (func $sum (param $acc i32) (result i32)
    (local $l1 i32) (local $l2 i64) PADDING
    (local $x64 i32)
    (local.set $x64 (i32.const 64))
    (local.set $acc (i32.add (local.get $acc) (local.get $x64)))
    (block $b (br_if $b (i32.eqz (local.get $acc))))
    (loop $l (nop))
    (if (i32.const 1) (then (local.set $acc (i32.add (local.get $acc) (i32.const 0x40)))) (else))
    (block $outer
      (block $inner
        (br_table $inner $outer $inner (i32.const 1))))
    (local.set $acc
      (i32.add (local.get $acc) (i32.trunc_f32_s (f32.const 2.0))))
    (local.set $acc
      (i32.add (local.get $acc) (i32.trunc_f64_s (f64.const 2.0))))
    (local.set $l2 (i64.const 0x40404040))
    (local.set $acc (i32.add (local.get $acc) (i32.wrap_i64 (local.get $l2))))
    (i32.store offset=64 (i32.const 0) (i32.const 0x4040))
    (local.set $acc (i32.add (local.get $acc) (i32.load offset=64 align=4 (i32.const 0))))
    (local.set $acc (i32.add (local.get $acc) (i32.load8_u offset=65 (i32.const 0))))
    (local.set $acc (i32.add (local.get $acc)
      (select (i32.const 1) (i32.const 2) (i32.const 0))))
    (local.set $acc (i32.add (local.get $acc)
      (select (result i32) (i32.const 3) (i32.const 4) (i32.const 1))))
    (local.set $acc (i32.add (local.get $acc) (call_indirect $t (param i32) (result i32)
      (i32.const 64) (i32.const 1))))
    (local.set $acc (i32.add (local.get $acc) (call $tail (i32.const 5))))
    (local.set $acc (i32.add (local.get $acc) (ref.is_null (ref.null func))))
    (local.set $acc (i32.add (local.get $acc) (ref.is_null (ref.func $id))))
    (local.set $acc (i32.add (local.get $acc) (table.size $t)))
    (local.set $acc (i32.add (local.get $acc) (table.grow $u (ref.null extern) (i32.const 1))))
    (table.set $t (i32.const 3) (table.get $t (i32.const 0)))
    (table.fill $u (i32.const 0) (ref.null extern) (i32.const 1))
    (table.copy $t $t (i32.const 2) (i32.const 0) (i32.const 1))
    (table.init $t $e (i32.const 0) (i32.const 0) (i32.const 2))
    (elem.drop $e)
    (memory.init $d (i32.const 128) (i32.const 0) (i32.const 4))
    (data.drop $d)
    (memory.copy (i32.const 256) (i32.const 128) (i32.const 4))
    (memory.fill (i32.const 300) (i32.const 0x40) (i32.const 4))
    (local.set $acc (i32.add (local.get $acc) (i32.load (i32.const 256))))
    (local.set $acc (i32.add (local.get $acc) (i32.load (i32.const 300))))
    (local.set $acc (i32.add (local.get $acc) (i32.trunc_sat_f64_s (f64.const 64.5))))
    (local.set $acc (i32.add (local.get $acc) (i32.extend8_s (i32.const 0x40))))
    (v128.store offset=64 (i32.const 512)
      (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 31
        (v128.const i32x4 0x40404040 0x40 64 0)
        (i32x4.splat (i32.const 0x40))))
    (local.set $acc (i32.add (local.get $acc)
      (i32x4.extract_lane 3 (v128.load offset=64 (i32.const 512)))))
    (local.set $acc (i32.add (local.get $acc)
      (i8x16.extract_lane_u 15
        (v128.load8_lane offset=64 15 (i32.const 512) (v128.const i64x2 0 0)))))
    (local.set $acc (i32.add (local.get $acc)
      (i32x4.extract_lane 0 (v128.load32_zero offset=64 (i32.const 512)))))
    (v128.store64_lane offset=64 1 (i32.const 512) (v128.const i64x2 0x40 0x4040))
    (local.set $acc (i32.add (local.get $acc) (i32.load offset=64 (i32.const 512))))
    (local.set $acc (i32.add (local.get $acc) (i32.load offset=72 (i32.const 512))))
    (global.set $g (global.get $g))
    (local.set $acc (i32.add (local.get $acc) (memory.size)))
    (local.get $acc))
  (func (export "_start")
    (local $acc i32)
    (local.set $acc (call $sum (i32.const 1)))
    ;; grows that succeed, inside nested blocks and in a multi-value block
    (local.set $acc (i32.add (local.get $acc) (memory.grow (i32.const 1))))
    (block (result i32) (memory.grow (i32.const 0x40)))
    (local.set $acc (i32.add (local.get $acc)))
    (i32.const 2)
    (block (type $pair) (memory.grow (i32.const 1)) (drop) (i32.const 7))
    (local.set $acc (i32.add (local.get $acc) (i32.add)))
    (local.set $acc (i32.add (local.get $acc) (call $twice (local.get $acc))))
    (i32.store (i32.const 1024) (local.get $acc))
    (i32.store (i32.const 1028) (memory.size))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""".replace("PADDING", "(local" + " i32" * 61 + ")")  # so that $x64 is local 64


def run_plain(sb: Sandbox, wat: str) -> bytes:
    """The module as written, without instrumentation, on the same engine."""
    module = wasmtime.Module(sb.engine, wat)
    store = wasmtime.Store(sb.engine)
    store.set_fuel(LIMITS.fuel)
    out: list[bytes] = []
    wasi = wasmtime.WasiConfig()
    wasi.stdout_custom = out.append
    store.set_wasi(wasi)
    func = sb.linker.instantiate(store, module).exports(store)["_start"]
    assert isinstance(func, wasmtime.Func)
    func(store)
    store.close()
    return b"".join(out)


def test_every_grow_is_found_and_nothing_else_changes() -> None:
    sb = Sandbox()
    compiled = sb.compile(KITCHEN_SINK)
    assert compiled.grow_sites == 3
    instrumented = sb.run(compiled, b"", LIMITS).output
    assert instrumented == run_plain(sb, KITCHEN_SINK)
    acc, pages = struct.unpack("<iI", instrumented)
    assert acc != 0
    assert pages == 1 + 1 + 0x40 + 1


def test_a_module_without_grow_is_left_byte_for_byte() -> None:
    wasm = bytes(wasmtime.wat2wasm('(module (memory 2) (table 7 funcref) (func (export "f")))'))
    shape = layout(wasm)
    assert shape.wasm == wasm
    assert (shape.memory_min_pages, shape.table_min_elements, shape.grow_sites) == (2, 7, 0)


def test_the_flag_is_exported_only_when_there_are_grows() -> None:
    sb = Sandbox()
    wasm = bytes(wasmtime.wat2wasm("(module (memory 1) (func (drop (memory.grow (i32.const 1)))))"))
    shape = layout(wasm)
    module = wasmtime.Module(sb.engine, shape.wasm)
    assert [e.name for e in module.exports] == [GROW_REFUSED_EXPORT]
    assert shape.grow_sites == 1


def test_sections_the_instrumentation_adds_keep_their_order() -> None:
    # no global, export or type section of its own besides what the function needs
    wat = "(module (memory 1) (start $s) (func $s (drop (memory.grow (i32.const 1)))))"
    shape = layout(bytes(wasmtime.wat2wasm(wat)))
    wasmtime.Module.validate(Sandbox().engine, shape.wasm)


def test_a_module_cannot_claim_the_flag_for_itself() -> None:
    wat = """(module (memory 1) (global (export "__fogcoord_grow_refused") i32 (i32.const 0))
      (func (export "_start") (drop (memory.grow (i32.const 1)))))"""
    with pytest.raises(MalformedModule):
        Sandbox().compile(wat)


def test_garbage_is_an_instrument_error() -> None:
    with pytest.raises(InstrumentError):
        layout(b"\x00asm\x01\x00\x00\x00\x0a\x05\x01\x03\x00\xfe\x00")
    with pytest.raises(InstrumentError):
        layout(b"not wasm")


# Each instruction, encoded by wat2wasm (which does not type-check, so operands are not needed),
# must decode to exactly its own length: the decoder is checked against the reference encoder.
INSTRUCTIONS = [
    "unreachable",
    "nop",
    "block",
    "block (result i32)",
    "block (type 0)",
    "loop",
    "if",
    "else",
    "br 0",
    "br_if 0",
    "br_table 0 0 0 0",
    "return",
    "call 0",
    "call_indirect (type 0)",
    "return_call 0",
    "return_call_indirect (type 0)",
    "drop",
    "select",
    "select (result f64)",
    "local.get 64",
    "local.set 200",
    "local.tee 0",
    "global.get 0",
    "global.set 0",
    "table.get 0",
    "table.set 0",
    "i32.load offset=64 align=4",
    "i64.load16_u offset=4096",
    "f64.store offset=0x40 align=8",
    "i64.store32",
    "memory.size",
    "memory.grow",
    "i32.const 64",
    "i32.const -0x40",
    "i64.const 0x4040404040404040",
    "f32.const 2.0",
    "f64.const 2.0",
    "i32.add",
    "f64.copysign",
    "i64.extend32_s",
    "ref.null func",
    "ref.null extern",
    "ref.is_null",
    "ref.func 0",
    "i32.trunc_sat_f32_s",
    "i64.trunc_sat_f64_u",
    "memory.init 0",
    "data.drop 0",
    "memory.copy",
    "memory.fill",
    "table.init 0",
    "elem.drop 0",
    "table.copy 0 0",
    "table.grow 0",
    "table.size 0",
    "table.fill 0",
    "v128.load offset=64",
    "v128.load8x8_s",
    "v128.load64_splat align=8",
    "v128.store offset=0x40",
    "v128.const i64x2 0x4040404040404040 64",
    "i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
    "i8x16.swizzle",
    "i32x4.splat",
    "i8x16.extract_lane_s 15",
    "f64x2.replace_lane 1",
    "i32x4.add",
    "v128.load8_lane offset=64 15",
    "v128.store64_lane offset=0x40 1",
    "v128.load32_zero offset=64",
    "v128.load64_zero",
    "f64x2.promote_low_f32x4",
    "i32x4.dot_i16x8_s",
]


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_decoder_length_matches_the_encoder(instruction: str) -> None:
    from fogcoord.compute.instrument import _CODE, _Reader, _sections, _skip_immediates

    wat = f"""(module (type (func)) (memory 1) (table 1 funcref) (global (mut i32) (i32.const 0))
      (data "") (elem func 0)
      (func (local i32) {instruction}))"""
    (code,) = [p for sid, p in _sections(bytes(wasmtime.wat2wasm(wat))) if sid == _CODE]
    r = _Reader(code)
    assert r.uleb() == 1
    end = r.uleb() + r.pos
    for _ in range(r.uleb()):
        r.skip_leb()
        r.byte()
    _skip_immediates(r, r.byte())
    assert r.pos == end - 1
    assert code[r.pos] == 0x0B
