//! Differential tests: the tracing interpreter against wasmtime.

use crate::lower::lower;
use crate::trace::{Exit, RunLimits, run};
use zkmesh_runtime::{Exit as WExit, Limits, Sandbox, SandboxConfig};

fn wasmtime_run(wasm: &[u8], input: &[u8]) -> (bool, Vec<u8>) {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let out = sandbox.run(wasm, input, &Limits::default(), b"seed");
    (out.exit == WExit::Ok, out.output)
}

pub fn check(wasm: &[u8], input: &[u8]) -> crate::trace::Trace {
    // Lowered for the memory limit wasmtime runs it under.
    let program = crate::lower::lower_limited(wasm, Limits::default().memory_bytes)
        .unwrap_or_else(|e| panic!("lowering: {e}"));
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
            assert_eq!(t.unprovable, None, "{} {:?}", guest.name, input);
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
    use crate::circuit::{Class, ZkvmCircuit};
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
        state: 16,
    };

    pub const MID: Class = Class {
        name: "mid",
        steps: 512,
        program: 512,
        globals: 4,
        data: 8,
        input: 4,
        output: 8,
        state: 16,
    };

    pub fn circuit(wat: &str, input: &[u8]) -> ZkvmCircuit {
        circuit_in(wat, input, TINY)
    }

    pub fn circuit_in(wat: &str, input: &[u8], class: Class) -> ZkvmCircuit {
        let wasm = wat::parse_str(wat).unwrap();
        let program = lower(&wasm).unwrap();
        let trace = run(&program, input, RunLimits::default());
        ZkvmCircuit::new(class, &program, input, &trace).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Where the first violated constraint is (region and line), found natively while the
    /// constraints are generated: fast enough to run for every tampered witness.
    pub fn violation(mut c: ZkvmCircuit) -> Option<String> {
        let out = std::sync::Arc::new(std::sync::Mutex::new(None));
        c.violation = Some(out.clone());
        let cs = ConstraintSystem::<Fr>::new_ref();
        c.generate_constraints(cs).unwrap();
        out.lock().unwrap().clone()
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
        (drop (i32.eqz (local.get 0)))
        (drop (i32.add (local.get 0) (i32.const 1000)))))"#;

    #[test]
    fn honest_traces_satisfy_the_circuit() {
        let mut c = circuit(ARITH, b"");
        c.strict = true;
        satisfied(c).unwrap();
    }

    use crate::isa::Op;
    use crate::trace::Step;

    /// Index of the first step running `op`.
    fn find(c: &ZkvmCircuit, op: Op) -> usize {
        c.steps
            .iter()
            .position(|s| s.instr.op == op)
            .unwrap_or_else(|| panic!("no {op:?}"))
    }

    /// Changes what step `at` writes to `v`, and what every later read of that address sees
    /// until it is written again: memory stays consistent, so only the operation's own
    /// constraints can notice.
    fn rewrite(steps: &mut [Step], at: usize, v: u64) {
        let addr = steps[at].acc[3].addr();
        steps[at].acc[3].value = v;
        for s in &mut steps[at + 1..] {
            for k in 0..4 {
                if s.acc[k].addr() == addr {
                    if s.acc[k].write {
                        return;
                    }
                    s.acc[k].value = v;
                }
            }
        }
    }

    /// The first violation after `f` corrupts an honest witness (None: accepted).
    fn tampered(f: impl FnOnce(&mut ZkvmCircuit)) -> Option<String> {
        let mut c = circuit(ARITH, b"");
        f(&mut c);
        violation(c)
    }

    #[track_caller]
    fn caught(v: Option<String>, region: &str) {
        match v {
            Some(v) => assert!(v.contains(region), "caught by {v}, expected {region}"),
            None => panic!("accepted; expected a violation in {region}"),
        }
    }

    #[test]
    fn a_wrong_result_fails() {
        for op in [
            Op::Add,
            Op::Mul,
            Op::Xor,
            Op::Sub,
            Op::LtS,
            Op::GeU,
            Op::Select,
        ] {
            let r = tampered(|c| {
                let at = find(c, op);
                let v = c.steps[at].acc[3].value ^ 1;
                rewrite(&mut c.steps, at, v);
            });
            caught(r, &format!("({op:?})"));
        }
    }

    #[test]
    fn a_wrong_carry_fails() {
        let r = tampered(|c| {
            let at = find(c, Op::Add);
            c.tamper.aux = Some((at, Box::new(|a| a.h[0] = Fr::from(1u64))));
        });
        caught(r, "(Add)");
    }

    #[test]
    fn a_non_canonical_bit_decomposition_fails() {
        // Same weighted sum, but one "bit" is 2.
        let r = tampered(|c| {
            let at = find(c, Op::Mul);
            let y = c.steps[at].y();
            let k = (0..63).find(|&k| (y >> k) & 3 == 2).expect("a 10 pattern");
            c.tamper.aux = Some((
                at,
                Box::new(move |a| {
                    a.y[k] = Fr::from(2u64);
                    a.y[k + 1] = Fr::from(0u64);
                }),
            ));
        });
        caught(r, "(Mul)");
    }

    #[test]
    fn a_read_that_differs_from_the_last_write_fails() {
        // A branch condition read as 2 instead of 1: the branch goes the same way, so only the
        // memory check can tell.
        let r = tampered(|c| {
            let at = c
                .steps
                .iter()
                .position(|s| s.instr.op == Op::BrZ && s.acc[0].value == 1)
                .expect("a BrZ on a true condition");
            c.steps[at].acc[0].value = 2;
        });
        caught(r, "memory check");
    }

    #[test]
    fn a_first_read_that_is_not_the_initial_value_fails() {
        // An unused read slot reads the zero space, which is never written.
        let r = tampered(|c| {
            let at = find(c, Op::Const);
            c.steps[at].acc[1].value = 7;
        });
        caught(r, "memory check");
    }

    #[test]
    fn a_forged_routing_fails() {
        for k in [0, 5, 100] {
            caught(
                tampered(|c| c.tamper.memory_switch = Some(k)),
                "memory check",
            );
            caught(tampered(|c| c.tamper.fetch_switch = Some(k)), "fetch check");
        }
    }

    #[test]
    fn a_skipped_or_repeated_step_fails() {
        let r = tampered(|c| {
            let at = find(c, Op::Mul);
            c.steps.remove(at);
            let last = *c.steps.last().unwrap();
            c.steps.push(last);
        });
        assert!(r.is_some(), "skipped");
        let r = tampered(|c| {
            let at = find(c, Op::Mul);
            let s = c.steps[at];
            c.steps.insert(at, s);
            c.steps.pop();
        });
        assert!(r.is_some(), "repeated");
    }

    /// A constant folded into its use as the immediate second operand: changing the immediate
    /// or the flag is a different instruction than the program's, and the `b` access it no
    /// longer needs still reads the never-written address 0.
    #[test]
    fn a_wrong_immediate_operand_fails() {
        let with_imm = |c: &ZkvmCircuit| {
            c.steps
                .iter()
                .position(|s| s.instr.imm_b && s.instr.op == Op::Add)
                .expect("an add of a constant")
        };
        let r = tampered(|c| {
            let at = with_imm(c);
            // A consistent step for another immediate: only the fetch can tell.
            c.steps[at].instr.imm += 1;
            let v = c.steps[at].acc[3].value + 1;
            rewrite(&mut c.steps, at, v);
        });
        caught(r, "fetch check");
        let r = tampered(|c| {
            let at = with_imm(c);
            c.steps[at].instr.imm_b = false;
        });
        assert!(r.is_some(), "the flag cleared");
        let r = tampered(|c| {
            let at = with_imm(c);
            c.steps[at].acc[1].value = 5;
        });
        caught(r, "memory check");
        // The result must be the sum with the immediate, not with what `b` would name.
        let r = tampered(|c| {
            let at = with_imm(c);
            let v = c.steps[at].acc[3].value ^ 4;
            rewrite(&mut c.steps, at, v);
        });
        caught(r, "(Add)");
    }

    #[test]
    fn a_wrong_branch_target_fails() {
        let r = tampered(|c| {
            let at = find(c, Op::BrZ);
            c.steps[at].instr.imm += 1;
        });
        caught(r, "fetch check");
    }

    #[test]
    fn changed_public_inputs_fail() {
        type Edit = Box<dyn Fn(&mut crate::circuit::Statement)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("steps", Box::new(|s| s.steps += 1)),
            ("status", Box::new(|s| s.status = 1)),
            ("output", Box::new(|s| s.output[1] ^= 1)),
            ("output length", Box::new(|s| s.output[0] += 1)),
            ("program", Box::new(|s| s.program[0].1 ^= 1)),
            ("program code", Box::new(|s| s.program[0].0 ^= 1 << 13)),
            (
                "globals",
                Box::new(|s| s.globals[crate::isa::GLOBAL_FIRST as usize] ^= 1),
            ),
            ("state out", Box::new(|s| s.state_out ^= 1)),
            ("state in", Box::new(|s| s.state_in += 1)),
            ("memory in", Box::new(|s| s.memory_in += Fr::from(1u64))),
            ("memory out", Box::new(|s| s.memory_out += Fr::from(1u64))),
            ("halted", Box::new(|s| s.halted = false)),
        ];
        // (The binding enters no statement about the run; the Groth16 round trips show that a
        // proof does not verify with another one.)
        for (what, edit) in edits {
            let r = tampered(|c| edit(&mut c.statement));
            assert!(r.is_some(), "a changed {what} was accepted");
        }
    }

    /// Every other instruction family: memory of every width and signedness (an 8-byte access
    /// at a 4-aligned address, a 4-byte load across a word boundary), shifts, rotations, bit
    /// counts, sign extension, division and remainder (the signed ones lowered to unsigned),
    /// br_table, call_indirect, memory.size and memory.grow, and the input and output calls.
    pub const MEMOPS: &str = r#"(module
      (import "zkmesh" "read_input" (func $read (param i32 i32 i32) (result i32)))
      (import "zkmesh" "write_output" (func $out (param i32 i32)))
      (import "zkmesh" "input_len" (func $len (result i32)))
      (type $t (func (param i32) (result i32)))
      (memory (export "memory") 1 3)
      (data (i32.const 16) "\01\82\03\84\05\86\07\88")
      (table 2 funcref)
      (elem (i32.const 0) $double $neg)
      (func $double (param i32) (result i32) (i32.shl (local.get 0) (i32.const 1)))
      (func $neg (param i32) (result i32) (i32.sub (i32.const 0) (local.get 0)))
      (func (export "run") (local i32 i64)
        (drop (call $read (i32.const 64) (i32.const 0) (call $len)))
        (i64.store (i32.const 36) (i64.load (i32.const 16)))
        (local.set 0 (i32.load (i32.const 18)))
        (local.set 0 (i32.add (local.get 0) (i32.load8_s (i32.const 17))))
        (local.set 0 (i32.add (local.get 0) (i32.load16_u offset=2 (i32.const 17))))
        (local.set 1 (i64.load32_s (i32.const 36)))
        (local.set 1 (i64.add (local.get 1) (i64.load16_s (i32.const 38))))
        (local.set 1 (i64.add (local.get 1) (i64.load8_u (i32.const 65))))
        (i32.store16 (i32.const 50) (local.get 0))
        (i32.store8 (i32.const 53) (i32.const 0xab))
        (i64.store32 (i32.const 56) (local.get 1))
        (i64.store16 (i32.const 60) (i64.const -2))
        (i64.store8 (i32.const 63) (i64.const 7))
        (local.set 0 (i32.xor (local.get 0) (i32.rotl (local.get 0) (i32.const 13))))
        (local.set 0 (i32.add (local.get 0) (i32.shr_s (i32.const -1000) (i32.const 3))))
        (local.set 0 (i32.add (local.get 0) (i32.shr_u (i32.const -1000) (i32.const 35))))
        (local.set 1 (i64.add (local.get 1) (i64.rotr (i64.const 0x0123456789abcdef) (i64.const 12))))
        (local.set 1 (i64.add (local.get 1) (i64.shl (local.get 1) (i64.const 60))))
        (local.set 0 (i32.add (local.get 0) (i32.clz (i32.const 0x00f0))))
        (local.set 0 (i32.add (local.get 0) (i32.ctz (i32.const 0x0100))))
        (local.set 0 (i32.add (local.get 0) (i32.clz (i32.const 0))))
        (local.set 1 (i64.add (local.get 1) (i64.ctz (i64.const 0))))
        (local.set 1 (i64.add (local.get 1) (i64.extend_i32_s (i32.const -5))))
        (local.set 1 (i64.add (local.get 1) (i64.extend8_s (i64.const 0x80))))
        (local.set 0 (i32.add (local.get 0) (i32.extend16_s (i32.const 0x8001))))
        (local.set 0 (i32.add (local.get 0) (i32.div_s (i32.const -7) (i32.const 2))))
        (local.set 0 (i32.add (local.get 0) (i32.rem_s (i32.const -7) (i32.const 2))))
        (local.set 1 (i64.add (local.get 1) (i64.div_u (i64.const -1) (i64.const 10))))
        (local.set 1 (i64.add (local.get 1) (i64.rem_u (i64.const -1) (i64.const 10))))
        (local.set 0 (i32.add (local.get 0)
          (call_indirect (type $t) (i32.const 21) (i32.and (local.get 0) (i32.const 1)))))
        (block $b2 (block $b1 (block $b0
          (br_table $b0 $b1 $b2 (i32.and (local.get 0) (i32.const 3))))
          (local.set 0 (i32.add (local.get 0) (i32.const 100))))
          (local.set 0 (i32.add (local.get 0) (i32.const 1000))))
        (local.set 0 (i32.add (local.get 0) (memory.grow (i32.const 1))))
        (local.set 0 (i32.add (local.get 0) (memory.grow (i32.const 5))))
        (local.set 0 (i32.add (local.get 0) (memory.size)))
        (i32.store (i32.const 0) (local.get 0))
        (i64.store (i32.const 4) (local.get 1))
        (call $out (i32.const 0) (i32.const 12))
        (call $out (i32.const 36) (i32.const 8))))"#;

    #[test]
    fn every_instruction_family_satisfies_the_circuit_and_matches_wasmtime() {
        let wasm = wat::parse_str(MEMOPS).unwrap();
        let trace = crate::tests::check(&wasm, b"xyz");
        assert_eq!(trace.unprovable, None);
        let mut c = circuit_in(MEMOPS, b"xyz", MID);
        c.strict = true;
        satisfied(c).unwrap();
    }

    #[test]
    fn a_wrong_result_fails_for_every_operation() {
        let class = MID;
        let base = circuit_in(MEMOPS, b"xyz", class);
        let mut seen = std::collections::BTreeSet::new();
        let targets: Vec<usize> = base
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.acc[3].write && s.acc[3].space != crate::isa::Space::Scratch)
            .filter(|(_, s)| {
                seen.insert(format!("{:?}{}{}", s.instr.op, s.instr.wide, s.instr.width))
            })
            .map(|(k, _)| k)
            .collect();
        assert!(targets.len() > 30, "{}", targets.len());
        for at in targets {
            let mut c = circuit_in(MEMOPS, b"xyz", class);
            let op = c.steps[at].instr;
            let v = c.steps[at].acc[3].value ^ 4;
            rewrite(&mut c.steps, at, v);
            caught(violation(c), &format!("({:?})", op.op));
        }
    }

    /// 2^z in the bit-count checks uses z's low 7 bits; a count off by 128 must still fail.
    #[test]
    fn a_bit_count_off_by_128_fails() {
        for op in [Op::Clz, Op::Ctz] {
            let mut c = circuit_in(MEMOPS, b"xyz", MID);
            let at = c
                .steps
                .iter()
                .position(|s| s.instr.op == op && s.acc[0].value != 0)
                .expect("a count of a non-zero value");
            let (x, z) = (c.steps[at].acc[0].value, c.steps[at].acc[3].value);
            rewrite(&mut c.steps, at, z + 128);
            // The helper value an honest count would have.
            let h = if op == Op::Clz {
                (x as u128) << z
            } else {
                (x >> z) as u128
            };
            c.tamper.aux = Some((at, Box::new(move |a| a.h = crate::r1cs::bits_of(h, 64))));
            caught(violation(c), &format!("({op:?})"));
        }
    }

    /// Unit U decomposes the result of an operation like `add` and the first operand of one like
    /// `xor`; `shr_s` takes the sign from D, which must be its operand. A decomposition of the
    /// other value, or a D with the sign flipped, fails.
    #[test]
    fn the_shared_units_decompose_the_right_values() {
        for op in [Op::Add, Op::Xor] {
            let mut c = circuit_in(MEMOPS, b"xyz", MID);
            let at = c
                .steps
                .iter()
                .position(|s| s.instr.op == op && s.acc[0].value != s.acc[3].value)
                .expect("an operation whose result differs from its operand");
            let (x, z) = (c.steps[at].acc[0].value, c.steps[at].acc[3].value);
            let other = if op == Op::Add { x } else { z };
            c.tamper.aux = Some((
                at,
                Box::new(move |a| a.u = crate::r1cs::bits_of(other as u128, 64)),
            ));
            caught(violation(c), &format!("({op:?})"));
        }
        let mut c = circuit_in(MEMOPS, b"xyz", MID);
        let at = find(&c, Op::ShrS);
        let x = c.steps[at].acc[0].value;
        assert_eq!(x >> 31, 1, "a negative operand");
        c.tamper.aux = Some((
            at,
            Box::new(move |a| a.d = crate::r1cs::bits_of((x ^ 1 << 31) as u128, 66)),
        ));
        caught(violation(c), "(ShrS)");
    }

    /// Accesses whose alignment hint promises less than the circuit needs are split by the
    /// lowering into pieces that never cross a word: an 8-byte store at a 2-aligned address
    /// (what the sort guest does), a 4-byte and a 2-byte store across word boundaries, and
    /// 8-byte loads at 2- and 1-aligned addresses.
    #[test]
    fn underaligned_accesses_are_split_and_provable() {
        const WAT: &str = r#"(module
          (import "zkmesh" "write_output" (func $out (param i32 i32)))
          (memory (export "memory") 1)
          (func (export "run")
            (i64.store align=2 (i32.const 6) (i64.const 0x0123456789abcdef))
            (i32.store align=1 (i32.const 15) (i32.const 0xa1b2c3d4))
            (i32.store16 align=1 (i32.const 23) (i32.const 0xbeef))
            (i64.store align=1 (i32.const 25) (i64.load align=2 (i32.const 6)))
            (i64.store (i32.const 0) (i64.load align=1 (i32.const 13)))
            (call $out (i32.const 0) (i32.const 32))))"#;
        let wasm = wat::parse_str(WAT).unwrap();
        let t = crate::tests::check(&wasm, b"");
        assert_eq!(t.unprovable, None);
        let mut c = circuit_in(WAT, b"", MID);
        c.strict = true;
        satisfied(c).unwrap();
    }

    /// memory.fill writes bytes up to a 4-aligned address, then words, then bytes: every start
    /// alignment and length from 0 to 11 agrees with wasmtime, and one such run satisfies the
    /// circuit.
    #[test]
    fn memory_fill_at_every_alignment_and_length() {
        // Lengths that end in the head, the words and the tail, and (from 32) that also fill
        // whole 32-byte blocks.
        for start in 0..4 {
            for len in (0..12).chain(30..46).chain([69, 72]) {
                let wat = format!(
                    r#"(module
                      (import "zkmesh" "write_output" (func $out (param i32 i32)))
                      (memory (export "memory") 1)
                      (func (export "run")
                        (memory.fill (i32.const 0) (i32.const 0x11) (i32.const 88))
                        (memory.fill (i32.const {a}) (i32.const 0x1ab) (i32.const {len}))
                        (call $out (i32.const 0) (i32.const 88))))"#,
                    a = 4 + start
                );
                let wasm = wat::parse_str(&wat).unwrap();
                let t = crate::tests::check(&wasm, b"");
                assert_eq!(t.unprovable, None);
                if start == 3 && len == 43 {
                    let mut c = circuit_in(
                        &wat,
                        b"",
                        Class {
                            steps: 1024,
                            output: 24,
                            ..MID
                        },
                    );
                    c.strict = true;
                    satisfied(c).unwrap();
                }
            }
        }
    }

    const OTHER: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "run") (drop (i64.add (i64.const 1) (i64.const 2)))))"#;

    #[test]
    fn groth16_round_trip_binds_every_public_input_and_the_module() {
        use crate::groth;
        let (pk, vk, system) = groth::setup(TINY).unwrap();
        // The setup names the whole constraint system it made keys for: the same hash a
        // verifier recomputes at first use, and another one for any other shape.
        assert_eq!(system, groth::constraint_system_hash(&TINY).unwrap());
        let other = Class {
            steps: TINY.steps + 1,
            ..TINY
        };
        assert_ne!(system, groth::constraint_system_hash(&other).unwrap());
        let pvk = groth::prepare(&vk);
        let c = circuit(ARITH, b"");
        let statement = c.statement.clone();
        let proof = groth::prove(&pk, c).unwrap();
        assert!(groth::verify(&pvk, &statement, &proof));
        // Anyone can re-randomise a Groth16 proof, but the copy proves the same statement,
        // binding included: it is worth nothing to another node.
        {
            use ark_groth16::Groth16;
            let copy =
                Groth16::<ark_bn254::Bn254>::rerandomize_proof(&vk, &proof, &mut rand::rngs::OsRng);
            assert_ne!(copy, proof);
            assert!(groth::verify(&pvk, &statement, &copy));
            let mut other = statement.clone();
            other.binding = crate::zkvm::Binding::new("t", "n-thief").segment(0);
            assert!(!groth::verify(&pvk, &other, &copy));
        }

        type Edit = Box<dyn Fn(&mut crate::circuit::Statement)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("steps", Box::new(|s| s.steps += 1)),
            ("status", Box::new(|s| s.status = 1)),
            ("output", Box::new(|s| s.output[1] ^= 1)),
            ("input hash", Box::new(|s| s.input[1] ^= 1)),
            ("input length", Box::new(|s| s.input[0] += 1)),
            ("program", Box::new(|s| s.program[5].1 ^= 1)),
            ("state out", Box::new(|s| s.state_out += 1)),
            ("binding", Box::new(|s| s.binding += Fr::from(1u64))),
            ("memory in", Box::new(|s| s.memory_in += Fr::from(1u64))),
        ];
        for (what, edit) in edits {
            let mut s = statement.clone();
            edit(&mut s);
            assert!(
                !groth::verify(&pvk, &s, &proof),
                "a changed {what} verified"
            );
        }

        // A proof for one module is not a proof for another.
        let other = circuit(OTHER, b"");
        let mut s = other.statement.clone();
        assert!(!groth::verify(&pvk, &s, &proof));
        let other_proof = groth::prove(&pk, other).unwrap();
        assert!(groth::verify(&pvk, &s, &other_proof));
        s.program = statement.program.clone();
        assert!(!groth::verify(&pvk, &s, &other_proof));

        // Batched: both proofs at once; any wrong statement spoils the batch.
        let other_statement = {
            let mut t = s.clone();
            t.program = circuit(OTHER, b"").statement.program;
            t
        };
        assert!(groth::verify_batch(
            &pvk,
            &[(&statement, &proof), (&other_statement, &other_proof)]
        ));
        assert!(!groth::verify_batch(
            &pvk,
            &[(&statement, &proof), (&s, &other_proof)]
        ));
    }

    /// A loop of 40 rounds: longer than a TINY class, so it runs in segments.
    const LONG: &str = r#"(module
      (import "zkmesh" "write_output" (func $out (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "run") (local i32 i32)
        (loop $l
          (local.set 1 (i32.add (local.get 1) (i32.mul (local.get 0) (local.get 0))))
          (i32.store (i32.const 32) (local.get 0))
          (local.set 0 (i32.add (local.get 0) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get 0) (i32.const 40))))
        (i32.store (i32.const 16) (local.get 1))
        (call $out (i32.const 16) (i32.const 4))))"#;

    fn long_run() -> (crate::isa::Program, crate::trace::Trace, Vec<ZkvmCircuit>) {
        let program = lower(&wat::parse_str(LONG).unwrap()).unwrap();
        let trace = run(&program, b"", RunLimits::default());
        let segments = ZkvmCircuit::segments(TINY, &program, b"", &trace).unwrap();
        (program, trace, segments)
    }

    #[test]
    fn a_long_run_splits_into_chained_segments_that_each_satisfy_the_circuit() {
        let (_, trace, segments) = long_run();
        assert_eq!(
            trace.output,
            (0..40u32).map(|i| i * i).sum::<u32>().to_le_bytes()
        );
        assert!(segments.len() >= 3, "{} segments", segments.len());
        let mut steps = 0;
        for (k, pair) in segments.windows(2).enumerate() {
            let (a, b) = (&pair[0].statement, &pair[1].statement);
            assert!(!a.halted && a.steps == TINY.steps as u64, "segment {k}");
            assert_eq!(a.state_out, b.state_in);
            assert_eq!(a.memory_out, b.memory_in);
            assert_eq!(a.step_start + a.steps, b.step_start);
            assert!(!pair[0].memory_out.is_empty());
        }
        for (k, mut c) in segments.into_iter().enumerate() {
            steps += c.statement.steps;
            c.strict = true;
            satisfied(c).unwrap_or_else(|e| panic!("segment {k}: {e}"));
        }
        assert_eq!(steps, trace.executed() as u64);
    }

    /// A middle segment, and the commitment of an edited state list (as a prover that lies
    /// about the state would publish it).
    fn middle(edit: impl FnOnce(&mut ZkvmCircuit)) -> Option<String> {
        let (_, _, mut segments) = long_run();
        let mut c = segments.remove(1);
        edit(&mut c);
        violation(c)
    }

    #[test]
    fn a_lie_about_the_memory_state_fails() {
        use crate::circuit::memory_digest;
        // The state in differs from its commitment.
        caught(middle(|c| c.memory_in[0].1 ^= 1), "memory in");
        // The state out differs from its commitment.
        caught(middle(|c| c.memory_out[0].1 ^= 1), "memory out");
        // A state out that matches its (edited) commitment but not the memory: a wrong value.
        caught(
            middle(|c| {
                c.memory_out[0].1 ^= 1;
                c.statement.memory_out = memory_digest(&c.class, &c.memory_out);
            }),
            "memory check",
        );
        // A state out that leaves out a word that is not zero: the next segment would read
        // zero there.
        caught(
            middle(|c| {
                c.memory_out.remove(0);
                c.statement.memory_out = memory_digest(&c.class, &c.memory_out);
            }),
            "memory check",
        );
        // A state in with a word the previous segment did not leave: as a statement it
        // differs from the chain, and the circuit only accepts the list its commitment names.
        caught(
            middle(|c| {
                c.memory_in.push((crate::isa::Space::Memory.base() + 8, 5));
            }),
            "memory in",
        );
        // A segment that claims to halt, or that stops early.
        caught(middle(|c| c.statement.halted = true), "end state");
        caught(middle(|c| c.statement.steps -= 1), "end state");
        // A segment that starts elsewhere than the previous one ended.
        caught(middle(|c| c.statement.state_in += 1), "");
    }

    /// Segment `k` of the long run, with the value of `addr` in its state in raised by
    /// `delta` (and its commitment with it), as every access reads it until it is written.
    fn raised_state_in(k: usize, pick: impl Fn(&ZkvmCircuit) -> u64, delta: u64) -> ZkvmCircuit {
        use crate::circuit::memory_digest;
        let (_, _, mut segments) = long_run();
        let mut c = segments.remove(k);
        let addr = pick(&c);
        let at = c.memory_in.iter().position(|(a, _)| *a == addr).unwrap();
        c.memory_in[at].1 += delta;
        c.statement.memory_in = memory_digest(&c.class, &c.memory_in);
        'steps: for s in c.steps.iter_mut() {
            for acc in s.acc.iter_mut() {
                if acc.addr() == addr {
                    if acc.write {
                        break 'steps;
                    }
                    acc.value += delta;
                }
            }
        }
        c
    }

    /// The first step of `c` running `op` whose access `k` reads an address the state in
    /// holds and no earlier step of the segment wrote.
    fn first_from_state_in(c: &ZkvmCircuit, op: Op, k: usize) -> (usize, u64) {
        from_state_in(c, op, k).remove(0)
    }

    fn from_state_in(c: &ZkvmCircuit, op: Op, k: usize) -> Vec<(usize, u64)> {
        let v: Vec<(usize, u64)> = (c.steps.iter().enumerate())
            .filter_map(|(n, s)| {
                let addr = s.acc[k].addr();
                let written = (c.steps[..n].iter())
                    .any(|p| p.acc.iter().any(|a| a.write && a.addr() == addr));
                let held = c.memory_in.iter().any(|(a, _)| *a == addr);
                (s.instr.op == op && !s.instr.wide && !written && held).then_some((n, addr))
            })
            .collect();
        assert!(!v.is_empty(), "no {op:?} reading the state in");
        v
    }

    /// A narrow operation reads a value of 2^32 or more (one the previous segment could have
    /// left if values were trusted to be in range): the first step that uses it refuses it,
    /// although the addition itself still balances with a larger carry.
    #[test]
    fn an_operand_out_of_range_fails_where_it_is_used() {
        let pick = |c: &ZkvmCircuit| first_from_state_in(c, Op::Add, 0).1;
        let c = raised_state_in(1, pick, 1 << 32);
        let (at, _) = first_from_state_in(&c, Op::Add, 0);
        caught(violation(c), &format!("step {at} (Add)"));
    }

    /// A return to a frame at 2^20 or above (a link the previous segment could have left):
    /// refused at the return, though the link splits into a pc and a frame pointer.
    #[test]
    fn a_return_to_a_frame_pointer_out_of_range_fails() {
        let last = long_run().2.len() - 1;
        // The entry function's return, the run's last.
        let pick = |c: &ZkvmCircuit| from_state_in(c, Op::Return, 2).last().unwrap().1;
        let mut c = raised_state_in(last, pick, 1 << 52);
        let (at, _) = *from_state_in(&c, Op::Return, 2).last().unwrap();
        // The machine then ends in a state with that frame pointer: claim it.
        let (pc, fp, ms) = crate::circuit::unpack_state(c.statement.state_out);
        c.statement.state_out = crate::circuit::pack_state(pc, fp + (1 << 20), ms);
        for s in &mut c.steps[at + 1..] {
            s.regs.fp += 1 << 20;
        }
        caught(violation(c), &format!("step {at} (Return)"));
    }

    #[test]
    fn a_segment_chain_proves_and_verifies_and_every_link_is_bound() {
        use crate::groth;
        use crate::zkvm::{self, Link};
        let (program, trace, segments) = long_run();
        let (pk, vk, _) = groth::setup(TINY).unwrap();
        let pvk = groth::prepare(&vk);
        let n = segments.len();
        let mut seen = 0;
        let binding = zkvm::Binding::new("t-chain", "n-prover");
        let (proofs, claim) = zkvm::prove(&pk, segments, &binding, |done, of| {
            assert_eq!((done, of), (seen + 1, n));
            seen = done;
        })
        .unwrap();
        assert_eq!(claim.links.len(), n - 1);
        assert_eq!(claim.steps, trace.executed() as u64);
        // The program's share of the inputs, computed once; a term made for another program
        // is not used (the inputs are computed instead), so it cannot make a proof verify.
        let own = zkvm::program_term(&pvk, &TINY, &program).unwrap();
        let other = lower(&wat::parse_str(OTHER).unwrap()).unwrap();
        let foreign = zkvm::program_term(&pvk, &TINY, &other).unwrap();
        for t in [None, Some(&foreign)] {
            zkvm::verify_in(
                &TINY,
                &pvk,
                t,
                &program,
                b"",
                &trace.output,
                &claim,
                &proofs,
                &binding,
            )
            .unwrap();
        }
        let term = Some(&own);
        // The chain checked for an output and a binding, and for the honest ones.
        let check_for =
            |output: &[u8], claim: &zkvm::Claim, proofs: &[Vec<u8>], binding: &zkvm::Binding| {
                zkvm::verify_in(
                    &TINY, &pvk, term, &program, b"", output, claim, proofs, binding,
                )
            };
        let check = |claim: &zkvm::Claim, proofs: &[Vec<u8>]| {
            check_for(&trace.output, claim, proofs, &binding)
        };
        check(&claim, &proofs).unwrap();
        // Bound to the task, the node and each segment: the same proofs presented by another
        // node, or for another task, verify nothing.
        for other in [
            zkvm::Binding::new("t-chain", "n-thief"),
            zkvm::Binding::new("t-other", "n-prover"),
        ] {
            assert!(check_for(&trace.output, &claim, &proofs, &other).is_err());
        }

        // Every part of the claim is bound.
        type Edit = Box<dyn Fn(&mut zkvm::Claim)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("total steps", Box::new(|c| c.steps += 1)),
            ("status", Box::new(|c| c.status = 1)),
            ("final state", Box::new(|c| c.state_out += 1)),
            ("a link's state", Box::new(|c| c.links[0].state_out += 1)),
            (
                "a link's memory",
                Box::new(|c| c.links[1].memory_out += Fr::from(1u64)),
            ),
            ("a link's steps", Box::new(|c| c.links[0].steps -= 1)),
            ("a dropped link", Box::new(|c| drop(c.links.remove(1)))),
            (
                "an extra link",
                Box::new(|c| {
                    let l: Link = c.links[0].clone();
                    c.links.push(l)
                }),
            ),
        ];
        for (what, edit) in edits {
            let mut c = claim.clone();
            edit(&mut c);
            let mut p = proofs.clone();
            p.truncate(c.links.len() + 1);
            while p.len() < c.links.len() + 1 {
                p.insert(0, proofs[0].clone());
            }
            assert!(check(&c, &p).is_err(), "a changed {what} verified");
        }
        // Proofs swapped between segments, one missing, or another output.
        let mut swapped = proofs.clone();
        swapped.swap(0, 1);
        assert!(check(&claim, &swapped).is_err());
        assert!(check(&claim, &proofs[1..]).is_err());
        assert!(check_for(b"\0\0\0\0", &claim, &proofs, &binding).is_err());
    }

    /// The marginal cost of a step: the same run in classes of 64 and 128 steps (everything else
    /// equal), so the difference is 64 steps' worth of constraints (step logic, four memory
    /// accesses and a fetch, and their share of both networks).
    #[test]
    fn constraints_per_step() {
        let count = |steps: usize| {
            let wasm = wat::parse_str(ARITH).unwrap();
            let program = lower(&wasm).unwrap();
            let trace = run(&program, b"", RunLimits::default());
            let class = Class { steps, ..TINY };
            let c = ZkvmCircuit::new(class, &program, b"", &trace).unwrap();
            let cs = ConstraintSystem::<Fr>::new_ref();
            c.generate_constraints(cs.clone()).unwrap();
            assert!(cs.is_satisfied().unwrap());
            cs.num_constraints()
        };
        let (small, large) = (count(64), count(128));
        eprintln!(
            "64 steps: {small} constraints; 128 steps: {large}; per step: {}",
            (large - small) / 64
        );
        assert!(large > small);
    }
}

