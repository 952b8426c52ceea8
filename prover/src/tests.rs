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

mod circuit {
    use crate::circuit::{Class, Tamper, ZkvmCircuit};
    use crate::lower::lower;
    use crate::trace::{RunLimits, run};
    use ark_bn254::Fr;
    use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem};

    pub const TINY: Class = Class {
        name: "tiny",
        steps: 64,
        program: 64,
        globals: 4,
        data: 4,
        input: 2,
        output: 2,
    };

    pub fn circuit(wat: &str, input: &[u8]) -> ZkvmCircuit {
        let wasm = wat::parse_str(wat).unwrap();
        let program = lower(&wasm).unwrap();
        let trace = run(&program, input, RunLimits::default());
        ZkvmCircuit::new(TINY, &program, input, &trace).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `Ok(())` when satisfied, else the name of the first unsatisfied constraint.
    pub fn satisfied(c: ZkvmCircuit) -> Result<(), String> {
        let cs = ConstraintSystem::<Fr>::new_ref();
        c.generate_constraints(cs.clone()).unwrap();
        if cs.is_satisfied().unwrap() {
            Ok(())
        } else {
            Err(cs.which_is_unsatisfied().unwrap().unwrap_or_default())
        }
    }

    const ADD: &str = r#"(module
      (import "zkmesh" "write_output" (func $out (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "run")
        (i32.store8 (i32.const 0) (i32.add (i32.const 40) (i32.const 2)))))"#;

    const ARITH: &str = r#"(module
      (memory (export "memory") 1)
      (global $g (mut i64) (i64.const 5))
      (func $f (param i64 i64) (result i64)
        (i64.add (i64.mul (local.get 0) (local.get 1)) (global.get $g)))
      (func (export "run") (local i32)
        (global.set $g (call $f (i64.const 7) (i64.const -3)))
        (local.set 0 (i32.xor (i32.const 0xff00) (i32.or (i32.const 12) (i32.and (i32.const 10) (i32.const 6)))))
        (if (i32.lt_s (i32.const -1) (local.get 0)) (then (local.set 0 (i32.sub (local.get 0) (i32.const 1)))))
        (drop (select (i32.const 1) (i32.const 2) (i64.ge_u (global.get $g) (i64.const 3))))
        (drop (i32.wrap_i64 (i64.const 0x1234567890)))
        (drop (i32.eq (i32.popcnt (local.get 0)) (i32.const 3)))
        (drop (i32.eqz (local.get 0)))))"#;

    #[test]
    fn honest_traces_satisfy_the_circuit() {
        let c = circuit(ARITH, b"");
        satisfied(c).unwrap();
    }

    #[test]
    fn constraints_per_step() {
        let c = circuit(ARITH, b"");
        let cs = ConstraintSystem::<Fr>::new_ref();
        c.generate_constraints(cs.clone()).unwrap();
        eprintln!("tiny class: {} constraints", cs.num_constraints());
        let _ = ADD;
        let _ = Tamper::default();
    }
}
