;; Never returns and calls nothing: only fuel or the epoch deadline can stop it.
(module
  (memory (export "memory") 1)
  (func (export "run")
    (loop $forever
      (br $forever))))
