//! The sandbox: its engine, linker, caches and slots, and the counters it keeps. Compiling is
//! in `sandbox/compile.rs`, running in `sandbox/run.rs`.

pub(crate) mod compile;
pub(crate) mod run;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::{Engine, Linker};

use crate::abi::define_zkmesh_abi;
use crate::cache;
use crate::config::SandboxConfig;
use crate::engine::engine_config;
use crate::host::Host;
use crate::sandbox::compile::{Compiled, ModuleError, Slots};
use crate::wasi::{WASI_MODULE, poll_oneoff, random_get, wasi_ctx};

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
pub(crate) struct Counters {
    pub(crate) compiles: AtomicU64,
    pub(crate) memory_hits: AtomicU64,
    pub(crate) disk_hits: AtomicU64,
    pub(crate) disk_rejected: AtomicU64,
    pub(crate) compile_timeouts: AtomicU64,
    pub(crate) runs: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A worker's (or the scheduler's) wasmtime sandbox.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<Host>,
    pub(crate) config: SandboxConfig,
    pub(crate) cache: Mutex<HashMap<[u8; 32], Arc<Compiled>>>,
    pub(crate) disk: Option<cache::DiskCache>,
    /// Modules whose compile was abandoned, and when: refused at once for [`TOO_SLOW_FOR`].
    pub(crate) too_slow: Mutex<HashMap<[u8; 32], Instant>>,
    pub(crate) counters: Counters,
    pub(crate) slots: Slots,
    /// Compiler threads, one per slot. An abandoned compile keeps its thread until Cranelift
    /// finishes, so this also bounds the cores that slow modules can hold.
    pub(crate) compilers: Arc<Slots>,
    /// One lock per module being compiled: a second task for the same module waits for the
    /// first compile instead of starting another.
    pub(crate) compiling: Mutex<HashMap<[u8; 32], Arc<Mutex<()>>>>,
    pub(crate) stop_ticker: Arc<AtomicBool>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// Builds the engine and linker and starts the epoch ticker thread.
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
        // wasmtime-wasi's stdio copies on the host for a few units of fuel a call; these bill
        // every iovec and byte first (see `wasi::io`).
        linker
            .func_wrap(WASI_MODULE, "fd_write", crate::wasi::io::fd_write)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        linker
            .func_wrap(WASI_MODULE, "fd_read", crate::wasi::io::fd_read)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        linker
            .func_wrap(WASI_MODULE, "fd_pwrite", crate::wasi::io::fd_pwrite)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        linker
            .func_wrap(WASI_MODULE, "fd_pread", crate::wasi::io::fd_pread)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        linker
            .func_wrap(WASI_MODULE, "path_open", crate::wasi::io::path_open)
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

    /// The settings the sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The counters since the sandbox started.
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
}
