;; A WASI command that writes its whole 64 KiB memory to stdout forever, ignoring every error
;; fd_write returns (as a C program that never checks printf would): the host must end it at
;; its output limit rather than let it run on with its output cut short.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; One iovec at 0: the whole memory, 65536 bytes from address 0.
    (i32.store (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $forever))))