/// The constraints of the classes up to c12, and per step (the README's cost table):
/// `cargo test -p zkmesh-prover --release class_constraints -- --ignored --nocapture`.
#[test]
#[ignore]
fn class_constraints() {
    for name in ["c9", "c10", "c12", "c14"] {
        let class = crate::zkvm::class_named(name).unwrap();
        let n = crate::groth::count_constraints(class).unwrap();
        eprintln!(
            "{name}: {n} constraints, {} steps, {} per step",
            class.steps,
            n / class.steps as u64
        );
    }
}

#[test]
#[ignore]
fn synthesis_timing() {
    use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem};
    let c = circuit::circuit_in(circuit::MEMOPS, b"xyz", circuit::MID);
    let t = std::time::Instant::now();
    let cs = ConstraintSystem::<ark_bn254::Fr>::new_ref();
    c.generate_constraints(cs.clone()).unwrap();
    eprintln!(
        "synthesis {:?}, {} constraints",
        t.elapsed(),
        cs.num_constraints()
    );
    let t = std::time::Instant::now();
    assert!(cs.is_satisfied().unwrap());
    eprintln!("is_satisfied {:?}", t.elapsed());
}

/// Generated modules: random integer programs (expressions over i32 and i64 locals of every
/// operator family, memory of every width, select, if/else, bounded loops, calls), run by the
/// tracing interpreter and by wasmtime; output and trap-ness must agree. A few are also checked
/// against the circuit.
mod generated {
    use super::check;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    const BIN: &[&str] = &[
        "add", "sub", "mul", "and", "or", "xor", "shl", "shr_s", "shr_u", "rotl", "rotr",
    ];
    const DIV: &[&str] = &["div_u", "rem_u", "div_s", "rem_s"];
    const CMP: &[&str] = &[
        "eq", "ne", "lt_s", "lt_u", "gt_s", "gt_u", "le_s", "le_u", "ge_s", "ge_u",
    ];

