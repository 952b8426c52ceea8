//! The hostile-guest suite: one test per module in `guests/hostile`, each ending in its own
//! terminal state, billed for what it used, after which the same sandbox runs a normal task.

use super::*;

/// A sandbox as a worker has one, with a compile timeout short enough for `slow_compile`.
fn worker_sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_output_bytes: 1 << 16,
        compile_timeout: Duration::from_millis(400),
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn hostile_limits() -> Limits {
    let (memory_mib, fuel) = zkmesh_guests::HOSTILE_LIMITS;
    Limits {
        fuel,
        memory_bytes: u64::from(memory_mib) << 20,
        timeout: Duration::from_secs(20),
        cancel: None,
        log: None,
    }
}

/// Runs hostile `name` under `limits`, checks its state and bill, then that `sb` still runs
/// sha256 correctly.
fn ends_in(sb: &Sandbox, name: &str, limits: &Limits, exit: impl Fn(&Exit) -> bool) -> Outcome {
    let h = zkmesh_guests::hostile_by_name(name).unwrap();
    let out = sb.run(h.wasm, b"", limits, b"seed");
    assert!(
        exit(&out.exit),
        "{name}: got {:?}: {}",
        out.exit,
        out.message
    );
    assert!(!out.message.is_empty(), "{name}");
    assert!(
        out.fuel_used <= limits.fuel,
        "{name}: billed past its limit"
    );
    still_serves(sb);
    out
}

fn still_serves(sb: &Sandbox) {
    let sha = zkmesh_guests::get("sha256").unwrap();
    let ok = sb.run(sha.wasm, b"still here", &Limits::default(), b"seed");
    assert_eq!(ok.exit, Exit::Ok, "{}", ok.message);
    assert_eq!(
        ok.output,
        zkmesh_guests::reference_output("sha256", b"still here").unwrap()
    );
}

#[test]
fn infinite_loop_runs_out_of_fuel_and_is_billed_all_of_it() {
    let limits = hostile_limits();
    let out = ends_in(&worker_sandbox(), "infinite_loop", &limits, |e| {
        *e == Exit::OutOfFuel
    });
    assert_eq!(out.fuel_used, limits.fuel);
    assert!(out.cpu_time > Duration::ZERO);
}

