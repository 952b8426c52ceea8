//! Compiling modules: the in-memory and disk caches, the compile timeout, one compile per
//! module at a time, deciding a module's ABI from its imports, and the run slots that bound
//! how many guests run at once.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{InstancePre, Module, Store};

use crate::abi::Abi;
use crate::cache;
use crate::engine::load_artifact;
use crate::host::Host;
use crate::limits::Limiter;
use crate::sandbox::{Sandbox, bump};
use crate::wasi::WASI_MODULE;

/// Why a module cannot run at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The module is larger than the sandbox accepts.
    #[error("module is {size} bytes; the limit is {max}")]
    TooLarge {
        /// The module's size in bytes.
        size: usize,
        /// The most bytes a module may have.
        max: usize,
    },
    /// wasmtime refused the module (or the sandbox could not be built).
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module imports something outside its ABI.
    #[error("forbidden import {import}: {reason}")]
    ForbiddenImport {
        /// The import as `module.name`.
        import: String,
        /// Why it is refused.
        reason: String,
    },
    /// The module exports no entry point of either ABI.
    #[error("module does not fit a guest ABI: {0}")]
    NoEntry(String),
    /// The module uses a WebAssembly feature the sandbox does not enable (reference types that
    /// need the GC proposal, threads, ...): valid WebAssembly, but not runnable here.
    #[error("unsupported feature: {feature} is not supported by this mesh ({detail})")]
    Unsupported {
        /// The feature, named for people.
        feature: String,
        /// wasmtime's own words.
        detail: String,
    },
    /// The module did not compile within the compile timeout.
    #[error("invalid module: it did not compile within {millis} ms")]
    CompileTimeout {
        /// The compile timeout.
        millis: u64,
    },
    /// Every compiler thread stayed busy (abandoned compiles still finishing) for the whole
    /// compile timeout: the module was not looked at.
    #[error("no compiler thread came free within {millis} ms; try again later")]
    CompilersBusy {
        /// How long it waited.
        millis: u64,
    },
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
pub(crate) const TOO_SLOW_FOR: Duration = Duration::from_secs(600);

/// A counting semaphore for run slots (the pool has exactly `slots` instances).
pub(crate) struct Slots {
    pub(crate) free: Mutex<u32>,
    pub(crate) freed: Condvar,
}

pub(crate) struct SlotGuard<S: std::ops::Deref<Target = Slots>>(S);

impl Slots {
    pub(crate) fn new(n: u32) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    pub(crate) fn take(&self) {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
    }

    pub(crate) fn acquire(&self) -> SlotGuard<&Slots> {
        self.take();
        SlotGuard(self)
    }

    /// A slot that can move to another thread, if one comes free within `wait`.
    pub(crate) fn acquire_owned_within(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Option<SlotGuard<Arc<Slots>>> {
        let mut free = self.free.lock().unwrap();
        let deadline = Instant::now() + wait;
        while *free == 0 {
            let left = deadline.checked_duration_since(Instant::now())?;
            free = self.freed.wait_timeout(free, left).unwrap().0;
        }
        *free -= 1;
        Some(SlotGuard(self.clone()))
    }

    pub(crate) fn is_free(&self) -> bool {
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
    /// The guest ABI its imports and exports fit.
    pub abi: Abi,
    /// Every import as `module.name`.
    pub imports: Vec<String>,
}

pub(crate) struct Compiled {
    pub(crate) abi: Abi,
    pub(crate) imports: Vec<String>,
    pub(crate) pre: InstancePre<Host>,
    /// The largest initial size of a memory the module defines, in bytes.
    pub(crate) initial_memory: u64,
    /// When its disk-cache file was last marked as used.
    pub(crate) disk_touched: Mutex<Instant>,
}

/// How often a module served from memory has its disk-cache file marked as used, so that the
/// disk cache's least recently used files are not the ones hottest in memory.
pub(crate) const DISK_TOUCH_EVERY: Duration = Duration::from_secs(600);

/// Removes a module's compile lock from [`Sandbox::compiling`] when its holder is done, unless
/// a newer lock has replaced it.
pub(crate) struct CompilingEntry<'a> {
    pub(crate) map: &'a Mutex<HashMap<[u8; 32], Arc<Mutex<()>>>>,
    pub(crate) key: [u8; 32],
    pub(crate) lock: Arc<Mutex<()>>,
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

/// A module compiled (or found cached) for a sandbox, ready to run with
/// [`Sandbox::run_prepared`].
#[derive(Clone)]
pub struct Prepared(pub(crate) Arc<Compiled>);

impl Sandbox {
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

    pub(crate) fn compile(&self, wasm: &[u8]) -> Result<Arc<Compiled>, ModuleError> {
        self.compile_keyed(Sha256::digest(wasm).into(), wasm)
    }

    /// Compiles `wasm` (or finds it cached) without running it, so that a caller can tell a
    /// module this node cannot compile now ([`ModuleError::is_node_condition`]) from a task
    /// result. `sha256` must be the hash of `wasm`, as for [`Sandbox::run_hashed`].
    pub fn prepare_hashed(&self, sha256: [u8; 32], wasm: &[u8]) -> Result<Prepared, ModuleError> {
        self.compile_keyed(sha256, wasm).map(Prepared)
    }

    /// `key` is the SHA-256 of `wasm`.
    pub(crate) fn compile_keyed(
        &self,
        key: [u8; 32],
        wasm: &[u8],
    ) -> Result<Arc<Compiled>, ModuleError> {
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
    pub(crate) fn cached(&self, key: &[u8; 32]) -> Result<Option<Arc<Compiled>>, ModuleError> {
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

    pub(crate) fn load_or_compile(
        &self,
        key: [u8; 32],
        wasm: &[u8],
    ) -> Result<Arc<Compiled>, ModuleError> {
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
            stdio: None,
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
    pub(crate) fn load_from_disk(&self, key: &[u8; 32]) -> Option<Module> {
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
    pub(crate) fn compile_bounded(
        &self,
        key: [u8; 32],
        wasm: &[u8],
    ) -> Result<Module, ModuleError> {
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
            Ok(Err(e)) => Err(compile_error(format!("{e:#}").lines().next().unwrap_or(""))),
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
}

/// Decides the ABI from the imports and exports, refusing anything else.
pub(crate) fn classify(module: &Module) -> Result<(Abi, Vec<String>), ModuleError> {
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

pub(crate) fn signature(f: &wasmtime::FuncType) -> String {
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

/// The error for a module wasmtime would not compile: a feature this sandbox leaves off is
/// [`ModuleError::Unsupported`], named; anything else is invalid.
pub(crate) fn compile_error(message: &str) -> ModuleError {
    let feature = if message.contains("gc types are disallowed") || message.contains("requires gc")
    {
        Some("externref and typed function references (the WebAssembly GC proposal)".to_string())
    } else {
        // wasmparser: "<feature> support is not enabled".
        message
            .split(": ")
            .find_map(|part| {
                part.split(" support is not enabled")
                    .next()
                    .filter(|f| *f != part)
            })
            .map(|f| f.trim().to_string())
    };
    match feature {
        Some(feature) => ModuleError::Unsupported {
            feature,
            detail: message.to_string(),
        },
        None => ModuleError::Invalid(message.to_string()),
    }
}