    fn konst(r: &mut Rng, ty: &str) -> String {
        let v = match r.below(4) {
            0 => r.below(8),
            1 => u64::MAX - r.below(8),
            2 => 1 << r.below(64),
            _ => r.next(),
        };
        if ty == "i32" {
            format!("(i32.const {})", v as u32 as i32)
        } else {
            format!("(i64.const {})", v as i64)
        }
    }

    /// An expression of type `ty` ("i32" or "i64").
    fn expr(r: &mut Rng, ty: &str, depth: u32) -> String {
        let other = if ty == "i32" { "i64" } else { "i32" };
        if depth == 0 {
            return match r.below(3) {
                0 => konst(r, ty),
                _ => format!("(local.get {})", local(r, ty)),
            };
        }
        let d = depth - 1;
        match r.below(12) {
            0..=3 => format!(
                "({ty}.{} {} {})",
                r.pick(BIN),
                expr(r, ty, d),
                expr(r, ty, d)
            ),
            4 => format!(
                "({ty}.{} {} ({ty}.or {} ({ty}.const 1)))",
                r.pick(DIV),
                expr(r, ty, d),
                expr(r, ty, d)
            ),
            5 => format!(
                "({ty}.{} {})",
                r.pick(&["clz", "ctz", "popcnt", "extend8_s", "extend16_s"]),
                expr(r, ty, d)
            ),
            6 if ty == "i32" => format!(
                "({other}.{} {} {})",
                r.pick(CMP),
                expr(r, other, d),
                expr(r, other, d)
            ),
            6 => format!(
                "(i64.extend_i32_{} {})",
                r.pick(&["s", "u"]),
                expr(r, "i32", d)
            ),
            7 if ty == "i32" => format!("(i32.wrap_i64 {})", expr(r, "i64", d)),
            7 => format!("(i64.extend32_s {})", expr(r, "i64", d)),
            8 => {
                let (w, s) = if ty == "i32" {
                    (
                        r.pick(&["load", "load8_s", "load8_u", "load16_s", "load16_u"]),
                        "",
                    )
                } else {
                    (
                        r.pick(&[
                            "load", "load8_s", "load8_u", "load16_u", "load32_s", "load32_u",
                        ]),
                        "",
                    )
                };
                // Addresses 0..60 (4-aligned for 8-byte loads, anything otherwise).
                let addr = if w == "load" && ty == "i64" {
                    4 * r.below(15)
                } else {
                    r.below(60)
                };
                format!("({ty}.{w}{s} (i32.const {addr}))")
            }
            9 => format!(
                "(select {} {} {})",
                expr(r, ty, d),
                expr(r, ty, d),
                expr(r, "i32", d)
            ),
            10 if ty == "i32" => format!("({other}.eqz {})", expr(r, other, d)),
            10 => format!("(i64.extend_i32_u (i64.eqz {}))", expr(r, "i64", d)),
            _ => format!("(call $f{ty} {} {})", expr(r, ty, d), expr(r, ty, d)),
        }
    }

