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

mod cache;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{
    Caller, Config, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::p1::WasiP1Ctx;

/// Which guest ABI a module uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    Zkmesh,
    Wasi,
}

impl Abi {
    pub fn as_str(self) -> &'static str {
        match self {
            Abi::Zkmesh => "zkmesh",
            Abi::Wasi => "wasi",
        }
    }
}

const WASI_MODULE: &str = "wasi_snapshot_preview1";

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
const MAX_TABLES: u32 = 8;

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

/// Per-task limits.
#[derive(Clone, Debug)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout: Duration,
    /// Set to stop the guest early (the task was cancelled or its lease lost); checked on every
    /// epoch tick.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Receives a WASI guest's stderr as it is written (within the stderr cap), for logs that
    /// reach the submitter while the task runs. All of it is also in [`Outcome::stderr`].
    pub log: Option<LogSink>,
}

/// Where a running guest's stderr goes, chunk by chunk (called on the guest's thread).
#[derive(Clone)]
pub struct LogSink(pub Arc<LogFn>);

/// What a [`LogSink`] calls with each chunk of stderr kept.
pub type LogFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 1_000_000_000,
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            cancel: None,
            log: None,
        }
    }
}

/// Why a module cannot run at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("module is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("invalid module: {0}")]
    Invalid(String),
    #[error("forbidden import {import}: {reason}")]
    ForbiddenImport { import: String, reason: String },
    #[error("module does not fit a guest ABI: {0}")]
    NoEntry(String),
    #[error("invalid module: it did not compile within {millis} ms")]
    CompileTimeout { millis: u64 },
    /// Every compiler thread stayed busy (abandoned compiles still finishing) for the whole
    /// compile timeout: the module was not looked at.
    #[error("no compiler thread came free within {millis} ms; try again later")]
    CompilersBusy { millis: u64 },
}

impl ModuleError {
    /// Whether the error says more about this node (its load, its clock) than about the module:
    /// another node, or this one later, may compile it. A worker leaves such a task to others
    /// rather than settle it as an invalid module.
    pub fn is_node_condition(&self) -> bool {
        matches!(
            self,
            ModuleError::CompileTimeout { .. } | ModuleError::CompilersBusy { .. }
        )
    }
}

/// How long a module whose compile was abandoned is refused at once before it may be tried
/// again (a node that was merely busy then may manage it now).
const TOO_SLOW_FOR: Duration = Duration::from_secs(600);

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok,
    /// A WebAssembly trap, with wasmtime's description.
    Trap(String),
    OutOfFuel,
    OutOfMemory,
    StackExhausted,
    Timeout,
    OutputTooLarge,
    /// A WASI guest called `proc_exit` with a non-zero code.
    ExitCode(i32),
    InvalidModule(String),
    ForbiddenImport(String),
}

impl Exit {
    /// A stable short name, used in JSON output and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Trap(_) => "trap",
            Exit::OutOfFuel => "out_of_fuel",
            Exit::OutOfMemory => "out_of_memory",
            Exit::StackExhausted => "stack_exhausted",
            Exit::Timeout => "timeout",
            Exit::OutputTooLarge => "output_too_large",
            Exit::ExitCode(_) => "exit_code",
            Exit::InvalidModule(_) => "invalid_module",
            Exit::ForbiddenImport(_) => "forbidden_import",
        }
    }

    /// A sentence for the submitter.
    pub fn message(&self, limits: &Limits, config: &SandboxConfig) -> String {
        match self {
            Exit::Ok => "completed".into(),
            Exit::Trap(t) => format!("trapped: {t}"),
            Exit::OutOfFuel => format!("ran out of fuel (limit {})", limits.fuel),
            Exit::OutOfMemory => format!(
                "tried to grow memory past its limit of {} MiB",
                limits.memory_bytes >> 20
            ),
            Exit::StackExhausted => "exhausted the wasm stack (unbounded recursion?)".into(),
            Exit::Timeout => format!(
                "did not finish within its timeout of {:.1}s",
                limits.timeout.as_secs_f64()
            ),
            Exit::OutputTooLarge => format!(
                "wrote more than the output limit of {} bytes",
                config.max_output_bytes
            ),
            Exit::ExitCode(c) => format!("exited with code {c}"),
            // The module error's own text says what it is ("invalid module: ...").
            Exit::InvalidModule(m) | Exit::ForbiddenImport(m) => m.clone(),
        }
    }
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub exit: Exit,
    pub message: String,
    pub output: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes of stderr past the cap, dropped (the guest is not told).
    pub stderr_dropped: u64,
    pub fuel_used: u64,
    /// Wall-clock time spent instantiating and running the guest (compiling included, if it was
    /// not cached).
    pub run_time: Duration,
    /// CPU time of the thread that instantiated and ran the guest (a compile runs on a thread
    /// of its own and is not included; `run_time` includes waiting for it).
    pub cpu_time: Duration,
}

/// Counters since the sandbox started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Modules compiled by wasmtime.
    pub compiles: u64,
    /// Lookups answered from memory.
    pub memory_hits: u64,
    /// Lookups answered by loading an authenticated artifact from disk.
    pub disk_hits: u64,
    /// Disk artifacts refused (bad MAC, corrupt, or refused by wasmtime) and deleted.
    pub disk_rejected: u64,
    /// Compiles abandoned after the compile timeout.
    pub compile_timeouts: u64,
    /// Guests run.
    pub runs: u64,
}

