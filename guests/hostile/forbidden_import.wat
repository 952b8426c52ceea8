;; Imports a function no zkmesh host provides; it must be refused before it ever runs.
(module
  (import "env" "launch_missiles" (func $launch_missiles))
  (memory (export "memory") 1)
  (func (export "run")
    (call $launch_missiles)))