#[test]
fn infinite_loop_with_all_the_fuel_in_the_world_is_stopped_by_the_wall_clock() {
    let limits = Limits {
        fuel: 1 << 60,
        timeout: Duration::from_millis(300),
        ..hostile_limits()
    };
    let started = Instant::now();
    let out = ends_in(&worker_sandbox(), "infinite_loop", &limits, |e| {
        *e == Exit::Timeout
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.message.contains("timeout of 0.3s"), "{}", out.message);
    // The count at an interrupt is stale, so a timeout is billed its whole limit.
    assert_eq!(out.fuel_used, limits.fuel);
    // It spun on a core (which the other tests share) until its timeout.
    assert!(
        out.cpu_time >= Duration::from_millis(50),
        "{:?}",
        out.cpu_time
    );
    assert!(out.cpu_time <= out.run_time + Duration::from_millis(20));
}

#[test]
fn memory_bomb_ends_out_of_memory() {
    let out = ends_in(&worker_sandbox(), "memory_bomb", &hostile_limits(), |e| {
        *e == Exit::OutOfMemory
    });
    assert!(out.message.contains("limit of 16 MiB"), "{}", out.message);
}

#[test]
fn table_bomb_ends_out_of_memory() {
    let out = ends_in(&worker_sandbox(), "table_bomb", &hostile_limits(), |e| {
        *e == Exit::OutOfMemory
    });
    assert!(
        out.message
            .contains("table past its limit of 262144 elements"),
        "{}",
        out.message
    );
}

#[test]
fn unbounded_recursion_exhausts_the_stack() {
    ends_in(
        &worker_sandbox(),
        "deep_recursion",
        &hostile_limits(),
        |e| *e == Exit::StackExhausted,
    );
}

#[test]
fn a_start_function_that_never_returns_is_stopped_by_fuel_or_the_clock() {
    let sb = worker_sandbox();
    let limits = hostile_limits();
    let out = ends_in(&sb, "start_never_returns", &limits, |e| {
        *e == Exit::OutOfFuel
    });
    assert_eq!(out.fuel_used, limits.fuel);
    let clock = Limits {
        fuel: 1 << 60,
        timeout: Duration::from_millis(300),
        ..limits
    };
    ends_in(&sb, "start_never_returns", &clock, |e| *e == Exit::Timeout);
}

#[test]
fn an_output_flood_ends_output_too_large_with_no_output() {
    let out = ends_in(&worker_sandbox(), "huge_output", &hostile_limits(), |e| {
        *e == Exit::OutputTooLarge
    });
    assert!(out.output.is_empty());
    assert!(out.message.contains("65536 bytes"), "{}", out.message);
}

#[test]
fn a_huge_data_segment_cannot_start_under_a_smaller_memory_limit() {
    let sb = worker_sandbox();
    let out = ends_in(&sb, "huge_data_segment", &hostile_limits(), |e| {
        *e == Exit::OutOfMemory
    });
    assert!(
        out.message
            .contains("needs 64 MiB of memory to start; the limit is 16 MiB"),
        "{}",
        out.message
    );
    assert_eq!(out.fuel_used, 0);
    // With room for it, it is a module like any other.
    let roomy = Limits {
        memory_bytes: 128 << 20,
        ..hostile_limits()
    };
    let h = zkmesh_guests::hostile_by_name("huge_data_segment").unwrap();
    assert_eq!(sb.run(h.wasm, b"", &roomy, b"").exit, Exit::Ok);
    // And a module-size cap below its 4 MiB refuses it before compiling.
    let capped = Sandbox::new(SandboxConfig {
        max_module_bytes: 1 << 20,
        ..SandboxConfig::default()
    })
    .unwrap();
    assert!(matches!(
        capped.inspect(h.wasm),
        Err(ModuleError::TooLarge { max, .. }) if max == 1 << 20
    ));
    assert_eq!(capped.stats().compiles, 0);
}

#[test]
fn a_truncated_module_is_invalid() {
    let out = ends_in(
        &worker_sandbox(),
        "truncated_module",
        &hostile_limits(),
        |e| matches!(e, Exit::InvalidModule(_)),
    );
    assert_eq!(out.fuel_used, 0);
    ends_in(
        &worker_sandbox(),
        "invalid_module",
        &hostile_limits(),
        |e| matches!(e, Exit::InvalidModule(_)),
    );
}

#[test]
fn an_import_no_host_provides_is_forbidden() {
    let out = ends_in(
        &worker_sandbox(),
        "forbidden_import",
        &hostile_limits(),
        |e| matches!(e, Exit::ForbiddenImport(_)),
    );
    assert!(
        out.message.contains("env.launch_missiles"),
        "{}",
        out.message
    );
    assert_eq!(out.fuel_used, 0);
}

#[test]
fn traps_end_as_traps_with_their_kind() {
    let sb = worker_sandbox();
    let out = ends_in(&sb, "trap", &hostile_limits(), |e| {
        matches!(e, Exit::Trap(_))
    });
    assert!(out.message.contains("unreachable"), "{}", out.message);
    let out = ends_in(&sb, "div_by_zero", &hostile_limits(), |e| {
        matches!(e, Exit::Trap(_))
    });
    assert!(out.message.contains("divide by zero"), "{}", out.message);
}

#[test]
fn a_module_slow_to_compile_is_abandoned_without_blocking_the_sandbox() {
    let sb = worker_sandbox();
    let h = zkmesh_guests::hostile_by_name("slow_compile").unwrap();
    let started = Instant::now();
    let out = sb.run(h.wasm, b"", &hostile_limits(), b"");
    let waited = started.elapsed();
    assert!(matches!(out.exit, Exit::InvalidModule(_)), "{:?}", out.exit);
    assert!(
        out.message.contains("did not compile within 400 ms"),
        "{}",
        out.message
    );
    assert!(waited < Duration::from_millis(1500), "waited {waited:?}");
    // While the abandoned compile grinds on in the background, normal work runs.
    still_serves(&sb);
    // The module is refused at once from now on: no second compile is started.
    let again = Instant::now();
    assert!(matches!(
        sb.inspect(h.wasm),
        Err(ModuleError::CompileTimeout { millis: 400 })
    ));
    assert!(again.elapsed() < Duration::from_millis(100));
    let stats = sb.stats();
    assert_eq!(stats.compile_timeouts, 1);
    assert_eq!(stats.compiles, 1, "only sha256 compiled: {stats:?}");
    // Given the time, it is a valid module that compiles (in seconds).
    let patient = Sandbox::new(SandboxConfig {
        compile_timeout: Duration::from_secs(300),
        pooling: false,
        ..SandboxConfig::default()
    })
    .unwrap();
    let compiled = Instant::now();
    patient.inspect(h.wasm).unwrap();
    assert!(
        compiled.elapsed() > Duration::from_millis(800),
        "{:?}",
        compiled.elapsed()
    );
}

/// A guest that spins in a call-free loop and then traps implicitly is billed within one fuel
/// slice of what it used (measured by the same loop ending in `unreachable`, which is exact).
#[test]
fn an_implicit_trap_after_a_call_free_loop_is_billed_within_one_fuel_slice() {
    let sb = worker_sandbox();
    let spin_then = |end: &str| {
        wat::parse_str(format!(
            r#"(module (memory (export "memory") 1)
              (func (export "run") (local $i i32)
                (loop $l
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br_if $l (i32.lt_u (local.get $i) (i32.const 3000000))))
                {end}))"#
        ))
        .unwrap()
    };
    let limits = hostile_limits();
    let exact = sb.run(&spin_then("unreachable"), b"", &limits, b"");
    let implicit = sb.run(
        &spin_then("(drop (i32.div_u (i32.const 1) (i32.load (i32.const 0))))"),
        b"",
        &limits,
        b"",
    );
    assert!(matches!(exact.exit, Exit::Trap(_)));
    assert!(
        implicit.message.contains("divide by zero"),
        "{}",
        implicit.message
    );
    assert!(exact.fuel_used > 3_000_000 * 5, "{}", exact.fuel_used);
    assert!(implicit.fuel_used <= exact.fuel_used);
    assert!(
        // One slice, plus the iteration in which the slice ran out.
        exact.fuel_used - implicit.fuel_used <= FUEL_SYNC + 8,
        "{} vs {}",
        implicit.fuel_used,
        exact.fuel_used
    );
}