    fn local(r: &mut Rng, ty: &str) -> u64 {
        if ty == "i32" {
            r.below(3)
        } else {
            3 + r.below(3)
        }
    }

    fn statement(r: &mut Rng, depth: u32) -> String {
        let ty = if r.below(2) == 0 { "i32" } else { "i64" };
        match r.below(8) {
            0..=3 => format!("(local.set {} {})", local(r, ty), expr(r, ty, 3)),
            4 => {
                let (op, align) = match (ty, r.below(4)) {
                    ("i64", 0) => ("store", 4),
                    ("i64", 1) => ("store32", 4),
                    (_, 2) => ("store16", 2),
                    (_, 3) => ("store8", 1),
                    _ => ("store", 4),
                };
                let addr = align * r.below(60 / align);
                format!("({ty}.{op} (i32.const {addr}) {})", expr(r, ty, 2))
            }
            5 if depth > 0 => format!(
                "(if {} (then {}) (else {}))",
                expr(r, "i32", 2),
                statement(r, depth - 1),
                statement(r, depth - 1)
            ),
            6 if depth > 0 => format!(
                "(local.set {c} (i32.const {})) (block $b{depth} (loop $l{depth} {} \
                 (local.set {c} (i32.sub (local.get {c}) (i32.const 1))) \
                 (br_if $l{depth} (local.get {c}))))",
                1 + r.below(4),
                statement(r, depth - 1),
                c = 6 + depth
            ),
            _ => format!("(local.set {} {})", local(r, ty), expr(r, ty, 2)),
        }
    }

