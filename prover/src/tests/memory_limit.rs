//! A task's memory limit is part of the program a proof is about: the zkVM computes what the
//! mesh's runtime does under that limit (a grow past the limit or past the declared maximum
//! returns -1; a trap after a grow the limit refused ends out of memory), checked against
//! wasmtime with the same limit, and a run whose memory could outgrow the zkVM under its limit
//! is refused, not proved with another result.

use crate::isa::{MAX_PAGES, PAGE, status};
use crate::lower::{LowerError, lower_limited};
use crate::trace::{Exit, RunLimits, run};
use crate::zkvm::{Ending, ending, ending_of_exit};
use zkmesh_runtime::{Exit as WExit, Limits, Sandbox, SandboxConfig};

/// A module with one memory of 1 page (and maximum `max`) whose `run` does `body`, then writes
/// the byte at address 0 as its output.
fn module(max: Option<u64>, body: &str) -> Vec<u8> {
    let max = max.map_or(String::new(), |m| m.to_string());
    wat::parse_str(format!(
        r#"(module
          (import "zkmesh" "write_output" (func $out (param i32 i32)))
          (memory (export "memory") 1 {max})
          (func (export "run")
            {body}
            (call $out (i32.const 0) (i32.const 1))))"#
    ))
    .unwrap()
}

/// Grows the memory by `delta` pages; writes "B" if the grow succeeded, "A" if it returned -1.
fn grower(max: Option<u64>, delta: u32) -> Vec<u8> {
    module(
        max,
        &format!(
            "(i32.store8 (i32.const 0) (select (i32.const 65) (i32.const 66)
               (i32.eq (memory.grow (i32.const {delta})) (i32.const -1))))"
        ),
    )
}

/// Grows the memory by `delta` pages and traps if that returned -1 (as an allocator aborts);
/// writes "B" otherwise.
fn giver_up(max: Option<u64>, delta: u32) -> Vec<u8> {
    module(
        max,
        &format!(
            "(if (i32.eq (memory.grow (i32.const {delta})) (i32.const -1)) (then unreachable))
             (i32.store8 (i32.const 0) (i32.const 66))"
        ),
    )
}

/// Runs `wasm` in wasmtime and in the zkVM under a memory limit of `mib`; both must end the
/// same way with the same output, which is returned with the ending.
fn both(wasm: &[u8], mib: u64) -> (Ending, Vec<u8>) {
    let limits = Limits {
        memory_bytes: mib << 20,
        ..Limits::default()
    };
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let w = sandbox.run(wasm, b"", &limits, b"seed");
    let program = lower_limited(wasm, mib << 20).unwrap();
    let t = run(&program, b"", RunLimits::default());
    let Exit::Halted(s) = t.exit else {
        panic!("the zkVM did not halt: {:?}", t.exit)
    };
    let wasmtime_ending = match &w.exit {
        WExit::Ok => 1,
        WExit::Trap(_) => 2,
        WExit::OutOfMemory => 4,
        other => panic!("wasmtime: {other:?}"),
    };
    assert_eq!(
        ending_of_exit(wasmtime_ending),
        Some(ending(s)),
        "wasmtime {:?}, zkVM status {s}",
        w.exit
    );
    if ending(s) == Ending::Returned {
        assert_eq!(t.output, w.output);
    }
    // And the circuit holds for the run, out-of-memory halts included.
    let c = crate::circuit::ZkvmCircuit::new(super::circuit::TINY, &program, b"", &t).unwrap();
    assert_eq!(super::circuit::violation(c), None);
    (ending(s), t.output)
}