#[test]
fn a_wasi_stdout_flood_that_ignores_errors_ends_output_too_large() {
    // A full stdout must not look like a closed pipe: the guest would see EIO and, ignoring it,
    // spin until its fuel ran out (or, stopping, end `ok` with its output cut short).
    let out = ends_in(&worker_sandbox(), "stdout_flood", &hostile_limits(), |e| {
        *e == Exit::OutputTooLarge
    });
    assert!(out.output.is_empty());
    assert!(out.message.contains("65536 bytes"), "{}", out.message);
    // It ended at the write that passed the limit, long before its fuel ran out.
    assert!(
        out.fuel_used < hostile_limits().fuel / 100,
        "{}",
        out.fuel_used
    );
}

#[test]
fn a_gc_bomb_is_refused_because_gc_is_not_enabled() {
    let out = ends_in(&worker_sandbox(), "gc_bomb", &hostile_limits(), |e| {
        matches!(e, Exit::InvalidModule(_))
    });
    assert_eq!(out.fuel_used, 0);
    // The same goes for exceptions, which also live on the GC heap.
    let throws = wat(r#"(module (tag $t) (memory (export "memory") 1)
        (func (export "run") (throw $t)))"#);
    assert!(matches!(
        worker_sandbox().inspect(&throws),
        Err(ModuleError::Invalid(_))
    ));
}