    pub fn module(seed: u64) -> String {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let body: Vec<String> = (0..12).map(|_| statement(&mut r, 2)).collect();
        format!(
            r#"(module
  (import "zkmesh" "write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\de\ad\be\ef\01\02\03\04\80\81\82\83\7f\ff\00\10")
  (func $fi32 (param i32 i32) (result i32) (i32.xor (i32.rotl (local.get 0) (i32.const 7)) (local.get 1)))
  (func $fi64 (param i64 i64) (result i64) (i64.sub (i64.mul (local.get 0) (i64.const 31)) (local.get 1)))
  (func (export "run") (local i32 i32 i32 i64 i64 i64 i32 i32 i32)
    {}
    (i32.store (i32.const 64) (local.get 0))
    (i32.store (i32.const 68) (local.get 1))
    (i32.store (i32.const 72) (local.get 2))
    (i64.store (i32.const 76) (local.get 3))
    (i64.store (i32.const 84) (local.get 4))
    (i64.store (i32.const 92) (local.get 5))
    (call $out (i32.const 0) (i32.const 100))))"#,
            body.join("\n    ")
        )
    }

    #[test]
    fn generated_modules_match_wasmtime() {
        let mut traps = 0;
        for seed in 1..=300u64 {
            let wat = module(seed);
            let wasm = wat::parse_str(&wat).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{wat}"));
            let t = check(&wasm, b"");
            if t.exit.is_trap() {
                traps += 1;
            }
        }
        // Divisors are forced odd, so traps are rare: most programs run to the end.
        assert!(traps < 30, "{traps} of 300 trapped");
    }

    #[test]
    fn generated_modules_satisfy_the_circuit() {
        use crate::circuit::{Class, ZkvmCircuit};
        use crate::lower::lower;
        use crate::trace::{RunLimits, run};
        let class = Class {
            name: "gen",
            steps: 1024,
            program: 1024,
            globals: 4,
            data: 8,
            input: 2,
            output: 32,
            state: 4,
        };
        let mut checked = 0;
        for seed in 1..=40u64 {
            let wasm = wat::parse_str(module(seed)).unwrap();
            let program = lower(&wasm).unwrap();
            let trace = run(&program, b"", RunLimits::default());
            let Ok(c) = ZkvmCircuit::new(class, &program, b"", &trace) else {
                continue;
            };
            assert_eq!(super::circuit::violation(c), None, "seed {seed}");
            checked += 1;
            if checked == 4 {
                break;
            }
        }
        assert_eq!(checked, 4, "too few generated programs fit the test class");
    }
}

