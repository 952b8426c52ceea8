//! The sandbox against native code, and what a task's start costs.
//!
//! - `overhead/*`: the same kernels (`guests/programs/kernels/src/kernels.rs`) run natively and
//!   as the `kernels` guest in the sandbox with fuel metering on: SHA-256 of 1 MiB, sorting a
//!   million i64s, a sieve up to ten million. The guest side includes its instantiation and
//!   reading its input. `wasm_no_epoch` drops the wall-clock (epoch) checks, `wasm_unmetered`
//!   fuel metering, `wasm_bare` both, to show what each costs; workers run `wasm`. Native code
//!   is built at opt-level "s", like the guests.
//! - `instantiate/*`: store creation and instantiation of a compiled, cached module, with the
//!   pooling allocator and without.
//! - `compile/*` and `cache_load/*`: compiling each guest, and loading it from the disk cache
//!   instead (MAC check, deserialisation, linking).
//!
//! `cargo bench -p zkmesh-benches --bench sandbox`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sha2::Digest;
use zkmesh_guests::kernels;
use zkmesh_runtime::{Exit, Limits, Sandbox, SandboxConfig};

const SHA_BYTES: usize = 1 << 20;
const SORT_N: usize = 1_000_000;
const SIEVE_N: usize = 10_000_000;

fn overhead(c: &mut Criterion) {
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    let variant = |consume_fuel, wall_clock| {
        Sandbox::new(SandboxConfig {
            consume_fuel,
            wall_clock,
            ..SandboxConfig::default()
        })
        .unwrap()
    };
    // What each instrument costs: fuel metering, the epoch (wall-clock) checks, and neither
    // (what is left is Cranelift against LLVM). Only the first is how workers run.
    let others = [
        ("wasm_no_epoch", variant(true, false)),
        ("wasm_unmetered", variant(false, true)),
        ("wasm_bare", variant(false, false)),
    ];
    let limits = Limits {
        fuel: 1 << 40,
        timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let data = vec![0x5au8; SHA_BYTES];
    let sha_input = [b"sha256 ".as_slice(), &data].concat();
    let sort_input = format!("sort {SORT_N}").into_bytes();
    let sieve_input = format!("sieve {SIEVE_N}").into_bytes();
    let mut g = c.benchmark_group("overhead");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for (name, input) in [
        ("sha256_1MiB", &sha_input),
        ("sort_1M_i64", &sort_input),
        ("sieve_10M", &sieve_input),
    ] {
        let out = sb.run(zkmesh_guests::KERNELS_WASM, input, &limits, b"");
        assert_eq!(out.exit, Exit::Ok, "{}", out.message);
        assert_eq!(Some(out.output), zkmesh_guests::kernels_output(input));
        g.bench_function(BenchmarkId::new("wasm", name), |b| {
            b.iter(|| sb.run(zkmesh_guests::KERNELS_WASM, input, &limits, b""))
        });
        for (variant, sandbox) in &others {
            g.bench_function(BenchmarkId::new(*variant, name), |b| {
                b.iter(|| sandbox.run(zkmesh_guests::KERNELS_WASM, input, &limits, b""))
            });
        }
    }
    g.bench_function(BenchmarkId::new("native", "sha256_1MiB"), |b| {
        b.iter(|| kernels::sha256(std::hint::black_box(&data)))
    });
    // Like the guest, which starts with fresh memory every run, native code allocates its
    // buffer each time (the `_warm` variants reuse one, already paged in).
    g.bench_function(BenchmarkId::new("native", "sort_1M_i64"), |b| {
        b.iter(|| kernels::sort(&mut vec![0i64; SORT_N], 0x9e37_79b9_7f4a_7c15))
    });
    let mut nums = vec![0i64; SORT_N];
    g.bench_function(BenchmarkId::new("native_warm", "sort_1M_i64"), |b| {
        b.iter(|| kernels::sort(std::hint::black_box(&mut nums), 0x9e37_79b9_7f4a_7c15))
    });
    g.bench_function(BenchmarkId::new("native", "sieve_10M"), |b| {
        b.iter(|| kernels::sieve(&mut vec![0u8; SIEVE_N + 1]))
    });
    let mut sieve = vec![0u8; SIEVE_N + 1];
    g.bench_function(BenchmarkId::new("native_warm", "sieve_10M"), |b| {
        b.iter(|| kernels::sieve(std::hint::black_box(&mut sieve)))
    });
    g.finish();
}

fn instantiate(c: &mut Criterion) {
    let mut g = c.benchmark_group("instantiate");
    for pooling in [true, false] {
        let sb = Sandbox::new(SandboxConfig {
            pooling,
            ..SandboxConfig::default()
        })
        .unwrap();
        for guest in ["sha256", "primes"] {
            let wasm = zkmesh_guests::get(guest).unwrap().wasm;
            let hash: [u8; 32] = sha2::Sha256::digest(wasm).into();
            sb.bench_instantiate(hash, wasm).unwrap();
            let id = BenchmarkId::new(if pooling { "pooled" } else { "on_demand" }, guest);
            g.bench_function(id, |b| b.iter(|| sb.bench_instantiate(hash, wasm).unwrap()));
        }
    }
    g.finish();
}

fn compile_and_cache(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let fresh = Sandbox::new(SandboxConfig {
        pooling: false,
        ..SandboxConfig::default()
    })
    .unwrap();
    let cached = Sandbox::new(SandboxConfig {
        pooling: false,
        cache_dir: Some(dir.path().to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap();
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for guest in zkmesh_guests::all() {
        g.bench_function(guest.name, |b| {
            b.iter(|| {
                fresh.forget_compiled();
                fresh.inspect(guest.wasm).unwrap()
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("cache_load");
    for guest in zkmesh_guests::all() {
        cached.inspect(guest.wasm).unwrap();
        let before = cached.stats().compiles;
        g.bench_function(guest.name, |b| {
            b.iter(|| {
                cached.forget_compiled();
                cached.inspect(guest.wasm).unwrap()
            })
        });
        assert_eq!(cached.stats().compiles, before, "a cache load compiled");
    }
    g.finish();
}

criterion_group!(benches, overhead, instantiate, compile_and_cache);
criterion_main!(benches);