#[test]
fn stderr_past_its_cap_is_dropped_without_the_guest_noticing_and_streams_as_written() {
    let sb = Sandbox::new(SandboxConfig {
        max_stderr_bytes: 1000,
        ..SandboxConfig::default()
    })
    .unwrap();
    // Writes "0123456789" to stderr 300 times, checking every result, then "done" to stdout.
    let chatty = wat(r#"(module
        (import "wasi_snapshot_preview1" "fd_write"
          (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 100) "0123456789")
        (data (i32.const 200) "done")
        (func (export "_start") (local $i i32)
          (i32.store (i32.const 0) (i32.const 100))
          (i32.store (i32.const 4) (i32.const 10))
          (i32.store (i32.const 8) (i32.const 200))
          (i32.store (i32.const 12) (i32.const 4))
          (loop $l
            (if (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 16))
              (then unreachable))
            (if (i32.ne (i32.load (i32.const 16)) (i32.const 10)) (then unreachable))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 300))))
          (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))))"#);
    let streamed = Arc::new(Mutex::new(Vec::new()));
    let (sink, chunks) = (streamed.clone(), Arc::new(AtomicU64::new(0)));
    let counted = chunks.clone();
    let limits = Limits {
        log: Some(LogSink(Arc::new(move |bytes: &[u8]| {
            sink.lock().unwrap().extend_from_slice(bytes);
            counted.fetch_add(1, Ordering::Relaxed);
        }))),
        ..Limits::default()
    };
    let out = sb.run(&chatty, b"", &limits, b"");
    assert_eq!(out.exit, Exit::Ok, "{}", out.message);
    assert_eq!(out.output, b"done");
    assert_eq!(out.stderr, b"0123456789".repeat(100));
    assert_eq!(out.stderr_dropped, 2000);
    // The sink saw exactly what was kept, a write at a time.
    assert_eq!(*streamed.lock().unwrap(), out.stderr);
    assert_eq!(chunks.load(Ordering::Relaxed), 100);
}

