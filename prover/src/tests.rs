//! Differential tests: the tracing interpreter against wasmtime.

use crate::lower::lower;
use crate::trace::{Exit, RunLimits, run};
use zkmesh_runtime::{Exit as WExit, Limits, Sandbox, SandboxConfig};

fn wasmtime_run(wasm: &[u8], input: &[u8]) -> (bool, Vec<u8>) {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let out = sandbox.run(wasm, input, &Limits::default(), b"seed");
    (out.exit == WExit::Ok, out.output)
}

fn check(wasm: &[u8], input: &[u8]) -> crate::trace::Trace {
    let program = lower(wasm).unwrap_or_else(|e| panic!("lowering: {e}"));
    let trace = run(&program, input, RunLimits::default());
    let (ok, output) = wasmtime_run(wasm, input);
    assert_ne!(trace.exit, Exit::StepLimit);
    assert_eq!(
        trace.exit == Exit::Halted(0),
        ok,
        "exit differs: zkvm {:?}, wasmtime ok={ok}",
        trace.exit
    );
    if ok {
        assert_eq!(
            String::from_utf8_lossy(&trace.output),
            String::from_utf8_lossy(&output)
        );
    }
    trace
}

#[test]
fn guests_match_wasmtime() {
    for guest in zkmesh_guests::all() {
        if guest.abi != zkmesh_guests::GuestAbi::Zkmesh {
            let err = lower(guest.wasm).unwrap_err();
            assert!(err.to_string().contains("wasi"), "{err}");
            continue;
        }
        for input in [guest.sample_input, b"", b"17", b"5 3 9 -2 0"] {
            let t = check(guest.wasm, input);
            eprintln!(
                "{} {:?}: {} steps, exit {:?}, unprovable {:?}",
                guest.name,
                String::from_utf8_lossy(input),
                t.steps.len(),
                t.exit,
                t.unprovable
            );
        }
    }
}
