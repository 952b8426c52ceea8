//! A sandbox's settings ([`SandboxConfig`]), set once per worker.

use std::path::PathBuf;
use std::time::Duration;

/// Sandbox-wide settings (per worker).
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Output beyond this ends the task as [`Exit::OutputTooLarge`].
    pub max_output_bytes: usize,
    /// stderr (task logs) is truncated beyond this.
    pub max_stderr_bytes: usize,
    /// Modules larger than this are refused before compiling.
    pub max_module_bytes: usize,
    /// Native stack available to wasm; deeper recursion ends as [`Exit::StackExhausted`].
    pub max_wasm_stack: usize,
    /// Granularity of the wall-clock deadline.
    pub epoch_tick: Duration,
    /// Compiled modules kept in memory.
    pub cache_entries: usize,
    /// Compiled modules are kept here across restarts (None: in memory only).
    pub cache_dir: Option<PathBuf>,
    /// The most bytes of compiled modules kept in `cache_dir`; the least recently used go first.
    pub cache_max_bytes: u64,
    /// Guests that may run at once; [`Sandbox::run`] waits for a free slot.
    pub slots: u32,
    /// Take instances from a pool of `slots` pre-reserved slots (the pooling allocator) rather
    /// than mapping memory for each run.
    pub pooling: bool,
    /// The largest linear memory any task may be given (the size of a pool slot).
    pub max_memory_bytes: u64,
    /// A table may not grow past this many elements (growing past it ends as out of memory).
    pub max_table_elements: usize,
    /// A module that takes longer than this to compile is refused as invalid.
    pub compile_timeout: Duration,
    /// Meter fuel. Off only to measure what metering costs (benches/): without it no fuel limit
    /// holds and every run reports zero fuel.
    pub consume_fuel: bool,
    /// Check the wall-clock deadline (epoch interruption). Off only to measure what those
    /// checks cost (benches/): without it no timeout or cancellation holds.
    pub wall_clock: bool,
    /// Write `/tmp/perf-{pid}.map` so that `perf` can name compiled guest code (for profiling).
    pub perf_map: bool,
}

/// Tables a module may define.
pub(crate) const MAX_TABLES: u32 = 8;

/// A running guest yields (and wasmtime stores its exact fuel count) every this many units of
/// fuel: the most an implicit trap can leave unbilled.
pub const FUEL_SYNC: u64 = 100_000;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_output_bytes: 16 << 20,
            max_stderr_bytes: 64 << 10,
            max_module_bytes: 64 << 20,
            max_wasm_stack: 512 << 10,
            epoch_tick: Duration::from_millis(10),
            cache_entries: 256,
            cache_dir: None,
            cache_max_bytes: 1 << 30,
            slots: 2,
            pooling: true,
            max_memory_bytes: 4 << 30,
            max_table_elements: 1 << 18,
            compile_timeout: Duration::from_secs(20),
            consume_fuel: true,
            wall_clock: true,
            perf_map: false,
        }
    }
}
