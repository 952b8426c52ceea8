;; Grows its table a thousand entries at a time without end; when a grow fails (table.grow
;; returns -1 past the sandbox's table limit) it traps, so the run ends out_of_memory.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "run")
    (loop $forever
      (if (i32.eq (table.grow $t (ref.null func) (i32.const 1000)) (i32.const -1))
        (then unreachable))
      (br $forever))))
