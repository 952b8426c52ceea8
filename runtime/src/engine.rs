//! The wasmtime engine's configuration: determinism, the pinned baseline ISA, and the one
//! place compiled artifacts are loaded (`unsafe`).

use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use crate::config::{MAX_TABLES, SandboxConfig};

/// The wasmtime configuration of a sandbox's engine.
pub(crate) fn engine_config(config: &SandboxConfig) -> Config {
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
pub(crate) const BASELINE_X86_64: &[(&str, bool)] = &[
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
pub(crate) fn pin_baseline_isa(wc: &mut Config) {
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
pub(crate) fn load_artifact(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize` trusts its bytes to be wasmtime's own output. These passed
    // `DiskCache::load`'s HMAC check under this cache's secret key, which only this sandbox's
    // `compile` uses, on bytes `Module::serialize` produced; wasmtime additionally checks the
    // artifact's header against this engine's version and configuration.
    unsafe { Module::deserialize(engine, artifact) }
}