#[derive(Default)]
struct Counters {
    compiles: AtomicU64,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    disk_rejected: AtomicU64,
    compile_timeouts: AtomicU64,
    runs: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A counting semaphore for run slots (the pool has exactly `slots` instances).
struct Slots {
    free: Mutex<u32>,
    freed: Condvar,
}

struct SlotGuard<S: std::ops::Deref<Target = Slots>>(S);

impl Slots {
    fn new(n: u32) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn take(&self) {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
    }

    fn acquire(&self) -> SlotGuard<&Slots> {
        self.take();
        SlotGuard(self)
    }

    /// A slot that can move to another thread, if one comes free within `wait`.
    fn acquire_owned_within(self: &Arc<Self>, wait: Duration) -> Option<SlotGuard<Arc<Slots>>> {
        let mut free = self.free.lock().unwrap();
        let deadline = Instant::now() + wait;
        while *free == 0 {
            let left = deadline.checked_duration_since(Instant::now())?;
            free = self.freed.wait_timeout(free, left).unwrap().0;
        }
        *free -= 1;
        Some(SlotGuard(self.clone()))
    }

    fn is_free(&self) -> bool {
        *self.free.lock().unwrap() > 0
    }
}

impl<S: std::ops::Deref<Target = Slots>> Drop for SlotGuard<S> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.freed.notify_one();
    }
}

/// What [`Sandbox::inspect`] learned about a module.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub abi: Abi,
    /// Every import as `module.name`.
    pub imports: Vec<String>,
}

struct Compiled {
    abi: Abi,
    imports: Vec<String>,
    pre: InstancePre<Host>,
    /// The largest initial size of a memory the module defines, in bytes.
    initial_memory: u64,
    /// When its disk-cache file was last marked as used.
    disk_touched: Mutex<Instant>,
}

/// How often a module served from memory has its disk-cache file marked as used, so that the
/// disk cache's least recently used files are not the ones hottest in memory.
const DISK_TOUCH_EVERY: Duration = Duration::from_secs(600);

/// Removes a module's compile lock from [`Sandbox::compiling`] when its holder is done, unless
/// a newer lock has replaced it.
struct CompilingEntry<'a> {
    map: &'a Mutex<HashMap<[u8; 32], Arc<Mutex<()>>>>,
    key: [u8; 32],
    lock: Arc<Mutex<()>>,
}

impl Drop for CompilingEntry<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            map.remove(&self.key);
        }
    }
}

/// The outcome of a task that ended before its guest started: no output, no fuel, no time.
fn unrun(message: String, exit: Exit) -> Outcome {
    Outcome {
        message,
        exit,
        output: Vec::new(),
        stderr: Vec::new(),
        stderr_dropped: 0,
        fuel_used: 0,
        run_time: Duration::ZERO,
        cpu_time: Duration::ZERO,
    }
}

/// A module compiled (or found cached) for a sandbox, ready to run with
/// [`Sandbox::run_prepared`].
#[derive(Clone)]
pub struct Prepared(Arc<Compiled>);

