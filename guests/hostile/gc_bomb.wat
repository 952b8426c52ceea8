;; Allocates garbage-collected structs forever (the Wasm GC proposal). A GC heap would be memory
;; outside the task's linear-memory limit, so the sandbox does not enable GC: the module is
;; refused as invalid before it runs.
(module
  (type $cell (struct (field (mut i64)) (field (mut i64))))
  (memory (export "memory") 1)
  (func (export "run")
    (loop $forever
      (drop (struct.new $cell (i64.const 1) (i64.const 2)))
      (br $forever))))