/// Modules from wasm-smith, restricted to the integer subset (no floats, vectors, references,
/// tables instructions, bulk memory or later proposals) and given the zkmesh ABI as imports and
/// an exported `run`: lowered and run by the tracing interpreter and by wasmtime, they must
/// agree on whether the run succeeds and on its output. Runs wasmtime stops for fuel, stack or
/// output limits are not compared.
mod smith {
    use crate::lower::{LowerError, lower};
    use crate::trace::{Exit, RunLimits, run};
    use wasm_smith::{InstructionKind, InstructionKinds};
    use zkmesh_runtime::{Exit as WExit, Limits, Sandbox, SandboxConfig};

    /// `bulk`: also `memory.copy` and `memory.fill` (and the passive data segments and table
    /// instructions that come with them, which the lowering refuses).
    fn config(bulk: bool) -> wasm_smith::Config {
        let module = |wat: &str| Some(wat::parse_str(wat).expect("valid wat"));
        wasm_smith::Config {
            available_imports: module(
                r#"(module
                  (import "zkmesh" "input_len" (func (result i32)))
                  (import "zkmesh" "read_input" (func (param i32 i32 i32) (result i32)))
                  (import "zkmesh" "write_output" (func (param i32 i32))))"#,
            ),
            exports: module(r#"(module (func (export "run")) (memory (export "memory") 1 2))"#),
            allowed_instructions: InstructionKinds::new(&[
                InstructionKind::NumericInt,
                InstructionKind::Parametric,
                InstructionKind::Variable,
                InstructionKind::MemoryInt,
                InstructionKind::Control,
            ]),
            allow_floats: false,
            allow_start_export: false,
            bulk_memory_enabled: bulk,
            exceptions_enabled: false,
            gc_enabled: false,
            memory64_enabled: false,
            multi_value_enabled: false,
            reference_types_enabled: false,
            relaxed_simd_enabled: false,
            saturating_float_to_int_enabled: false,
            simd_enabled: false,
            tail_call_enabled: false,
            threads_enabled: false,
            wide_arithmetic_enabled: false,
            extended_const_enabled: false,
            compact_imports_enabled: false,
            // The exported memory is made anyway; no second one.
            max_memories: 0,
            max_memory32_bytes: 2 << 16,
            max_tables: 1,
            max_funcs: 12,
            max_instructions: 200,
            ..wasm_smith::Config::default()
        }
    }

