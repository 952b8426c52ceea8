//! Two workers running the same task agree on the output bytes and the fuel used, for every
//! guest in guests/. The two sandboxes differ in everything that must not matter: the instance
//! allocator (pooled or on demand), where the compiled code came from (a fresh compile or the
//! disk cache), and the number of slots.

use super::*;

#[test]
fn every_guest_gives_the_same_output_and_fuel_on_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    // Worker A: pooled, with a disk cache that it has filled and then loads from.
    let warm = Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap();
    for guest in zkmesh_guests::all() {
        warm.inspect(guest.wasm).unwrap();
    }
    drop(warm);
    let a = Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        slots: 4,
        ..SandboxConfig::default()
    })
    .unwrap();
    // Worker B: on-demand allocation, compiling everything itself.
    let b = Sandbox::new(SandboxConfig {
        pooling: false,
        slots: 1,
        ..SandboxConfig::default()
    })
    .unwrap();

    let extra: &[(&str, &[u8])] = &[
        ("sha256", &[0xa5; 100_000]),
        (
            "sort",
            b"9 -3 7 7 0 -9223372036854775808 9223372036854775807",
        ),
        ("sort", b"1 2 x"),
        ("collatz", b"20000"),
        ("primes", b"1000000"),
        ("wordcount", b"  many   words\n\nand lines  \n"),
        ("bytesum", b"the quick brown fox"),
    ];
    let mut cases: Vec<(&str, &[u8])> = zkmesh_guests::all()
        .iter()
        .map(|g| (g.name, g.sample_input))
        .collect();
    cases.extend_from_slice(extra);
    let limits = Limits {
        timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    for (name, input) in cases {
        let wasm = zkmesh_guests::get(name).unwrap().wasm;
        let x = a.run(wasm, input, &limits, b"task-1");
        let y = b.run(wasm, input, &limits, b"task-1");
        assert_eq!(x.exit, y.exit, "{name}");
        assert_eq!(x.output, y.output, "{name}: output differs");
        assert_eq!(x.fuel_used, y.fuel_used, "{name}: fuel differs");
        assert!(x.fuel_used > 0, "{name}");
        if let Some(expected) = zkmesh_guests::reference_output(name, input) {
            assert_eq!(x.exit, Exit::Ok, "{name}: {}", x.message);
            assert_eq!(x.output, expected, "{name}");
        } else {
            assert!(matches!(x.exit, Exit::Trap(_)), "{name}: {:?}", x.exit);
        }
    }
    // The benchmark guest, against the same kernels compiled natively (and its SHA-256 against
    // the library's, which is written independently).
    let big = [b"sha256 ".as_slice(), &[7u8; 1 << 16]].concat();
    let kernel_cases: [&[u8]; 5] = [
        b"sha256 abc",
        &big,
        b"sort 5000",
        b"sieve 100000",
        b"nope 1",
    ];
    for input in kernel_cases {
        let x = a.run(zkmesh_guests::KERNELS_WASM, input, &limits, b"");
        let y = b.run(zkmesh_guests::KERNELS_WASM, input, &limits, b"");
        assert_eq!(
            (&x.exit, &x.output, x.fuel_used),
            (&y.exit, &y.output, y.fuel_used)
        );
        match zkmesh_guests::kernels_output(input) {
            Some(expected) => assert_eq!(x.output, expected, "{}", x.message),
            None => assert!(matches!(x.exit, Exit::Trap(_)), "{:?}", x.exit),
        }
    }
    assert_eq!(
        a.run(zkmesh_guests::KERNELS_WASM, b"sha256 abc", &limits, b"")
            .output,
        zkmesh_guests::reference_output("sha256", b"abc").unwrap()
    );
    assert_eq!(
        a.run(zkmesh_guests::KERNELS_WASM, b"sieve 100000", &limits, b"")
            .output,
        zkmesh_guests::reference_output("primes", b"100000")
            .unwrap()
            .trim_ascii_end()
    );

    assert_eq!(
        a.stats().compiles,
        1,
        "worker A loaded every guest but kernels from disk"
    );
    assert_eq!(a.stats().disk_hits, zkmesh_guests::all().len() as u64);
    assert_eq!(b.stats().disk_hits, 0);
}

/// Machine code does not depend on the host's CPU: an engine that detects nothing about its host
/// (a cross-compiling one for x86-64 Linux, all optional features off) and then takes the
/// sandbox's settings is the same engine as the sandbox's own on this host, whose CPU may have
/// AVX2, BMI2 and more. So stack frames, and where recursion exhausts the stack, are the same on
/// every node.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn compiled_code_does_not_depend_on_the_hosts_cpu_features() {
    let config = SandboxConfig::default();
    let native = Sandbox::new(config.clone()).unwrap();
    let mut wc = engine_config(&config);
    wc.target("x86_64-unknown-linux-gnu").unwrap();
    let featureless = Engine::new(&wc).unwrap();
    assert_eq!(
        crate::cache::engine_hash(&featureless),
        crate::cache::engine_hash(&native.engine)
    );
}