#[test]
fn the_wall_clock_starts_when_the_guest_gets_a_slot() {
    // One slot, held by a loop for 1.5 s; a quick task queued behind it with a one-second
    // timeout must still run (its time limit is for running, not for waiting).
    let sb = Arc::new(
        Sandbox::new(SandboxConfig {
            slots: 1,
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let spin = zkmesh_guests::hostile_by_name("infinite_loop").unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    sb.inspect(sha.wasm).unwrap();
    let holder = {
        let sb = sb.clone();
        std::thread::spawn(move || {
            let limits = Limits {
                fuel: 1 << 60,
                timeout: Duration::from_millis(1500),
                ..Limits::default()
            };
            sb.run(spin.wasm, b"", &limits, b"").exit
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let quick = Limits {
        timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let started = Instant::now();
    let out = sb.run(sha.wasm, b"queued", &quick, b"");
    assert!(
        started.elapsed() > Duration::from_millis(1000),
        "did not wait for the slot"
    );
    assert_eq!(out.exit, Exit::Ok, "{}", out.message);
    assert_eq!(holder.join().unwrap(), Exit::Timeout);
}

#[test]
fn concurrent_tasks_for_one_module_share_one_compile() {
    let sb = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let primes = zkmesh_guests::get("primes").unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let sb = sb.clone();
            std::thread::spawn(move || sb.run(primes.wasm, b"100", &Limits::default(), b"").exit)
        })
        .collect();
    for r in runs {
        assert_eq!(r.join().unwrap(), Exit::Ok);
    }
    let stats = sb.stats();
    assert_eq!(stats.compiles, 1, "{stats:?}");
    assert_eq!(stats.memory_hits, 3, "{stats:?}");
}

#[test]
fn without_metering_nothing_is_billed() {
    let sb = Sandbox::new(SandboxConfig {
        consume_fuel: false,
        ..SandboxConfig::default()
    })
    .unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let out = sb.run(sha.wasm, b"x", &Limits::default(), b"");
    assert_eq!(out.exit, Exit::Ok);
    assert_eq!(out.fuel_used, 0);
}

#[test]
fn a_guest_that_sleeps_forever_is_stopped_like_any_loop() {
    let sb = worker_sandbox();
    // Each sleep is a host call that costs the guest a handful of fuel, so a smaller limit than
    // the other hostiles' keeps this test short in unoptimised builds.
    let limits = Limits {
        fuel: 5_000_000,
        ..hostile_limits()
    };
    let started = Instant::now();
    let out = ends_in(&sb, "sleeps_forever", &limits, |e| *e == Exit::OutOfFuel);
    assert_eq!(out.fuel_used, limits.fuel);
    // Far from 585 years (or even one hour).
    assert!(started.elapsed() < Duration::from_secs(120));
    let clock = Limits {
        fuel: 1 << 60,
        timeout: Duration::from_millis(300),
        ..limits
    };
    ends_in(&sb, "sleeps_forever", &clock, |e| *e == Exit::Timeout);
}

#[test]
fn a_sleep_returns_at_once_with_its_subscriptions_ready() {
    // Sleeps 2^64-1 ns with two subscriptions (a clock and stdin), then writes the event count
    // and each event's userdata, error and type to stdout.
    let wasm = wat(r#"(module
        (import "wasi_snapshot_preview1" "poll_oneoff"
          (func $poll (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write"
          (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "_start")
          (i64.store (i32.const 0) (i64.const 0x1111))
          (i32.store (i32.const 16) (i32.const 1))
          (i64.store (i32.const 24) (i64.const -1))
          (i64.store (i32.const 48) (i64.const 0x2222))
          (i32.store8 (i32.const 56) (i32.const 1))
          (if (call $poll (i32.const 0) (i32.const 100) (i32.const 2) (i32.const 96))
            (then unreachable))
          ;; iovec at 200: the count (4 bytes at 96) then the two events (64 bytes at 100).
          (i32.store (i32.const 200) (i32.const 96))
          (i32.store (i32.const 204) (i32.const 68))
          (drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 208)))))"#);
    let started = Instant::now();
    let out = sandbox().run(&wasm, b"", &Limits::default(), b"");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.exit, Exit::Ok, "{}", out.message);
    let mut expected = 2u32.to_le_bytes().to_vec();
    for (userdata, tag) in [(0x1111u64, 0u8), (0x2222, 1)] {
        let mut event = [0u8; 32];
        event[..8].copy_from_slice(&userdata.to_le_bytes());
        event[10] = tag;
        expected.extend_from_slice(&event);
    }
    assert_eq!(out.output, expected);
    // No subscriptions is an error (EINVAL), not a hang.
    let none = wat(r#"(module
        (import "wasi_snapshot_preview1" "poll_oneoff"
          (func $poll (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "_start")
          (if (i32.ne (call $poll (i32.const 0) (i32.const 100) (i32.const 0) (i32.const 96))
                      (i32.const 28))
            (then unreachable))))"#);
    assert_eq!(
        sandbox().run(&none, b"", &Limits::default(), b"").exit,
        Exit::Ok
    );
}

#[test]
fn with_every_compiler_busy_a_new_module_is_turned_away_within_the_compile_timeout() {
    // One compiler thread, held by an abandoned compile for seconds.
    let sb = Sandbox::new(SandboxConfig {
        slots: 1,
        compile_timeout: Duration::from_millis(300),
        pooling: false,
        ..SandboxConfig::default()
    })
    .unwrap();
    let slow = zkmesh_guests::hostile_by_name("slow_compile").unwrap();
    let err = sb.inspect(slow.wasm).unwrap_err();
    assert!(matches!(err, ModuleError::CompileTimeout { millis: 300 }));
    assert!(err.is_node_condition(), "another node may manage it");
    let waited = Instant::now();
    let busy = sb.inspect(&wat(ECHO)).unwrap_err();
    assert!(
        matches!(busy, ModuleError::CompilersBusy { millis: 300 }),
        "{busy}"
    );
    assert!(busy.is_node_condition());
    assert!(
        waited.elapsed() < Duration::from_secs(2),
        "turned away after {:?}",
        waited.elapsed()
    );
    // Not held against the module: once the compiler is free, it compiles.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sb.inspect(&wat(ECHO)) {
            Ok(_) => break,
            Err(ModuleError::CompilersBusy { .. }) if Instant::now() < deadline => {}
            Err(e) => panic!("{e}"),
        }
    }
    // A module that is simply invalid is no node condition.
    assert!(!sb.inspect(b"\0asm").unwrap_err().is_node_condition());
}

/// A WASI guest that fills `len` bytes at address 0 with `random_get` and writes them to
/// stdout (exiting with the errno if the call fails).
fn random_guest(len: u32, at: u32) -> Vec<u8> {
    wat(&format!(
        r#"(module
        (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write"
          (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 2)
        (func (export "_start") (local $errno i32)
          (local.set $errno (call $random (i32.const {at}) (i32.const {len})))
          (if (local.get $errno) (then (call $exit (local.get $errno))))
          (i32.store (i32.const 100000) (i32.const {at}))
          (i32.store (i32.const 100004) (i32.const {len}))
          (drop (call $fd_write (i32.const 1) (i32.const 100000) (i32.const 1) (i32.const 100008)))))"#
    ))
}

#[test]
fn random_get_is_the_tasks_own_stream_billed_by_the_byte() {
    let sb = sandbox();
    let limits = Limits::default();
    let out = sb.run(&random_guest(20_000, 0), b"", &limits, b"task-1");
    assert_eq!(out.exit, Exit::Ok, "{}", out.message);
    // SHA-256 in counter mode under SHA-256("zkmesh.wasi.random\0" || seed).
    let key = Sha256::digest([b"zkmesh.wasi.random\0".as_slice(), b"task-1"].concat());
    let expected: Vec<u8> = (0u64..)
        .flat_map(|i| Sha256::digest([key.as_slice(), &i.to_be_bytes()].concat()))
        .take(20_000)
        .collect();
    assert_eq!(out.output, expected);
    assert_ne!(
        out.output[..4096],
        out.output[4096..8192],
        "the stream does not cycle"
    );
    // The same on another node; another task's differs.
    let again = Sandbox::new(SandboxConfig::default()).unwrap().run(
        &random_guest(20_000, 0),
        b"",
        &limits,
        b"task-1",
    );
    assert_eq!(
        (again.output, again.fuel_used),
        (out.output.clone(), out.fuel_used)
    );
    let other = sb.run(&random_guest(20_000, 0), b"", &limits, b"task-2");
    assert_ne!(other.output, out.output);
    // A byte costs four units of fuel to make and one to write to stdout: 10,000 more bytes,
    // 50,000 more fuel.
    let fewer = sb.run(&random_guest(10_000, 0), b"", &limits, b"task-1");
    assert_eq!(out.fuel_used - fewer.fuel_used, 50_000);
    // More bytes than the fuel left: out of fuel, billed all of it, and no host work done.
    let tight = Limits {
        fuel: 5_000,
        ..Limits::default()
    };
    let broke = sb.run(&random_guest(2_000, 0), b"", &tight, b"task-1");
    assert_eq!(broke.exit, Exit::OutOfFuel, "{}", broke.message);
    assert_eq!(broke.fuel_used, 5_000);
    // A buffer past the end of memory is EFAULT (21), not a host allocation.
    let fault = sb.run(&random_guest(200_000, 0), b"", &limits, b"task-1");
    assert_eq!(fault.exit, Exit::ExitCode(21), "{}", fault.message);
    let wrap = sb.run(&random_guest(16, u32::MAX - 7), b"", &limits, b"task-1");
    assert_eq!(wrap.exit, Exit::ExitCode(21), "{}", wrap.message);
}

#[test]
fn a_huge_random_get_is_stopped_by_the_wall_clock_inside_the_call() {
    // One call for 1 GiB: seconds of hashing on the host, where the epoch deadline cannot reach.
    let wasm = wat(r#"(module
        (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
        (memory (export "memory") 16384)
        (func (export "_start") (drop (call $random (i32.const 0) (i32.const 0x40000000)))))"#);
    let limits = Limits {
        fuel: 1 << 40,
        memory_bytes: 2 << 30,
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let sb = sandbox();
    let started = Instant::now();
    let out = sb.run(&wasm, b"", &limits, b"seed");
    assert_eq!(out.exit, Exit::Timeout, "{}", out.message);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "stopped after {:?}",
        started.elapsed()
    );
    still_serves(&sb);
}

/// A WASI guest that writes `times` iovec lists to stderr, each of `iovecs` entries of which the
/// first covers `len` bytes and the rest are empty, then reads its stdin into memory.
fn stdio_guest(times: u32, iovecs: u32, len: u32) -> Vec<u8> {
    wat(&format!(
        r#"(module
        (import "wasi_snapshot_preview1" "fd_write"
          (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_read"
          (func $fd_read (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 200)
        (func (export "_start") (local $n i32)
          ;; iovec 0 at 0: (1024, len); the others are (0, 0) already.
          (i32.store (i32.const 0) (i32.const 1024))
          (i32.store (i32.const 4) (i32.const {len}))
          (local.set $n (i32.const {times}))
          (block $done (loop $again
            (br_if $done (i32.eqz (local.get $n)))
            (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const {iovecs}) (i32.const 512)))
            (local.set $n (i32.sub (local.get $n) (i32.const 1)))
            (br $again)))
          ;; One read of stdin into 65536.. through the iovec at 600.
          (i32.store (i32.const 600) (i32.const 65536))
          (i32.store (i32.const 604) (i32.const 1000000))
          (drop (call $fd_read (i32.const 0) (i32.const 600) (i32.const 1) (i32.const 700)))))"#
    ))
}

/// WASI stdio is billed by the byte and by the iovec, before the work: writing 64 KiB to stderr
/// ten more times costs ten times 64 Ki more fuel (stderr past its cap is dropped, but the copy
/// was asked for), a list of 100,000 empty iovecs costs 100,000, and reading stdin costs its
/// bytes.
#[test]
fn wasi_stdio_is_billed_by_the_byte_and_the_iovec() {
    let sb = sandbox();
    let limits = Limits::default();
    let run = |times, iovecs, len, input: &[u8]| {
        let out = sb.run(&stdio_guest(times, iovecs, len), input, &limits, b"s");
        assert_eq!(out.exit, Exit::Ok, "{}", out.message);
        out.fuel_used
    };
    let once = run(1, 1, 64 << 10, b"");
    let eleven = run(11, 1, 64 << 10, b"");
    let per_write = (eleven - once) / 10;
    assert!(
        (64 << 10..(64 << 10) + 64).contains(&per_write),
        "a 64 KiB write cost {per_write} units"
    );
    let walk = run(1, 1001, 0, b"") - run(1, 1, 0, b"");
    assert_eq!(walk, 1000, "an empty iovec costs a unit");
    // More iovecs than IOV_MAX: refused (EINVAL) before the list is read, for a unit or two.
    let (long, short) = (run(1, 100_000, 0, b""), run(1, 1, 0, b""));
    assert!(
        long <= short,
        "a refused list cost {long}, one iovec {short}"
    );
    let read = run(1, 1, 0, &[7u8; 50_000]) - run(1, 1, 0, b"");
    assert_eq!(read, 50_000);
    // Too little fuel for the write: out of fuel, billed all of it, nothing written.
    let tight = Limits {
        fuel: 10_000,
        ..Limits::default()
    };
    let out = sb.run(&stdio_guest(1, 1, 64 << 10), b"", &tight, b"s");
    assert_eq!((out.exit, out.fuel_used), (Exit::OutOfFuel, 10_000));
    assert!(out.stderr.is_empty());
}
