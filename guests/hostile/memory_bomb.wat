;; Grows memory one page at a time without end, as an allocator does that is asked for more and
;; more. When a grow fails (memory.grow returns -1 past the task's memory limit, as the
;; specification says) it gives up with a trap, as Rust's allocator aborts: the run ends
;; out_of_memory. (A guest that ignored the -1 and spun would end out of fuel or time.)
(module
  (memory (export "memory") 1)
  (func (export "run")
    (loop $forever
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
        (then unreachable))
      (br $forever))))
