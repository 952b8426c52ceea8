;; Grows its table a thousand entries at a time without end, ignoring the -1 of a failed grow:
;; the sandbox must stop it through its table limit (a trap, like memory), not let it spin.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "run")
    (loop $forever
      (drop (table.grow $t (ref.null func) (i32.const 1000)))
      (br $forever))))
