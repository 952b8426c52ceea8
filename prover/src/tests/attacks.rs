//! Forged proofs: each test builds the witness of an attack on the circuit, shows that it makes
//! a claim other than the honest run's, that its statement is exactly the one a verifier would
//! build for that claim, and that the circuit refuses it.
//!
//! The attacks are described by what a dishonest prover controls (a trace, the instruction a
//! step decodes, a memory state list, how it splits and orders the sorted side), not by the
//! names of the constraints that catch them today, so that they keep guarding when the circuit
//! is rewritten: an attack counts as refused when any constraint of the whole segment chain
//! fails.

use ark_bn254::Fr;
use ark_ff::{Field, Zero};

use super::circuit::{TINY, violation};
use crate::circuit::{Class, Statement, ZkvmCircuit, memory_digest, unpack_state};
use crate::isa::{Instr, Op, Program};
use crate::lower::lower;
use crate::trace::{Exit, Regs, RunLimits, Trace, resume_wiped, run};
use crate::zkvm::{self, Claim, Link};

fn program(wat: &str) -> Program {
    lower(&wat::parse_str(wat).unwrap()).unwrap()
}

/// The witness of a prover that runs `program` with the instruction at `pc` replaced by
/// `forged` and claims the result of the original program: every step at `pc` fetches the
/// program's own word and decodes `forged` instead. Returns the circuit and the forged run.
fn substituted(program: &Program, input: &[u8], pc: usize, forged: Instr) -> (ZkvmCircuit, Trace) {
    let original = program.code[pc];
    let mut modified = program.clone();
    modified.code[pc] = forged;
    let trace = run(&modified, input, RunLimits::default());
    // The statement is built from the original program (the modified one need not even be
    // well formed: only the forged run comes from it).
    let mut c = ZkvmCircuit::new(TINY, program, input, &trace)
        .unwrap_or_else(|e| panic!("the forged run must fit one segment: {e}"));
    for (n, step) in c.steps.iter_mut().enumerate() {
        if step.regs.pc == pc as u64 {
            step.instr = original;
            c.tamper.decode.push((n, forged));
        }
    }
    // The statement is the verifier's own for the original program and the forged claim.
    let Exit::Halted(status) = trace.exit else {
        panic!("the forged run must halt: {:?}", trace.exit)
    };
    let expected = Statement::new(
        &TINY,
        program,
        input,
        &trace.output,
        trace.executed() as u64,
        status,
        c.statement.state_out,
    )
    .unwrap();
    assert_eq!(c.statement, expected);
    (c, trace)
}

/// Writes two bytes after a copy, an addition, a branch and a call, then returns.
const BRANCHY: &str = r#"(module
  (import "zkmesh" "write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  (func (export "run") (local i32 i32)
    (local.set 0 (i32.const 7))
    (local.set 1 (local.get 0))
    (local.set 1 (i32.add (local.get 1) (local.get 0)))
    (if (i32.eqz (local.get 1))
      (then (i32.store16 (i32.const 0) (i32.const 0x6f6e)))
      (else (i32.store16 (i32.const 0) (i32.add (call $inc (i32.const 0x6b6e)) (local.get 0)))))
    (call $out (i32.const 0) (i32.const 2))))"#;

/// The review's first attack: run honestly to a step whose instruction has a zero immediate
/// (a copy, a register-register operation, a return) and decode it as `Halt`: the machine
/// "returns normally" there, before the output is written.
#[test]
fn halting_at_an_instruction_that_is_not_a_halt_is_refused() {
    let p = program(BRANCHY);
    let honest = run(&p, b"", RunLimits::default());
    assert_eq!(honest.output.len(), 2);
    let mut tried = 0;
    let mut seen = std::collections::BTreeSet::new();
    for step in &honest.steps {
        let i = step.instr;
        let pc = step.regs.pc as usize;
        if i.imm != 0 || i.imm_b || i.op == Op::Halt || !seen.insert(pc) {
            continue;
        }
        let (c, forged) = substituted(&p, b"", pc, Instr { op: Op::Halt, ..i });
        assert_eq!(forged.exit, Exit::Halted(0));
        assert!(
            forged.output != honest.output || forged.executed() != honest.executed(),
            "a claim other than the honest one"
        );
        assert!(
            violation(c).is_some(),
            "{:?} at pc {pc} decoded as a halt was accepted",
            i.op
        );
        tried += 1;
    }
    assert!(
        tried >= 4,
        "only {tried} instructions with a zero immediate"
    );
}

