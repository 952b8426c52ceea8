;; Writes its whole 64 KiB memory as output, forever: the host's output limit must stop it.
(module
  (import "zkmesh" "write_output" (func $write_output (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (loop $forever
      (call $write_output (i32.const 0) (i32.const 65536))
      (br $forever))))