    /// The module wasm-smith shapes from deterministic bytes for `seed` (bulk memory on every
    /// third seed), if it makes one.
    fn module(seed: u64) -> Option<Vec<u8>> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let bytes: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let mut u = arbitrary::Unstructured::new(&bytes);
        let module = wasm_smith::Module::new(config(seed % 3 == 0), &mut u).ok()?;
        Some(module.to_bytes())
    }

    #[test]
    fn wasm_smith_modules_match_wasmtime() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let limits = Limits {
            fuel: 100_000,
            ..Limits::default()
        };
        let (mut compared, mut succeeded, mut refused) = (0, 0, 0);
        // SMITH_SEEDS=N tries more modules (the suite runs 500).
        let seeds = std::env::var("SMITH_SEEDS").map_or(500, |n| n.parse().expect("a number"));
        for seed in 0..seeds {
            let Some(wasm) = module(seed) else {
                continue;
            };
            let program = match lower(&wasm) {
                Ok(p) => p,
                Err(LowerError::Unprovable { .. }) => {
                    refused += 1;
                    continue;
                }
                Err(e) => {
                    // Only a module that cannot be instantiated may be refused as invalid.
                    let out = sandbox.run(&wasm, b"", &limits, b"seed");
                    assert_ne!(out.exit, WExit::Ok, "seed {seed}: {e}");
                    refused += 1;
                    continue;
                }
            };
            let input = b"wasm-smith input";
            let out = sandbox.run(&wasm, input, &limits, b"seed");
            if !matches!(out.exit, WExit::Ok | WExit::Trap(_)) {
                continue;
            }
            let trace = run(
                &program,
                input,
                RunLimits {
                    max_steps: 5_000_000,
                    record: false,
                    ..RunLimits::default()
                },
            );
            let ok = out.exit == WExit::Ok;
            assert_eq!(
                trace.exit == Exit::Halted(0),
                ok,
                "seed {seed}: wasmtime {:?}, zkvm {:?}",
                out.exit,
                trace.exit
            );
            if ok {
                assert_eq!(trace.output, out.output, "seed {seed}");
                succeeded += 1;
            }
            compared += 1;
        }
        eprintln!("{compared} compared ({succeeded} ran to the end), {refused} refused");
        assert!(
            compared >= seeds / 2 && succeeded >= seeds / 5,
            "too few comparable modules"
        );
    }

    /// Traces of wasm-smith modules (runs that end, normally or in a trap the zkVM proves)
    /// satisfy the circuit.
    #[test]
    fn wasm_smith_traces_satisfy_the_circuit() {
        use crate::circuit::{Class, ZkvmCircuit};
        let class = Class {
            name: "smith",
            steps: 1024,
            program: 4096,
            globals: 128,
            data: 256,
            input: 8,
            output: 64,
            state: 4,
        };
        let input = b"wasm-smith input";
        let mut checked = 0;
        for seed in 0..200u64 {
            let Some(wasm) = module(seed) else {
                continue;
            };
            let Ok(program) = lower(&wasm) else {
                continue;
            };
            let trace = run(
                &program,
                input,
                RunLimits {
                    max_steps: 2000,
                    ..RunLimits::default()
                },
            );
            let Ok(c) = ZkvmCircuit::new(class, &program, input, &trace) else {
                continue;
            };
            assert_eq!(super::circuit::violation(c), None, "seed {seed}");
            checked += 1;
            if checked == 6 {
                break;
            }
        }
        assert_eq!(checked, 6, "too few wasm-smith runs fit the test class");
    }
}

mod attacks;
mod memory_limit;
mod ranges;
mod wellformed;
