//! Benchmarks: `cargo bench -p zkmesh-benches` (criterion, hot paths) and the mesh load
//! generator `cargo run --release -p zkmesh-benches --bin loadgen`.

pub mod hostile;

/// The trivial task of the load generator: a zkmesh ABI module that writes "ok".
pub const TRIVIAL_WAT: &str = r#"(module
  (import "zkmesh" "write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ok")
  (func (export "run") (call $out (i32.const 0) (i32.const 2))))"#;