/// The same attack on control flow and on the fields: a branch decoded as its opposite or as
/// a jump, and an instruction that reads, or writes, another slot than its word names.
#[test]
fn decoding_another_instruction_than_the_fetched_word_is_refused() {
    let p = program(BRANCHY);
    let honest = run(&p, b"", RunLimits::default());
    let at = |op: Op| -> usize {
        honest
            .steps
            .iter()
            .find(|s| s.instr.op == op)
            .unwrap_or_else(|| panic!("no {op:?} in the run"))
            .regs
            .pc as usize
    };
    let mut cases: Vec<(&str, usize, Instr)> = vec![];
    for (from, to) in [(Op::BrZ, Op::BrNz), (Op::BrNz, Op::BrZ)] {
        if let Some(s) = honest.steps.iter().find(|s| s.instr.op == from) {
            let pc = s.regs.pc as usize;
            let i = p.code[pc];
            cases.push((
                "a branch decoded as its opposite",
                pc,
                Instr { op: to, ..i },
            ));
            cases.push((
                "a branch decoded as a jump",
                pc,
                Instr { op: Op::Jump, ..i },
            ));
            cases.push(("a branch on another slot", pc, Instr { a: i.a + 1, ..i }));
        }
    }
    let add = at(Op::Add);
    let i = p.code[add];
    cases.push((
        "an addition that writes another slot",
        add,
        Instr { c: i.c + 1, ..i },
    ));
    cases.push((
        "an addition of another slot",
        add,
        Instr { a: i.a + 1, ..i },
    ));
    cases.push((
        "an addition decoded as a subtraction",
        add,
        Instr { op: Op::Sub, ..i },
    ));
    let copy = at(Op::Copy);
    let i = p.code[copy];
    cases.push(("a copy from another slot", copy, Instr { a: i.a + 1, ..i }));
    cases.push((
        "a copy decoded as a constant",
        copy,
        Instr { op: Op::Const, ..i },
    ));
    let store = at(Op::Store);
    let i = p.code[store];
    cases.push((
        "a store of another width",
        store,
        Instr {
            width: i.width ^ 1,
            ..i
        },
    ));
    assert!(cases.len() >= 10);
    for (what, pc, forged) in cases {
        let (c, run) = substituted(&p, b"", pc, forged);
        assert!(
            run.output != honest.output
                || run
                    .steps
                    .iter()
                    .map(|s| s.acc)
                    .ne(honest.steps.iter().map(|s| s.acc)),
            "{what}: the forged run must differ from the honest one"
        );
        assert!(violation(c).is_some(), "{what} was accepted");
    }
}

/// Stores 42, counts a number kept in memory (80, from a data segment) down to zero, then
/// outputs the stored word: over three segments of 128 steps.
const WIPE: &str = r#"(module
  (import "zkmesh" "write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\50")
  (func (export "run")
    (i32.store (i32.const 16) (i32.const 42))
    (block $done (loop $l
      (br_if $done (i32.le_s (i32.load (i32.const 0)) (i32.const 0)))
      (i32.store (i32.const 0) (i32.sub (i32.load (i32.const 0)) (i32.const 1)))
      (br $l)))
    (call $out (i32.const 16) (i32.const 4))))"#;

