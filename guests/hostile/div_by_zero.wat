;; Divides by zero. The divisor is loaded from (zeroed) memory rather than written as a
;; constant, so that no compiler can see the trap coming and treat it differently.
(module
  (memory (export "memory") 1)
  (func (export "run")
    (drop
      (i32.div_u
        (i32.const 1)
        (i32.load (i32.const 0))))))
