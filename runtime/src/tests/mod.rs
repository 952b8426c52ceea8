//! Sandbox limits and ABIs, on small hand-written modules and on the guests in guests/.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

use super::*;
use crate::engine::engine_config;

mod cache;
mod determinism;
mod hostile;

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_output_bytes: 1 << 16,
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

const ECHO: &str = r#"(module
  (import "zkmesh" "input_len" (func $len (result i32)))
  (import "zkmesh" "read_input" (func $read (param i32 i32 i32) (result i32)))
  (import "zkmesh" "write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (drop (call $read (i32.const 0) (i32.const 0) (call $len)))
    (call $out (i32.const 0) (call $len))))"#;

#[test]
fn echo_and_fuel_are_deterministic() {
    let sb = sandbox();
    let limits = Limits::default();
    let a = sb.run(&wat(ECHO), b"hello", &limits, b"s");
    let b = sb.run(&wat(ECHO), b"hello", &limits, b"s");
    assert_eq!(a.exit, Exit::Ok);
    assert_eq!(a.output, b"hello");
    assert!(a.fuel_used > 0);
    assert_eq!(a.fuel_used, b.fuel_used);
    let other = Sandbox::new(SandboxConfig::default()).unwrap();
    assert_eq!(
        other.run(&wat(ECHO), b"hello", &limits, b"s").fuel_used,
        a.fuel_used
    );
}

/// Reads its whole input `n` times (n = the input's first byte) and writes nothing.
const REREAD: &str = r#"(module
  (import "zkmesh" "input_len" (func $len (result i32)))
  (import "zkmesh" "read_input" (func $read (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (local $n i32)
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1)))
    (local.set $n (i32.load8_u (i32.const 0)))
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (drop (call $read (i32.const 0) (i32.const 0) (call $len)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $again)))))"#;

/// The host's copying is billed by the byte: a guest that reads its 32 KiB input ten more
/// times pays ten times 32 Ki more fuel (not ten calls' worth), and output is billed the same.
#[test]
fn input_and_output_bytes_are_billed() {
    let sb = sandbox();
    let limits = Limits::default();
    let input = |times: u8| {
        let mut bytes = vec![0u8; 32 << 10];
        bytes[0] = times;
        bytes
    };
    let once = sb.run(&wat(REREAD), &input(1), &limits, b"s");
    let eleven = sb.run(&wat(REREAD), &input(11), &limits, b"s");
    assert_eq!(
        (once.exit, eleven.exit),
        (Exit::Ok, Exit::Ok),
        "{}",
        once.message
    );
    let per_pass = (eleven.fuel_used - once.fuel_used) / 10;
    assert!(
        (32 << 10..(32 << 10) + 64).contains(&per_pass),
        "a pass over 32 KiB cost {per_pass} units"
    );
    let short = sb.run(&wat(ECHO), b"a", &limits, b"s");
    let long = sb.run(&wat(ECHO), &[b'a'; 1001], &limits, b"s");
    assert_eq!(
        long.fuel_used - short.fuel_used,
        2 * 1000,
        "read and written"
    );
    // Too little fuel for the copy: out of fuel, billed all of it.
    let tight = Limits {
        fuel: 20_000,
        ..Limits::default()
    };
    let out = sb.run(&wat(REREAD), &input(1), &tight, b"s");
    assert_eq!((out.exit, out.fuel_used), (Exit::OutOfFuel, 20_000));
}

