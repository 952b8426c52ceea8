;; Its start function, which runs while the module is instantiated and before any export is
;; called, never returns: limits must hold during instantiation too.
(module
  (memory (export "memory") 1)
  (func $spin
    (loop $forever
      (br $forever)))
  (start $spin)
  (func (export "run")))
