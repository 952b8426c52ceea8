;; A WASI command that sleeps for 2^64-1 nanoseconds (about 585 years), then for an hour at a
;; time, forever. wasmtime-wasi would sleep on the host's clock, where no epoch deadline reaches
;; it; in zkmesh guest time is frozen, every sleep returns at once, and the loop is stopped like
;; any other (by its fuel, or by the wall clock).
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; One relative clock subscription at 0 (48 bytes): userdata 7, tag 0 (clock), clock id 1
  ;; (monotonic), timeout at offset 24, precision 0, flags 0 (relative).
  (func $sleep (param $ns i64)
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (local.get $ns))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))
  (func (export "_start")
    (call $sleep (i64.const -1))
    (loop $forever
      (call $sleep (i64.const 3600000000000))
      (br $forever))))
