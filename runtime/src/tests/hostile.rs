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