#[test]
fn limits_end_in_their_own_states() {
    let sb = sandbox();
    let spin = wat(r#"(module (memory (export "memory") 1) (func (export "run") (loop (br 0))))"#);
    let limits = Limits {
        fuel: 1_000_000,
        ..Limits::default()
    };
    let out = sb.run(&spin, b"", &limits, b"");
    assert_eq!(out.exit, Exit::OutOfFuel);
    assert_eq!(out.fuel_used, 1_000_000);

    let timed = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    assert_eq!(sb.run(&spin, b"", &timed, b"").exit, Exit::Timeout);

    // A cancelled run stops at the next epoch tick.
    let flag = Arc::new(AtomicBool::new(false));
    let cancellable = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_secs(60),
        cancel: Some(flag.clone()),
        ..Limits::default()
    };
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    assert_eq!(
        sb.run(&spin, b"", &cancellable, b"").exit,
        Exit::Trap("cancelled".into())
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    setter.join().unwrap();

    // memory.grow past the limit returns -1 (the specification's failure), never traps by
    // itself: a guest that ignores it spins until its fuel runs out, one that handles it goes
    // on, and one that then traps ends out_of_memory.
    let small = Limits {
        memory_bytes: 4 << 20,
        fuel: 50_000_000,
        ..Limits::default()
    };
    let ignores = wat(r#"(module (memory (export "memory") 1)
        (func (export "run") (loop (drop (memory.grow (i32.const 1))) (br 0))))"#);
    assert_eq!(sb.run(&ignores, b"", &small, b"").exit, Exit::OutOfFuel);
    let handles = wat(r#"(module
        (import "zkmesh" "write_output" (func $out (param i32 i32)))
        (memory (export "memory") 1)
        (func (export "run")
          (i32.store8 (i32.const 0) (i32.add (i32.const 48)
            (i32.eq (memory.grow (i32.const 64)) (i32.const -1))))
          (i32.store8 (i32.const 1) (i32.add (i32.const 48)
            (i32.eq (memory.grow (i32.const 1)) (i32.const -1))))
          (call $out (i32.const 0) (i32.const 2))))"#);
    // 64 more pages is past 4 MiB (64 pages in all): -1; one more page fits: its old size.
    let out = sb.run(&handles, b"", &small, b"");
    assert_eq!((out.exit, out.output), (Exit::Ok, b"10".to_vec()));
    let gives_up = wat(r#"(module (memory (export "memory") 1)
        (func (export "run")
          (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))))"#);
    let out = sb.run(&gives_up, b"", &small, b"");
    assert_eq!(out.exit, Exit::OutOfMemory);
    assert!(out.message.contains("limit of 4 MiB"), "{}", out.message);

    let recurse = wat(r#"(module (memory (export "memory") 1)
        (func $f (call $f)) (func (export "run") (call $f)))"#);
    assert_eq!(
        sb.run(&recurse, b"", &Limits::default(), b"").exit,
        Exit::StackExhausted
    );

    let trap = wat(r#"(module (memory (export "memory") 1) (func (export "run") unreachable))"#);
    assert!(
        matches!(sb.run(&trap, b"", &Limits::default(), b"").exit, Exit::Trap(m) if m.contains("unreachable"))
    );

    let flood = wat(r#"(module
        (import "zkmesh" "write_output" (func $out (param i32 i32)))
        (memory (export "memory") 1)
        (func (export "run") (loop (call $out (i32.const 0) (i32.const 65536)) (br 0))))"#);
    let out = sb.run(&flood, b"", &Limits::default(), b"");
    assert_eq!(out.exit, Exit::OutputTooLarge);
    assert!(out.output.is_empty());

    // A host function's error shows its cause, not wasmtime's backtrace header.
    let oob = wat(r#"(module
        (import "zkmesh" "write_output" (func $out (param i32 i32)))
        (memory (export "memory") 1)
        (func (export "run") (call $out (i32.const 65530) (i32.const 100))))"#);
    let out = sb.run(&oob, b"", &Limits::default(), b"");
    assert_eq!(
        out.exit,
        Exit::Trap("write_output: source out of bounds".into()),
        "{}",
        out.message
    );

    // The sandbox still runs a normal task after all of that.
    assert_eq!(
        sb.run(&wat(ECHO), b"ok", &Limits::default(), b"").output,
        b"ok"
    );
}

#[test]
fn imports_outside_the_abis_are_refused() {
    let sb = sandbox();
    let bad = wat(
        r#"(module (import "env" "launch" (func)) (memory (export "memory") 1)
        (func (export "run") (call 0)))"#,
    );
    assert!(
        matches!(sb.inspect(&bad), Err(ModuleError::ForbiddenImport { import, .. }) if import == "env.launch")
    );
    let wrong_type = wat(r#"(module (import "zkmesh" "input_len" (func (param i32)))
        (memory (export "memory") 1) (func (export "run")))"#);
    assert!(matches!(
        sb.inspect(&wrong_type),
        Err(ModuleError::ForbiddenImport { .. })
    ));
    let no_entry = wat(r#"(module (memory (export "memory") 1))"#);
    assert!(matches!(
        sb.inspect(&no_entry),
        Err(ModuleError::NoEntry(_))
    ));
    assert!(matches!(
        sb.inspect(b"\0asm\x01\0\0\0\x01\xff"),
        Err(ModuleError::Invalid(_))
    ));
    let out = sb.run(&bad, b"", &Limits::default(), b"");
    assert_eq!(out.exit.kind(), "forbidden_import");
}

#[test]
fn every_guest_matches_its_native_reference() {
    let sb = sandbox();
    for guest in zkmesh_guests::all() {
        let inspection = sb.inspect(guest.wasm).unwrap();
        let expected_abi = match guest.abi {
            zkmesh_guests::GuestAbi::Zkmesh => Abi::Zkmesh,
            zkmesh_guests::GuestAbi::Wasi => Abi::Wasi,
        };
        assert_eq!(inspection.abi, expected_abi, "{}", guest.name);
        let out = sb.run(guest.wasm, guest.sample_input, &Limits::default(), b"seed");
        assert_eq!(out.exit, Exit::Ok, "{}: {}", guest.name, out.message);
        let expected = zkmesh_guests::reference_output(guest.name, guest.sample_input).unwrap();
        assert_eq!(out.output, expected, "{}", guest.name);
    }
}

/// Reference types that need the GC proposal (an `externref` in a table or a block result) are
/// refused as an unsupported feature, named, not as an invalid module; a `funcref` in a
/// `select` needs no GC and runs.
#[test]
fn gc_reference_types_are_refused_as_unsupported_and_funcref_runs() {
    let sb = sandbox();
    for text in [
        r#"(module (memory (export "memory") 1) (table 1 externref) (func (export "run")))"#,
        r#"(module (memory (export "memory") 1)
            (func (export "run") (drop (block (result externref) (ref.null extern)))))"#,
    ] {
        let err = sb.inspect(&wat(text)).unwrap_err();
        assert!(
            matches!(&err, ModuleError::Unsupported { feature, .. } if feature.contains("externref")),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.starts_with("unsupported feature"), "{message}");
        assert!(!message.contains("invalid"), "{message}");
    }
    let funcref = wat(
        r#"(module (memory (export "memory") 1) (table 1 funcref) (func $f)
        (elem declare func $f)
        (func (export "run")
          (drop (select (result funcref) (ref.func $f) (ref.null func) (i32.const 1)))))"#,
    );
    let out = sb.run(&funcref, b"", &Limits::default(), b"");
    assert_eq!(out.exit, Exit::Ok, "{}", out.message);
}