/// A worker's (or the scheduler's) wasmtime sandbox.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<Host>,
    config: SandboxConfig,
    cache: Mutex<HashMap<[u8; 32], Arc<Compiled>>>,
    disk: Option<cache::DiskCache>,
    /// Modules whose compile was abandoned, and when: refused at once for [`TOO_SLOW_FOR`].
    too_slow: Mutex<HashMap<[u8; 32], Instant>>,
    counters: Counters,
    slots: Slots,
    /// Compiler threads, one per slot. An abandoned compile keeps its thread until Cranelift
    /// finishes, so this also bounds the cores that slow modules can hold.
    compilers: Arc<Slots>,
    /// One lock per module being compiled: a second task for the same module waits for the
    /// first compile instead of starting another.
    compiling: Mutex<HashMap<[u8; 32], Arc<Mutex<()>>>>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Sandbox, ModuleError> {
        let slots = config.slots.max(1);
        let wc = engine_config(&config);
        let engine = Engine::new(&wc).map_err(|e| ModuleError::Invalid(format!("engine: {e}")))?;
        let disk = match &config.cache_dir {
            Some(dir) => Some(
                cache::DiskCache::open(dir, cache::engine_hash(&engine), config.cache_max_bytes)
                    .map_err(|e| {
                        ModuleError::Invalid(format!("compile cache {}: {e}", dir.display()))
                    })?,
            ),
            None => None,
        };
        let mut linker = Linker::new(&engine);
        define_zkmesh_abi(&mut linker).map_err(|e| ModuleError::Invalid(e.to_string()))?;
        // WASI functions are only ever reached by modules inspected as WASI, whose store always
        // carries a context; `wasi_ctx` is the one place that relies on it.
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, wasi_ctx)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        // wasmtime-wasi sleeps in `poll_oneoff` on the host's clock (a lone relative timeout is
        // a `thread::sleep` no epoch can interrupt: a guest could hold a slot for centuries).
        // Time is frozen for guests, so every subscription is ready at once instead.
        linker.allow_shadowing(true);
        linker
            .func_wrap(WASI_MODULE, "poll_oneoff", poll_oneoff)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        // wasmtime-wasi builds the whole buffer on the host before it checks the guest's
        // pointer (64 MiB a call, outside the memory limit, for a few units of fuel). This one
        // writes straight into guest memory and bills a unit of fuel per byte.
        linker
            .func_wrap(WASI_MODULE, "random_get", random_get)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        linker.allow_shadowing(false);

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (engine_for_ticker, stop, tick) =
            (engine.clone(), stop_ticker.clone(), config.epoch_tick);
        std::thread::Builder::new()
            .name("zkmesh-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine_for_ticker.increment_epoch();
                }
            })
            .map_err(|e| ModuleError::Invalid(format!("epoch ticker: {e}")))?;
        Ok(Sandbox {
            engine,
            linker,
            config,
            cache: Mutex::new(HashMap::new()),
            disk,
            too_slow: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            slots: Slots::new(slots),
            compilers: Arc::new(Slots::new(slots)),
            compiling: Mutex::new(HashMap::new()),
            stop_ticker,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            compiles: get(&c.compiles),
            memory_hits: get(&c.memory_hits),
            disk_hits: get(&c.disk_hits),
            disk_rejected: get(&c.disk_rejected),
            compile_timeouts: get(&c.compile_timeouts),
            runs: get(&c.runs),
        }
    }

    /// Drops the in-memory cache (the disk cache stays): the next lookup of each module goes to
    /// disk. For tests and benches of the disk path.
    pub fn forget_compiled(&self) {
        self.cache.lock().unwrap().clear();
    }

    /// Compiles `wasm` (or finds it in the cache) and checks its imports and entry point.
    pub fn inspect(&self, wasm: &[u8]) -> Result<Inspection, ModuleError> {
        let compiled = self.compile(wasm)?;
        Ok(Inspection {
            abi: compiled.abi,
            imports: compiled.imports.clone(),
        })
    }

    fn compile(&self, wasm: &[u8]) -> Result<Arc<Compiled>, ModuleError> {
        self.compile_keyed(Sha256::digest(wasm).into(), wasm)
    }

    /// Compiles `wasm` (or finds it cached) without running it, so that a caller can tell a
    /// module this node cannot compile now ([`ModuleError::is_node_condition`]) from a task
    /// result. `sha256` must be the hash of `wasm`, as for [`Sandbox::run_hashed`].
    pub fn prepare_hashed(&self, sha256: [u8; 32], wasm: &[u8]) -> Result<Prepared, ModuleError> {
        self.compile_keyed(sha256, wasm).map(Prepared)
    }

    /// `key` is the SHA-256 of `wasm`.
    fn compile_keyed(&self, key: [u8; 32], wasm: &[u8]) -> Result<Arc<Compiled>, ModuleError> {
        debug_assert_eq!(key, <[u8; 32]>::from(Sha256::digest(wasm)));
        if wasm.len() > self.config.max_module_bytes {
            return Err(ModuleError::TooLarge {
                size: wasm.len(),
                max: self.config.max_module_bytes,
            });
        }
        if let Some(hit) = self.cached(&key)? {
            return Ok(hit);
        }
        let lock = self
            .compiling
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .clone();
        // The map entry goes when this call does, however it ends (a panic included).
        let _entry = CompilingEntry {
            map: &self.compiling,
            key,
            lock: lock.clone(),
        };
        // A holder that panicked poisoned the lock, but guarded nothing with it: carry on.
        let _compiling = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Whoever held the lock before may have compiled it (or given up on it).
        match self.cached(&key)? {
            Some(hit) => Ok(hit),
            None => self.load_or_compile(key, wasm),
        }
    }

    /// The compiled module from memory, or `Err` if its compile was abandoned before.
    fn cached(&self, key: &[u8; 32]) -> Result<Option<Arc<Compiled>>, ModuleError> {
        let hit = self.cache.lock().unwrap().get(key).cloned();
        if let Some(hit) = hit {
            bump(&self.counters.memory_hits);
            if let Some(disk) = &self.disk {
                let mut touched = hit.disk_touched.lock().unwrap();
                if touched.elapsed() >= DISK_TOUCH_EVERY {
                    disk.touch(key);
                    *touched = Instant::now();
                }
            }
            return Ok(Some(hit));
        }
        let mut too_slow = self.too_slow.lock().unwrap();
        too_slow.retain(|_, at| at.elapsed() < TOO_SLOW_FOR);
        if too_slow.contains_key(key) {
            return Err(ModuleError::CompileTimeout {
                millis: self.config.compile_timeout.as_millis() as u64,
            });
        }
        Ok(None)
    }

    fn load_or_compile(&self, key: [u8; 32], wasm: &[u8]) -> Result<Arc<Compiled>, ModuleError> {
        let module = match self.load_from_disk(&key) {
            Some(m) => m,
            None => {
                let module = self.compile_bounded(key, wasm)?;
                if let Some(disk) = &self.disk {
                    match module.serialize() {
                        Ok(artifact) => {
                            if let Err(e) = disk.store(&key, &artifact) {
                                tracing::warn!(error = %e, "could not write the compile cache");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "could not serialize a module"),
                    }
                }
                module
            }
        };
        let (abi, imports) = classify(&module)?;
        let initial_memory = module
            .resources_required()
            .max_initial_memory_size
            .unwrap_or(0)
            .saturating_mul(65536);
        let pre =
            self.linker
                .instantiate_pre(&module)
                .map_err(|e| ModuleError::ForbiddenImport {
                    import: "?".into(),
                    reason: e.to_string(),
                })?;
        let compiled = Arc::new(Compiled {
            abi,
            imports,
            pre,
            initial_memory,
            disk_touched: Mutex::new(Instant::now()),
        });
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= self.config.cache_entries {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Creates a store and instantiates `wasm` (compiled or cached) without running its entry
    /// point: what a task's start costs once its module is compiled. For benches.
    #[doc(hidden)]
    pub fn bench_instantiate(&self, sha256: [u8; 32], wasm: &[u8]) -> Result<(), ModuleError> {
        let compiled = self.compile_keyed(sha256, wasm)?;
        let _slot = self.slots.acquire();
        let host = Host {
            input: Vec::new(),
            output: Vec::new(),
            max_output: self.config.max_output_bytes,
            limiter: Limiter {
                memory_bytes: 1 << 30,
                table_elements: self.config.max_table_elements,
                denied: None,
            },
            wasi: None,
            random: None,
            deadline: Instant::now() + Duration::from_secs(3600),
            cancel: None,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        let _ = store.set_fuel(1 << 40);
        store.set_epoch_deadline(1 << 40);
        futures::executor::block_on(compiled.pre.instantiate_async(&mut store))
            .map(|_| ())
            .map_err(|e| ModuleError::Invalid(e.to_string()))
    }

    /// An authenticated artifact from the disk cache, if there is one.
    fn load_from_disk(&self, key: &[u8; 32]) -> Option<Module> {
        let disk = self.disk.as_ref()?;
        match disk.load(key) {
            Ok(artifact) => match load_artifact(&self.engine, &artifact) {
                Ok(m) => {
                    bump(&self.counters.disk_hits);
                    Some(m)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "wasmtime refused a cached artifact; recompiling");
                    let _ = std::fs::remove_file(disk.path(key));
                    bump(&self.counters.disk_rejected);
                    None
                }
            },
            Err(cache::Miss::Absent) => None,
            Err(cache::Miss::Rejected) => {
                bump(&self.counters.disk_rejected);
                None
            }
        }
    }

    /// Compiles on a thread of its own, giving up after the compile timeout. An abandoned compile
    /// cannot be stopped (Cranelift has no cancellation), so it finishes in the background on
    /// one core and its result is dropped; the module is remembered and refused at once if it
    /// comes again.
    fn compile_bounded(&self, key: [u8; 32], wasm: &[u8]) -> Result<Module, ModuleError> {
        if !self.compilers.is_free() {
            tracing::info!(
                module = %hex::encode(key),
                "every compiler thread is busy (abandoned compiles still finishing); waiting"
            );
        }
        // The wait for a compiler is bounded by the compile timeout too: a node whose compilers
        // are all finishing abandoned compiles says so instead of holding the caller for
        // minutes. The compile itself then has its whole timeout (a module is not judged too
        // slow because the node was busy).
        let permit = self
            .compilers
            .acquire_owned_within(self.config.compile_timeout)
            .ok_or(ModuleError::CompilersBusy {
                millis: self.config.compile_timeout.as_millis() as u64,
            })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (engine, bytes) = (self.engine.clone(), wasm.to_vec());
        std::thread::Builder::new()
            .name("zkmesh-compile".into())
            .stack_size(16 << 20)
            .spawn(move || {
                let _permit = permit;
                let _ = tx.send(Module::new(&engine, &bytes));
            })
            .map_err(|e| ModuleError::Invalid(format!("could not start a compiler thread: {e}")))?;
        match rx.recv_timeout(self.config.compile_timeout) {
            Ok(Ok(module)) => {
                bump(&self.counters.compiles);
                Ok(module)
            }
            Ok(Err(e)) => Err(ModuleError::Invalid(
                format!("{e:#}").lines().next().unwrap_or("").to_string(),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bump(&self.counters.compile_timeouts);
                self.too_slow.lock().unwrap().insert(key, Instant::now());
                tracing::warn!(
                    module = %hex::encode(key),
                    timeout_ms = self.config.compile_timeout.as_millis() as u64,
                    "compile abandoned"
                );
                Err(ModuleError::CompileTimeout {
                    millis: self.config.compile_timeout.as_millis() as u64,
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ModuleError::Invalid(
                "the compiler stopped without a result".into(),
            )),
        }
    }

    /// Runs `wasm` on `input`. `seed` makes WASI randomness deterministic per task.
    pub fn run(&self, wasm: &[u8], input: &[u8], limits: &Limits, seed: &[u8]) -> Outcome {
        self.run_hashed(Sha256::digest(wasm).into(), wasm, input, limits, seed)
    }

    /// [`Sandbox::run`] for a module whose SHA-256 the caller has already checked (a worker
    /// checks every module it downloads): a cached module then starts without hashing its bytes
    /// again, which for a 50 KiB module costs more than instantiating it. A wrong `sha256` would
    /// run whatever module is cached under it, so it must be the hash of `wasm`.
    pub fn run_hashed(
        &self,
        sha256: [u8; 32],
        wasm: &[u8],
        input: &[u8],
        limits: &Limits,
        seed: &[u8],
    ) -> Outcome {
        match self.compile_keyed(sha256, wasm) {
            Ok(compiled) => self.run_prepared(&Prepared(compiled), input, limits, seed),
            Err(e) => self.refused(&e, limits),
        }
    }

    /// The outcome of a task whose module could not be prepared: `invalid_module` or
    /// `forbidden_import`, billed nothing.
    pub fn refused(&self, e: &ModuleError, limits: &Limits) -> Outcome {
        let exit = match e {
            ModuleError::ForbiddenImport { .. } => Exit::ForbiddenImport(e.to_string()),
            _ => Exit::InvalidModule(e.to_string()),
        };
        unrun(exit.message(limits, &self.config), exit)
    }

    /// Runs a module [`Sandbox::prepare_hashed`] made ready: as [`Sandbox::run_hashed`], without
    /// looking the module up again (so nothing can make it compile a second time).
    pub fn run_prepared(
        &self,
        prepared: &Prepared,
        input: &[u8],
        limits: &Limits,
        seed: &[u8],
    ) -> Outcome {
        let compiled = prepared.0.clone();
        let started = Instant::now();
        if compiled.initial_memory > limits.memory_bytes {
            let message = format!(
                "needs {} MiB of memory to start; the limit is {} MiB",
                compiled.initial_memory.div_ceil(1 << 20),
                limits.memory_bytes >> 20
            );
            return unrun(message, Exit::OutOfMemory);
        }
        let _slot = self.slots.acquire();
        // The wall clock counts from here: a task's time limit is for running it, not for the
        // node's compile or its wait for a free slot (a cold node must not time out, and be
        // billed its whole fuel limit, where a warm one would finish).
        let deadline = Instant::now() + limits.timeout;
        // So does the CPU time: instantiating and running the guest, not loading its module.
        let cpu = cpu_time::ThreadTime::now();
        bump(&self.counters.runs);
        let stdout = CappedPipe::new(self.config.max_output_bytes, Overflow::Trap, None);
        let stderr = CappedPipe::new(
            self.config.max_stderr_bytes,
            Overflow::Truncate,
            limits.log.clone(),
        );
        let random = (compiled.abi == Abi::Wasi).then(|| RandomStream::new(seed));
        let wasi = random
            .as_ref()
            .map(|r| deterministic_wasi(input, r.key, stdout.clone(), stderr.clone()));
        let host = Host {
            input: input.to_vec(),
            output: Vec::new(),
            max_output: self.config.max_output_bytes,
            limiter: Limiter {
                memory_bytes: limits.memory_bytes as usize,
                table_elements: self.config.max_table_elements,
                denied: None,
            },
            random,
            wasi,
            deadline,
            cancel: limits.cancel.clone(),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        let _ = store.set_fuel(limits.fuel);
        // Every epoch tick the guest is checked against its wall-clock deadline and its
        // cancellation flag.
        let cancel = limits.cancel.clone();
        if self.config.consume_fuel {
            store
                .fuel_async_yield_interval(Some(FUEL_SYNC))
                .expect("fuel is on and the interval is not zero");
        }
        // (Off only in benches: see `SandboxConfig::wall_clock`.)
        if self.config.wall_clock {
            store.set_epoch_deadline(1);
        }
        store.epoch_deadline_callback(move |_| {
            if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(wasmtime::Error::new(Cancelled));
            }
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::new(Trap::Interrupt));
            }
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });

        // Guests run as futures so that fuel can yield every FUEL_SYNC units, which is what
        // bounds the fuel an implicit trap can leave uncounted (see the crate docs).
        let result = futures::executor::block_on(run_entry(&mut store, &compiled));
        let mut fuel_used = match self.config.consume_fuel {
            true => limits.fuel - store.get_fuel().unwrap_or(0),
            false => 0,
        };
        let host = store.into_data();
        let exit = match result {
            Ok(()) => Exit::Ok,
            Err(e) => self.classify_error(&e, host.limiter.denied.is_some()),
        };
        if exit == Exit::Timeout && self.config.consume_fuel {
            // The count at an interrupt is stale (see the crate docs): bill the whole limit.
            fuel_used = limits.fuel;
        }
        let (mut output, stderr) = match compiled.abi {
            Abi::Zkmesh => (
                host.output,
                stdio::Written {
                    bytes: Vec::new(),
                    dropped: 0,
                },
            ),
            Abi::Wasi => (stdout.take().bytes, stderr.take()),
        };
        if exit == Exit::OutputTooLarge {
            // A truncated output is no result: report none rather than up to the cap of bytes.
            output.clear();
        }
        let message = match (&exit, host.limiter.denied) {
            (Exit::OutOfMemory, Some(Denied::Table)) => format!(
                "tried to grow a table past its limit of {} elements",
                self.config.max_table_elements
            ),
            _ => exit.message(limits, &self.config),
        };
        Outcome {
            message,
            exit,
            output,
            stderr: stderr.bytes,
            stderr_dropped: stderr.dropped,
            fuel_used,
            run_time: started.elapsed(),
            cpu_time: cpu.elapsed(),
        }
    }

    fn classify_error(&self, e: &wasmtime::Error, memory_denied: bool) -> Exit {
        if memory_denied {
            return Exit::OutOfMemory;
        }
        if e.downcast_ref::<OutputLimit>().is_some() {
            return Exit::OutputTooLarge;
        }
        if e.downcast_ref::<Cancelled>().is_some() {
            return Exit::Trap("cancelled".into());
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return if exit.0 == 0 {
                Exit::Ok
            } else {
                Exit::ExitCode(exit.0)
            };
        }
        if let Some(trap) = e.downcast_ref::<Trap>() {
            return match trap {
                Trap::OutOfFuel => Exit::OutOfFuel,
                Trap::Interrupt => Exit::Timeout,
                Trap::StackOverflow => Exit::StackExhausted,
                other => Exit::Trap(other.to_string()),
            };
        }
        let text = format!("{e:#}");
        // The outermost message is wasmtime's "error while executing at wasm backtrace:"; the
        // cause is the innermost one.
        let cause = e.root_cause().to_string();
        let cause = cause.lines().next().unwrap_or("").trim();
        Exit::Trap(if cause.is_empty() {
            text.lines().next().unwrap_or("").to_string()
        } else {
            cause.to_string()
        })
    }
}

/// The wasmtime configuration of a sandbox's engine.
fn engine_config(config: &SandboxConfig) -> Config {
    let mut wc = Config::new();
    wc.consume_fuel(config.consume_fuel)
        .epoch_interruption(config.wall_clock)
        .cranelift_nan_canonicalization(true)
        .wasm_threads(false)
        .wasm_relaxed_simd(false)
        // No GC heap, exceptions or stack switching: a GC heap would be a second memory
        // outside the limiter's memory budget (and take a second slot from the pool), and
        // none of these is needed by code compiled from Rust, C or Go.
        .wasm_gc(false)
        .wasm_function_references(false)
        .wasm_exceptions(false)
        .wasm_stack_switching(false)
        .gc_support(false)
        .max_wasm_stack(config.max_wasm_stack)
        // One compiler thread per module: an abandoned compile holds at most one core.
        .parallel_compilation(false);
    pin_baseline_isa(&mut wc);
    if config.perf_map {
        wc.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let slots = config.slots.max(1);
    if config.pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots * MAX_TABLES)
            .total_stacks(slots)
            .max_memories_per_module(1)
            .max_tables_per_module(MAX_TABLES)
            .max_memory_size(config.max_memory_bytes as usize)
            .table_elements(config.max_table_elements)
            .max_core_instance_size(4 << 20);
        wc.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    wc
}

/// The x86-64 features guest code may use: x86-64-v2 (SSE4.2, POPCNT, CMPXCHG16B), on every
/// node. Left to itself Cranelift uses whatever the host has (AVX2, BMI2, LZCNT...), and the
/// instructions it picks change register pressure and so the size of stack frames: the same
/// recursion could then exhaust the 512 KiB wasm stack at a different depth, and bill a
/// different amount of fuel, on a newer CPU. With one feature set, every node compiles the same
/// machine code. (A host without x86-64-v2 cannot make an engine and says so.)
const BASELINE_X86_64: &[(&str, bool)] = &[
    ("has_sse3", true),
    ("has_ssse3", true),
    ("has_cmpxchg16b", true),
    ("has_sse41", true),
    ("has_sse42", true),
    ("has_popcnt", true),
    ("has_avx", false),
    ("has_avx2", false),
    ("has_fma", false),
    ("has_avx_vnni", false),
    ("has_avx512bitalg", false),
    ("has_avx512dq", false),
    ("has_avx512vl", false),
    ("has_avx512vbmi", false),
    ("has_avx512f", false),
    ("has_avx512vnni", false),
    ("has_bmi1", false),
    ("has_bmi2", false),
    ("has_lzcnt", false),
];

#[allow(unsafe_code)]
fn pin_baseline_isa(wc: &mut Config) {
    if cfg!(target_arch = "x86_64") {
        for (flag, on) in BASELINE_X86_64 {
            // SAFETY: these only take away instructions the host has, or name ones x86-64-v2
            // guarantees; wasmtime checks at `Engine::new` that the host has every feature
            // enabled here.
            unsafe {
                wc.cranelift_flag_set(flag, if *on { "true" } else { "false" });
            }
        }
    }
}

/// Loads a compiled artifact from the disk cache.
#[allow(unsafe_code)]
fn load_artifact(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize` trusts its bytes to be wasmtime's own output. These passed
    // `DiskCache::load`'s HMAC check under this cache's secret key, which only this sandbox's
    // `compile` uses, on bytes `Module::serialize` produced; wasmtime additionally checks the
    // artifact's header against this engine's version and configuration.
    unsafe { Module::deserialize(engine, artifact) }
}

async fn run_entry(store: &mut Store<Host>, compiled: &Compiled) -> wasmtime::Result<()> {
    let instance = compiled.pre.instantiate_async(&mut *store).await?;
    let name = match compiled.abi {
        Abi::Wasi => "_start",
        Abi::Zkmesh => {
            if instance.get_func(&mut *store, "run").is_some() {
                "run"
            } else {
                "main"
            }
        }
    };
    let entry = instance.get_typed_func::<(), ()>(&mut *store, name)?;
    entry.call_async(&mut *store, ()).await
}

/// Decides the ABI from the imports and exports, refusing anything else.
fn classify(module: &Module) -> Result<(Abi, Vec<String>), ModuleError> {
    let mut uses_zkmesh = false;
    let mut uses_wasi = false;
    let mut imports = Vec::new();
    for import in module.imports() {
        let full = format!("{}.{}", import.module(), import.name());
        match import.module() {
            "zkmesh" => {
                let expected = match import.name() {
                    "input_len" => "() -> i32",
                    "read_input" => "(i32, i32, i32) -> i32",
                    "write_output" => "(i32, i32) -> ()",
                    _ => {
                        return Err(ModuleError::ForbiddenImport {
                            import: full,
                            reason:
                                "the zkmesh ABI has only input_len, read_input and write_output"
                                    .into(),
                        });
                    }
                };
                let ok = match import.ty() {
                    wasmtime::ExternType::Func(f) => signature(&f) == expected,
                    _ => false,
                };
                if !ok {
                    return Err(ModuleError::ForbiddenImport {
                        import: full,
                        reason: format!("must be a function of type {expected}"),
                    });
                }
                uses_zkmesh = true;
            }
            WASI_MODULE => uses_wasi = true,
            other => {
                return Err(ModuleError::ForbiddenImport {
                    import: full,
                    reason: format!(
                        "module {other:?} is not provided; guests may import only from \"zkmesh\" or \"{WASI_MODULE}\""
                    ),
                });
            }
        }
        imports.push(full);
    }
    if uses_zkmesh && uses_wasi {
        return Err(ModuleError::ForbiddenImport {
            import: "zkmesh + wasi".into(),
            reason: "a module uses either the zkmesh ABI or WASI, not both".into(),
        });
    }
    let has = |name: &str| {
        module
            .get_export(name)
            .is_some_and(|e| matches!(e, wasmtime::ExternType::Func(f) if f.params().len() == 0 && f.results().len() == 0))
    };
    let abi = if uses_wasi || (!uses_zkmesh && has("_start")) {
        if !has("_start") {
            return Err(ModuleError::NoEntry(
                "a WASI command must export _start: () -> ()".into(),
            ));
        }
        Abi::Wasi
    } else {
        if !has("run") && !has("main") {
            return Err(ModuleError::NoEntry(
                "a zkmesh ABI module must export run: () -> () (or _start for WASI)".into(),
            ));
        }
        if uses_zkmesh
            && !matches!(
                module.get_export("memory"),
                Some(wasmtime::ExternType::Memory(_))
            )
        {
            return Err(ModuleError::NoEntry(
                "a zkmesh ABI module must export its memory as \"memory\"".into(),
            ));
        }
        Abi::Zkmesh
    };
    Ok((abi, imports))
}

fn signature(f: &wasmtime::FuncType) -> String {
    let list = |tys: Vec<String>| tys.join(", ");
    let params = list(f.params().map(|t| t.to_string()).collect());
    let results: Vec<String> = f.results().map(|t| t.to_string()).collect();
    let results = match results.len() {
        0 => "()".to_string(),
        1 => results[0].clone(),
        _ => format!("({})", list(results)),
    };
    format!("({params}) -> {results}")
}

struct Host {
    input: Vec<u8>,
    output: Vec<u8>,
    max_output: usize,
    limiter: Limiter,
    wasi: Option<WasiP1Ctx>,
    /// WASI `random_get`'s stream, for WASI guests.
    random: Option<RandomStream>,
    /// When the run must end, and the flag that cancels it: for host calls whose work can take
    /// long enough to matter (the epoch deadline only reaches wasm code).
    deadline: Instant,
    cancel: Option<Arc<AtomicBool>>,
}

/// The bytes WASI `random_get` returns: SHA-256 in counter mode under a key derived from the
/// task's seed, so every node running the task gives its guest the same stream, which never
/// repeats.
struct RandomStream {
    key: [u8; 32],
    counter: u64,
    block: [u8; 32],
    /// Bytes of `block` already handed out.
    used: usize,
}

impl RandomStream {
    fn new(seed: &[u8]) -> RandomStream {
        let mut h = Sha256::new();
        h.update(b"zkmesh.wasi.random\0");
        h.update(seed);
        RandomStream {
            key: h.finalize().into(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(self.key);
                h.update(self.counter.to_be_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            let n = (self.block.len() - self.used).min(out.len());
            out[..n].copy_from_slice(&self.block[self.used..self.used + n]);
            self.used += n;
            out = &mut out[n..];
        }
    }
}

fn wasi_ctx(host: &mut Host) -> &mut WasiP1Ctx {
    host.wasi
        .as_mut()
        .expect("WASI imports are only linked into modules classified as WASI")
}

/// Raised when a run is cancelled.
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// Raised by `write_output` past the limit.
#[derive(Debug)]
struct OutputLimit;

impl std::fmt::Display for OutputLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("output limit exceeded")
    }
}

impl std::error::Error for OutputLimit {}

struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    denied: Option<Denied>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Denied {
    Memory,
    Table,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // A trap rather than memory.grow returning -1: a guest that ignores the failure
            // would otherwise spin until its fuel runs out, and the submitter should learn why.
            self.denied = Some(Denied::Memory);
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            // Like memory: a table bomb ends the run rather than spinning on table.grow's -1.
            self.denied = Some(Denied::Table);
            return Err(wasmtime::Error::msg("table limit reached"));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }

    fn memories(&self) -> usize {
        1
    }
}

fn memory_of(caller: &mut Caller<'_, Host>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(wasmtime::Error::msg(
            "the module does not export its memory",
        )),
    }
}

fn define_zkmesh_abi(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap("zkmesh", "input_len", |caller: Caller<'_, Host>| -> i32 {
        caller.data().input.len() as i32
    })?;
    linker.func_wrap(
        "zkmesh",
        "read_input",
        |mut caller: Caller<'_, Host>, dst: i32, offset: i32, len: i32| -> wasmtime::Result<i32> {
            let memory = memory_of(&mut caller)?;
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let (dst, offset, len) = (
                dst as u32 as usize,
                offset as u32 as usize,
                len as u32 as usize,
            );
            let start = offset.min(host.input.len());
            let n = len.min(host.input.len() - start);
            let target = mem
                .get_mut(dst..dst.saturating_add(n))
                .ok_or_else(|| wasmtime::Error::msg("read_input: destination out of bounds"))?;
            target.copy_from_slice(&host.input[start..start + n]);
            Ok(n as i32)
        },
    )?;
    linker.func_wrap(
        "zkmesh",
        "write_output",
        |mut caller: Caller<'_, Host>, src: i32, len: i32| -> wasmtime::Result<()> {
            let memory = memory_of(&mut caller)?;
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let (src, len) = (src as u32 as usize, len as u32 as usize);
            if host.output.len().saturating_add(len) > host.max_output {
                return Err(wasmtime::Error::new(OutputLimit));
            }
            let bytes = mem
                .get(src..src.saturating_add(len))
                .ok_or_else(|| wasmtime::Error::msg("write_output: source out of bounds"))?;
            host.output.extend_from_slice(bytes);
            Ok(())
        },
    )?;
    Ok(())
}

/// WASI preview 1 `poll_oneoff(in, out, nsubscriptions, nevents) -> errno` in frozen time:
/// every subscription (a clock, or stdin/stdout/stderr readiness) is reported ready at once,
/// without error, in order. Deterministic, and it never blocks the worker.
fn poll_oneoff(
    mut caller: Caller<'_, Host>,
    subscriptions: i32,
    events: i32,
    count: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    const SUBSCRIPTION: usize = 48;
    const EVENT: usize = 32;
    /// More subscriptions than any program waits on at once; refused, to bound a call's work.
    const MAX_SUBSCRIPTIONS: usize = 4096;
    const ERRNO_FAULT: i32 = 21;
    const ERRNO_INVAL: i32 = 28;
    let memory = memory_of(&mut caller)?;
    let mem = memory.data_mut(&mut caller);
    let (subscriptions, events, count, nevents) = (
        subscriptions as u32 as usize,
        events as u32 as usize,
        count as u32 as usize,
        nevents as u32 as usize,
    );
    if count == 0 || count > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_INVAL);
    }
    let fits = |at: usize, len: usize| at.checked_add(len).is_some_and(|end| end <= mem.len());
    if !fits(subscriptions, count * SUBSCRIPTION)
        || !fits(events, count * EVENT)
        || !fits(nevents, 4)
    {
        return Ok(ERRNO_FAULT);
    }
    // Read every subscription before writing any event: the two arrays may overlap.
    let mut ready = Vec::with_capacity(count);
    for i in 0..count {
        let sub = subscriptions + i * SUBSCRIPTION;
        let tag = mem[sub + 8];
        if tag > 2 {
            return Ok(ERRNO_INVAL);
        }
        // userdata, error 0, the subscription's type (clock, fd_read, fd_write), no bytes, no
        // flags.
        let mut event = [0u8; EVENT];
        event[..8].copy_from_slice(&mem[sub..sub + 8]);
        event[10] = tag;
        ready.push(event);
    }
    for (i, event) in ready.iter().enumerate() {
        let at = events + i * EVENT;
        mem[at..at + EVENT].copy_from_slice(event);
    }
    mem[nevents..nevents + 4].copy_from_slice(&(count as u32).to_le_bytes());
    Ok(0)
}

/// Fuel `random_get` costs per byte: the host spends a few nanoseconds a byte on SHA-256
/// (without SHA extensions), where a unit of fuel, a wasm instruction, is a fraction of one.
const RANDOM_FUEL_PER_BYTE: u64 = 4;

/// WASI preview 1 `random_get(buf, len) -> errno`: `len` bytes of the task's deterministic
/// stream at `buf`, for [`RANDOM_FUEL_PER_BYTE`] units of fuel a byte, charged up front. A call
/// can cover all of a 4 GiB memory, seconds of host work, so the deadline and the cancellation
/// flag are checked every 64 KiB.
fn random_get(mut caller: Caller<'_, Host>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    const ERRNO_FAULT: i32 = 21;
    const CHUNK: usize = 64 << 10;
    let (buf, len) = (buf as u32 as usize, len as u32 as usize);
    if let Ok(fuel) = caller.get_fuel() {
        let cost = len as u64 * RANDOM_FUEL_PER_BYTE;
        if fuel < cost {
            caller.set_fuel(0)?;
            return Err(wasmtime::Error::new(Trap::OutOfFuel));
        }
        caller.set_fuel(fuel - cost)?;
    }
    let memory = memory_of(&mut caller)?;
    let (mem, host) = memory.data_and_store_mut(&mut caller);
    let Some(out) = buf.checked_add(len).and_then(|end| mem.get_mut(buf..end)) else {
        return Ok(ERRNO_FAULT);
    };
    let random = host
        .random
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("random_get outside a WASI guest"))?;
    for chunk in out.chunks_mut(CHUNK) {
        if host
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(wasmtime::Error::new(Cancelled));
        }
        if Instant::now() >= host.deadline {
            return Err(wasmtime::Error::new(Trap::Interrupt));
        }
        random.fill(chunk);
    }
    Ok(0)
}

struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn deterministic_wasi(
    input: &[u8],
    random_key: [u8; 32],
    stdout: CappedPipe,
    stderr: CappedPipe,
) -> WasiP1Ctx {
    // `random_get` is the sandbox's own (see `RandomStream`); wasmtime-wasi's generators are
    // only reachable through WASI preview 2, which guests do not get, and are deterministic
    // anyway: the task's random key, cycled.
    let stream = random_key.to_vec();
    let insecure_seed = u128::from_be_bytes(random_key[..16].try_into().expect("16 bytes"));
    let mut b = wasmtime_wasi::WasiCtxBuilder::new();
    b.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(
        input.to_vec(),
    ))
    .stdout(stdout)
    .stderr(stderr)
    .arg("guest")
    .wall_clock(FrozenClock)
    .monotonic_clock(FrozenClock)
    .secure_random(wasmtime_wasi::Deterministic::new(stream.clone()))
    .insecure_random(wasmtime_wasi::Deterministic::new(stream))
    .insecure_random_seed(insecure_seed)
    .allow_tcp(false)
    .allow_udp(false)
    .allow_ip_name_lookup(false);
    b.build_p1()
}

mod stdio;
use stdio::{CappedPipe, Overflow};

#[cfg(test)]
mod tests;
