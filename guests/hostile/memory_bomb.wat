;; Grows memory one page at a time without end. A failed grow returns -1, which is ignored
;; on purpose: the sandbox must stop this through its memory limit (a trap from the limiter)
;; or, if failed grows are merely refused, through fuel or the deadline.
(module
  (memory (export "memory") 1)
  (func (export "run")
    (loop $forever
      (drop (memory.grow (i32.const 1)))
      (br $forever))))