#[test]
fn memory_grows_as_the_runtime_grows_it_under_the_task_s_limit() {
    // Within the limit and the maximum: grows.
    assert_eq!(
        both(&grower(None, 100), 256),
        (Ending::Returned, b"B".to_vec())
    );
    // Past the declared maximum, within the limit: -1.
    assert_eq!(
        both(&grower(Some(50), 100), 256),
        (Ending::Returned, b"A".to_vec())
    );
    // Past the limit (256 MiB: 4096 pages), within the maximum: -1 too, as the specification
    // says for a failed grow, in the runtime and in the zkVM alike.
    let refused = (Ending::Returned, b"A".to_vec());
    assert_eq!(both(&grower(Some(20000), 5000), 256), refused);
    // Past the limit and the maximum, past 2^16 pages, under the largest limit: -1.
    assert_eq!(both(&grower(Some(50), 5000), 256), refused);
    assert_eq!(both(&grower(None, 70000), 256), refused);
    assert_eq!(both(&grower(Some(100), 70000), 4096), refused);
    // A larger limit with a maximum the zkVM holds: grows past the default limit.
    assert_eq!(
        both(&grower(Some(10000), 5000), 2048),
        (Ending::Returned, b"B".to_vec())
    );
}

#[test]
fn a_trap_after_the_limit_refused_a_grow_ends_out_of_memory() {
    // The limit refused the grow (past it, with or without the maximum): out of memory.
    for (max, delta) in [(Some(20000), 5000), (Some(50), 5000), (None, 70000)] {
        assert_eq!(both(&giver_up(max, delta), 256).0, Ending::OutOfMemory);
    }
    // Only the declared maximum refused it: an ordinary trap.
    assert_eq!(both(&giver_up(Some(50), 100), 256).0, Ending::Trapped);
    // A grow that succeeds: no trap at all.
    assert_eq!(
        both(&giver_up(None, 100), 256),
        (Ending::Returned, b"B".to_vec())
    );
}

#[test]
fn a_run_whose_memory_could_outgrow_the_zkvm_under_its_limit_is_refused() {
    // 2 GiB lets wasmtime grow to 32768 pages, past the zkVM's 16383: the zkVM would fail a
    // grow the runtime allows ("A" where the runtime writes "B"), so nothing is proved.
    for max in [None, Some(65536), Some(MAX_PAGES + 1)] {
        match lower_limited(&grower(max, 16384), 2048 << 20) {
            Err(e @ LowerError::Unprovable { .. }) => {
                assert!(e.to_string().contains("at most"), "{e}")
            }
            other => panic!("max {max:?}: {other:?}"),
        }
    }
    // The same module under 1023 MiB, or with a maximum the zkVM holds, is provable.
    assert!(lower_limited(&grower(Some(65536), 1), 1023 << 20).is_ok());
    assert!(lower_limited(&grower(Some(MAX_PAGES), 1), 4096 << 20).is_ok());
    // An initial memory over the limit: the runtime cannot even start the run.
    match lower_limited(&grower(None, 1), PAGE - 1) {
        Err(e @ LowerError::Unprovable { .. }) => {
            assert!(e.to_string().contains("initial memory"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_halt_status_has_the_runtime_s_ending() {
    assert_eq!(ending(status::OK), Ending::Returned);
    assert_eq!(ending(status::OUT_OF_MEMORY), Ending::OutOfMemory);
    for s in [
        status::UNREACHABLE,
        status::INDIRECT_CALL,
        status::OUT_OF_BOUNDS,
        status::DIVIDE_BY_ZERO,
        status::INTEGER_OVERFLOW,
    ] {
        assert_eq!(ending(s), Ending::Trapped);
    }
}

/// A module that exports `main: () -> ()` (so the runtime accepts it) and `run: () -> i32`
/// (which the runtime picks, calls as `() -> ()`, and traps on): the zkVM refuses it rather than
/// prove a run that returned.
#[test]
fn an_entry_that_returns_results_is_refused() {
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "run") (result i32) (i32.const 7))
             (func (export "main")))"#,
    )
    .unwrap();
    let w = Sandbox::new(SandboxConfig::default()).unwrap().run(
        &wasm,
        b"",
        &Limits::default(),
        b"seed",
    );
    assert!(matches!(w.exit, WExit::Trap(_)), "{:?}", w.exit);
    match lower_limited(&wasm, 256 << 20) {
        Err(e @ LowerError::Unprovable { .. }) => {
            assert!(e.to_string().contains("returns results"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}
