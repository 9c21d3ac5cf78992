;; Mandelbrot tile renderer, a WASI command.
;;
;; stdin: a 52-byte little-endian header
;;   f64 x0, f64 y0    plane coordinates of global pixel (0, 0)
;;   f64 dx, f64 dy    plane step per pixel along x and y
;;   u32 px0, u32 py0  global pixel coordinates of the tile's top-left corner
;;   u32 width, u32 height, u32 max_iter
;; stdout: width * height bytes, row by row; each is (n * 255) / max_iter (integer division),
;; where n is the number of iterations before |z|^2 > 4, or max_iter if the point never escapes.
;;
;; Pixel (px, py) of the tile is the point c = (x0 + (px0 + px) * dx, y0 + (py0 + py) * dy), so
;; tiles of one image agree bit for bit with the image rendered whole. Exit codes: 1 an I/O
;; error, 2 memory for the tile was refused, 3 a malformed header (short, max_iter of 0 or above
;; 2^23, more than 2^30 pixels).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)

  ;; Memory layout: [0, 8) one iovec, [16, 20) the byte count of the last call, [64, 116) the
  ;; header, [1024, 1024 + width * height) the pixels.
  (global $header i32 (i32.const 64))
  (global $header_len i32 (i32.const 52))
  (global $pixels i32 (i32.const 1024))

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

  ;; Iterations before the orbit of c = (cx, cy) escapes, at most $max.
  (func $escape_time (param $cx f64) (param $cy f64) (param $max i32) (result i32)
    (local $zr f64)
    (local $zi f64)
    (local $zr2 f64)
    (local $zi2 f64)
    (local $n i32)
    (block $escaped
      (loop $iterate
        (br_if $escaped (i32.ge_u (local.get $n) (local.get $max)))
        (local.set $zr2 (f64.mul (local.get $zr) (local.get $zr)))
        (local.set $zi2 (f64.mul (local.get $zi) (local.get $zi)))
        (br_if $escaped (f64.gt (f64.add (local.get $zr2) (local.get $zi2)) (f64.const 4)))
        (local.set $zi
          (f64.add (f64.mul (f64.mul (local.get $zr) (local.get $zi)) (f64.const 2))
                   (local.get $cy)))
        (local.set $zr (f64.add (f64.sub (local.get $zr2) (local.get $zi2)) (local.get $cx)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $iterate)))
    (local.get $n))

  (func (export "_start")
    (local $x0 f64)
    (local $y0 f64)
    (local $dx f64)
    (local $dy f64)
    (local $px0 i32)
    (local $py0 i32)
    (local $width i32)
    (local $height i32)
    (local $max i32)
    (local $size i64)
    (local $pages i32)
    (local $px i32)
    (local $py i32)
    (local $cy f64)
    (local $at i32)
    (if (i32.lt_u (call $read_full (global.get $header) (global.get $header_len))
                  (global.get $header_len))
      (then (call $proc_exit (i32.const 3))))
    (local.set $x0 (f64.load offset=0 (global.get $header)))
    (local.set $y0 (f64.load offset=8 (global.get $header)))
    (local.set $dx (f64.load offset=16 (global.get $header)))
    (local.set $dy (f64.load offset=24 (global.get $header)))
    (local.set $px0 (i32.load offset=32 (global.get $header)))
    (local.set $py0 (i32.load offset=36 (global.get $header)))
    (local.set $width (i32.load offset=40 (global.get $header)))
    (local.set $height (i32.load offset=44 (global.get $header)))
    (local.set $max (i32.load offset=48 (global.get $header)))
    ;; (n * 255) must not overflow u32, hence the 2^23 bound on max_iter
    (if (i32.or (i32.eqz (local.get $max)) (i32.gt_u (local.get $max) (i32.const 0x800000)))
      (then (call $proc_exit (i32.const 3))))
    (local.set $size (i64.mul (i64.extend_i32_u (local.get $width))
                              (i64.extend_i32_u (local.get $height))))
    (if (i64.gt_u (local.get $size) (i64.const 0x40000000))
      (then (call $proc_exit (i32.const 3))))
    ;; pages needed for the pixel buffer, rounded up
    (local.set $pages
      (i32.wrap_i64 (i64.shr_u (i64.add (i64.add (local.get $size) (i64.const 1024))
                                        (i64.const 0xffff))
                               (i64.const 16))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (call $proc_exit (i32.const 2))))))
    (local.set $at (global.get $pixels))
    (block $rows_done
      (loop $row
        (br_if $rows_done (i32.ge_u (local.get $py) (local.get $height)))
        (local.set $cy
          (f64.add (local.get $y0)
                   (f64.mul (f64.convert_i32_u (i32.add (local.get $py0) (local.get $py)))
                            (local.get $dy))))
        (local.set $px (i32.const 0))
        (block $cols_done
          (loop $col
            (br_if $cols_done (i32.ge_u (local.get $px) (local.get $width)))
            (i32.store8 (local.get $at)
              (i32.div_u
                (i32.mul
                  (call $escape_time
                    (f64.add (local.get $x0)
                             (f64.mul (f64.convert_i32_u (i32.add (local.get $px0) (local.get $px)))
                                      (local.get $dx)))
                    (local.get $cy)
                    (local.get $max))
                  (i32.const 255))
                (local.get $max)))
            (local.set $at (i32.add (local.get $at) (i32.const 1)))
            (local.set $px (i32.add (local.get $px) (i32.const 1)))
            (br $col)))
        (local.set $py (i32.add (local.get $py) (i32.const 1)))
        (br $row)))
    (call $write_all (global.get $pixels) (i32.wrap_i64 (local.get $size))))
)
