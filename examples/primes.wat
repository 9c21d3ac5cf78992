;; Prime counter, a WASI command.
;;
;; stdin: 16 bytes, two little-endian u64: lo, hi.
;; stdout: the number of primes p with lo <= p < hi, in decimal ASCII, then a newline.
;;
;; Each candidate is tested by trial division by 3, 5, 7, ... up to its square root, so the fuel
;; grows with the range and with the square root of its numbers. Exit codes: 1 an I/O error, 3 a
;; malformed input (short, or hi above 2^62, where d * d could overflow).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)

  ;; Memory layout: [0, 8) one iovec, [16, 20) the byte count of the last call, [32, 48) the
  ;; input, [64, 96) the decimal text, written backwards from its end.
  (global $input i32 (i32.const 32))
  (global $text_end i32 (i32.const 96))

  ;; Read up to $len bytes of stdin to $ptr; the number read (short only at end of input).
  (func $read_full (param $ptr i32) (param $len i32) (result i32)
    (local $got i32)
    (local $n i32)
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $got) (local.get $len)))
        (i32.store (i32.const 0) (i32.add (local.get $ptr) (local.get $got)))
        (i32.store (i32.const 4) (i32.sub (local.get $len) (local.get $got)))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16))
          (then (call $proc_exit (i32.const 1))))
        (local.set $n (i32.load (i32.const 16)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $got (i32.add (local.get $got) (local.get $n)))
        (br $more)))
    (local.get $got))

  ;; Write $len bytes at $ptr to stdout, however many calls that takes.
  (func $write_all (param $ptr i32) (param $len i32)
    (local $n i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))
          (then (call $proc_exit (i32.const 1))))
        (local.set $n (i32.load (i32.const 16)))
        (if (i32.eqz (local.get $n)) (then (call $proc_exit (i32.const 1))))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $more))))

  (func $is_prime (param $n i64) (result i32)
    (local $d i64)
    (if (i64.lt_u (local.get $n) (i64.const 2)) (then (return (i32.const 0))))
    (if (i64.lt_u (local.get $n) (i64.const 4)) (then (return (i32.const 1))))
    (if (i64.eqz (i64.and (local.get $n) (i64.const 1))) (then (return (i32.const 0))))
    (local.set $d (i64.const 3))
    (block $prime
      (loop $next
        (br_if $prime (i64.gt_u (i64.mul (local.get $d) (local.get $d)) (local.get $n)))
        (if (i64.eqz (i64.rem_u (local.get $n) (local.get $d))) (then (return (i32.const 0))))
        (local.set $d (i64.add (local.get $d) (i64.const 2)))
        (br $next)))
    (i32.const 1))

  (func (export "_start")
    (local $n i64)
    (local $hi i64)
    (local $count i64)
    (local $at i32)
    (if (i32.lt_u (call $read_full (global.get $input) (i32.const 16)) (i32.const 16))
      (then (call $proc_exit (i32.const 3))))
    (local.set $n (i64.load offset=0 (global.get $input)))
    (local.set $hi (i64.load offset=8 (global.get $input)))
    (if (i64.gt_u (local.get $hi) (i64.const 0x4000000000000000))
      (then (call $proc_exit (i32.const 3))))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $n) (local.get $hi)))
        (local.set $count
          (i64.add (local.get $count) (i64.extend_i32_u (call $is_prime (local.get $n)))))
        (local.set $n (i64.add (local.get $n) (i64.const 1)))
        (br $next)))
    (local.set $at (i32.sub (global.get $text_end) (i32.const 1)))
    (i32.store8 (local.get $at) (i32.const 10))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $count) (i64.const 10)))))
      (local.set $count (i64.div_u (local.get $count) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $count) (i64.const 0))))
    (call $write_all (local.get $at) (i32.sub (global.get $text_end) (local.get $at))))
)
