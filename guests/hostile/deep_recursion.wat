;; Calls itself without a base case. `call` is not a tail call, so every level takes stack
;; until the host's stack limit is hit.
(module
  (memory (export "memory") 1)
  (func $recurse (param $depth i64) (result i64)
    (i64.add
      (call $recurse (i64.add (local.get $depth) (i64.const 1)))
      (i64.const 1)))
  (func (export "run")
    (drop (call $recurse (i64.const 0)))))
