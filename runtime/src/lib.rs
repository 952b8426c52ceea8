//! The wasmtime sandbox in which zkmesh runs strangers' WebAssembly: fuel, memory and
//! wall-clock limits, no filesystem, no network, and the two guest ABIs.
//!
//! # Core concepts
//! - A [`Sandbox`] owns one wasmtime `Engine` configured for determinism (fuel metering, NaN
//!   canonicalisation, no threads, no relaxed SIMD, a fixed wasm stack) and a ticker thread that
//!   drives the epoch deadline, the wall-clock backstop. With [`SandboxConfig::pooling`] its
//!   instances come from a pool of [`SandboxConfig::slots`] pre-reserved slots.
//! - [`Sandbox::inspect`] compiles a module and decides its [`Abi`], refusing anything that
//!   imports outside the two ABIs. A compile that takes longer than
//!   [`SandboxConfig::compile_timeout`] is abandoned: the caller gets an error at once and the
//!   compiler thread finishes (on one core) in the background, its result dropped.
//! - Compiled modules are cached in memory, and on disk in [`SandboxConfig::cache_dir`] keyed by
//!   the module's SHA-256 and the engine's compatibility hash. Only artifacts this sandbox's key
//!   authenticates are ever loaded (see `cache.rs`); anything else is deleted and recompiled.
//!   [`Sandbox::stats`] counts compiles, hits and rejected files.
//! - [`Sandbox::run`] runs a module on an input under [`Limits`] and always returns an
//!   [`Outcome`]: a guest that traps or runs out of fuel is a result, not an error. The outcome
//!   carries the fuel used and the CPU time of the thread that instantiated and ran the guest.
//!
//! # Billing at each terminal state
//! wasmtime keeps a function's fuel count in a register and writes it back at calls, returns,
//! `unreachable` and whenever its fuel "runs out". The sandbox hands fuel to a guest in slices
//! of [`FUEL_SYNC`] (wasmtime's fuel yield interval; each guest runs as a future), so the count
//! is written back at least that often. Hence:
//! - the fuel is exact for a completed run, an explicit trap (`unreachable`, which is how Rust
//!   panics end), a host-function error, stack exhaustion and running out of fuel;
//! - at an implicit trap (out-of-bounds access, division by zero, a bad conversion, a memory or
//!   table limit hit by `memory.grow`/`table.grow`) it can be low by less than [`FUEL_SYNC`]
//!   plus one loop iteration: the same on every node, so replicas still agree;
//! - a run stopped by its wall-clock timeout is billed its whole fuel limit: a timeout is not
//!   deterministic anyway, and the node spent the time.
//!
//! # The zkmesh ABI
//! A module imports from `zkmesh` only:
//! - `input_len() -> i32`: the input's length in bytes;
//! - `read_input(dst: i32, offset: i32, len: i32) -> i32`: copies up to `len` input bytes
//!   from `offset` to memory at `dst`, returns how many it copied (0 at the end);
//! - `write_output(src: i32, len: i32)`: appends `len` bytes from memory at `src` to the output;
//!
//! and exports `memory` and `run: () -> ()` (`main` is accepted as well).
//!
//! # WASI preview 1
//! A command (`_start`): stdin is the input, stdout the output, stderr the task log. Nothing is
//! granted: no preopened directories, no environment, no arguments but the program name, no
//! sockets. Clocks are frozen (wall clock at the Unix epoch, monotonic clock at zero), so a
//! sleep (`poll_oneoff`) returns at once with every subscription ready, and
//! randomness is a deterministic stream derived from the task's seed, so that every node
//! running the same task produces the same bytes.
//!
//! ```
//! use zkmesh_runtime::{Sandbox, SandboxConfig, Limits, Exit};
//! let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
//! let wasm = wat::parse_str(r#"(module
//!   (import "zkmesh" "write_output" (func $out (param i32 i32)))
//!   (memory (export "memory") 1)
//!   (data (i32.const 0) "hi")
//!   (func (export "run") (call $out (i32.const 0) (i32.const 2))))"#).unwrap();
//! let outcome = sandbox.run(&wasm, b"", &Limits::default(), b"seed");
//! assert_eq!(outcome.exit, Exit::Ok);
//! assert_eq!(outcome.output, b"hi");
//! ```

#![warn(missing_docs)]

mod abi;
mod cache;
mod config;
mod engine;
mod host;
mod limits;
mod outcome;
mod random;
mod sandbox;
mod wasi;

pub use abi::Abi;
pub use config::{FUEL_SYNC, SandboxConfig};
pub use limits::{Limits, LogFn, LogSink};
pub use outcome::{Exit, Outcome};
pub use sandbox::compile::{Inspection, ModuleError, Prepared};
pub use sandbox::{Sandbox, Stats};

#[cfg(test)]
mod tests;