/// The review's second attack: a segment that does not halt hands on a memory state whose
/// addresses are not integers, `(a, 0)` with `a * 2^tb + time` an integer plus one half,
/// routed first. Every other entry's key is then only sorted if its final-read bit is
/// flipped, which voids the check that the state out is complete: the segment drops every
/// word, and the next one starts on zeroed memory and claims another output (the stored 42
/// reads as 0).
#[test]
fn a_state_list_with_addresses_off_the_integers_is_refused() {
    let class = Class { steps: 128, ..TINY };
    let p = program(WIPE);
    let honest = run(&p, b"", RunLimits::default());
    assert_eq!(honest.output, 42u32.to_le_bytes());
    let mut segments = ZkvmCircuit::segments(class, &p, b"", &honest).unwrap();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    segments.truncate(2);
    let (first, mut wiper) = (segments.remove(0), segments.remove(0));

    // The state the second segment hands on: class.state entries, all at one address off the
    // integers, keyed below every other entry in both segments that see it.
    let (in0, out0, tb) = wiper.state_times();
    let delta = out0 - in0;
    let half = Fr::from(2u64).inverse().unwrap();
    let base = Fr::from(1u64 << tb).inverse().unwrap();
    let s = class.state as u64;
    let fakes: Vec<(Fr, Fr)> = (0..s)
        .map(|j| {
            // key_j = K_j + 1/2 at time out0 + j, with K_j = j - s - delta - 2
            let k = Fr::from(j) - Fr::from(s + delta + 2);
            let a = (k + half - Fr::from(out0 + j)) * base;
            (a, Fr::zero())
        })
        .collect();
    let commitment = crate::poseidon::hash(
        &(0..class.state)
            .flat_map(|j| [fakes[j].0, fakes[j].1])
            .collect::<Vec<_>>(),
    );
    assert_ne!(commitment, wiper.statement.memory_out);
    assert!(
        !wiper.memory_out.is_empty(),
        "the honest state out is not empty"
    );
    wiper.tamper.state_out = Some(fakes.clone());
    wiper.tamper.half_keys = true;
    wiper.statement.memory_out = commitment;

    // The machine goes on from the second segment's end with every word zero, and halts
    // within one segment with another output.
    let (pc, fp, ms) = unpack_state(wiper.statement.state_out);
    let forged = resume_wiped(&p, Regs { pc, fp, ms }, RunLimits::default());
    assert_eq!(forged.exit, Exit::Halted(0));
    assert_ne!(forged.output, honest.output);
    let step_start = first.statement.steps + wiper.statement.steps;
    let mut rest = ZkvmCircuit::segments_resumed(class, &p, b"", &forged, step_start).unwrap();
    assert_eq!(rest.len(), 1, "the forged run halts in one segment");
    let mut last = rest.remove(0);
    last.tamper.state_in = Some(fakes);
    last.tamper.half_keys = true;
    last.statement.memory_in = commitment;

    // Exactly the statements a verifier builds for this claim.
    let link = |c: &ZkvmCircuit| Link {
        steps: c.statement.steps,
        state_out: c.statement.state_out,
        memory_out: c.statement.memory_out,
    };
    let claim = Claim {
        class: class.name.into(),
        steps: step_start + last.statement.steps,
        status: 0,
        state_out: last.statement.state_out,
        links: vec![link(&first), link(&wiper)],
    };
    let binding = zkvm::Binding::new("t-forged", "n-forger");
    let expected = zkvm::statements(&class, &p, b"", &forged.output, &claim, &binding).unwrap();
    let mut chain = [first, wiper, last];
    for (k, c) in chain.iter_mut().enumerate() {
        c.statement.binding = binding.segment(k);
        assert_eq!(c.statement, expected[k], "segment {k}");
    }
    assert_ne!(
        chain[1].statement.memory_out,
        memory_digest(&class, &chain[1].memory_out)
    );
    let refused: Vec<Option<String>> = chain.into_iter().map(violation).collect();
    assert!(refused[0].is_none(), "the first segment is honest");
    assert!(
        refused.iter().any(Option::is_some),
        "a chain that drops the memory was accepted"
    );
}
