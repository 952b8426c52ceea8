;; zkmesh guest, written by hand: the sum of the input's bytes (as a u32) in decimal.
;; Small enough to prove in the smallest zkVM classes, which is what it is for.
(module
  (import "zkmesh" "read_input" (func $read (param i32 i32 i32) (result i32)))
  (import "zkmesh" "write_output" (func $write (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "run") (local $n i32) (local $i i32) (local $sum i32) (local $p i32)
    ;; The input (at most 1 KiB is read) goes to address 64.
    (local.set $n (call $read (i32.const 64) (i32.const 0) (i32.const 1024)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $sum
          (i32.add (local.get $sum) (i32.load8_u offset=64 (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    ;; Decimal digits, last first, ending just before address 32.
    (local.set $p (i32.const 32))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.rem_u (local.get $sum) (i32.const 10))))
      (local.set $sum (i32.div_u (local.get $sum) (i32.const 10)))
      (br_if $digit (local.get $sum)))
    (call $write (local.get $p) (i32.sub (i32.const 32) (local.get $p)))))
