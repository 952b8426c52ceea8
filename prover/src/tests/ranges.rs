//! Registers and results the circuit keeps in range, each with a witness outside that range
//! that a run could not leave, and the constraint that refuses it.

use super::circuit::{TINY, circuit, violation};
use crate::circuit::{MAX_STACK, ZkvmCircuit, pack_state};
use crate::isa::{MAX_PAGES, Op, Space};
use crate::lower::lower;
use crate::trace::{Exit, Regs, RunLimits, resume_wiped};

/// Writes the memory size (in pages) as its output.
const SIZE: &str = r#"(module
  (import "zkmesh" "write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (i32.store (i32.const 0) (memory.size))
    (call $out (i32.const 0) (i32.const 4))))"#;

/// A segment after the first that starts from `regs` (a wiped memory, so that the rest of the
/// run is one the interpreter can carry out from there).
fn resumed(regs: Regs, limits: RunLimits) -> (ZkvmCircuit, Vec<u8>) {
    let p = lower(&wat::parse_str(SIZE).unwrap()).unwrap();
    let t = resume_wiped(&p, regs, limits);
    assert_eq!(t.exit, Exit::Halted(0));
    let mut segments = ZkvmCircuit::segments_resumed(TINY, &p, b"", &t, 1).unwrap();
    assert_eq!(segments.len(), 1);
    let c = segments.remove(0);
    assert_eq!(c.statement.state_in, pack_state(regs.pc, regs.fp, regs.ms));
    (c, t.output)
}

/// A segment that starts with more than MAX_PAGES pages of memory (no memory.grow leaves one:
/// each checks the module's maximum, at most MAX_PAGES) would report that size: refused at
/// its state in.
#[test]
fn a_segment_from_a_memory_larger_than_any_run_has_fails() {
    let ms = MAX_PAGES + 1;
    let (c, output) = resumed(Regs { pc: 0, fp: 0, ms }, RunLimits::default());
    assert_eq!(output, (ms as u32).to_le_bytes());
    let v = violation(c).expect("a memory of 2^14 pages accepted");
    assert!(v.contains("public inputs"), "caught by {v}");
}

/// A segment that starts from a frame pointer at MAX_STACK or above (no call or return leaves
/// one): refused at its state in, before its first call.
#[test]
fn a_segment_from_a_frame_pointer_out_of_range_fails() {
    let limits = RunLimits {
        max_stack: 4 * MAX_STACK,
        ..RunLimits::default()
    };
    let (c, _) = resumed(
        Regs {
            pc: 0,
            fp: MAX_STACK,
            ms: 1,
        },
        limits,
    );
    let v = violation(c).expect("a frame pointer of 2^20 accepted");
    assert!(v.contains("public inputs"), "caught by {v}");
}

/// A step that writes no result (a branch, a jump, a return without one, a halt) writes zero
/// to the scratch space: a witness that writes anything else there is refused at that step.
#[test]
fn a_step_without_a_result_writes_only_zero() {
    const BRANCHES: &str = r#"(module
      (import "zkmesh" "write_output" (func $out (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "run") (local i32)
        (local.set 0 (i32.const 3))
        (loop $l (br_if $l (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))
        (call $out (i32.const 0) (i32.const 1))))"#;
    let honest = circuit(BRANCHES, b"");
    assert_eq!(violation(circuit(BRANCHES, b"")), None);
    let silent: Vec<usize> = (honest.steps.iter().enumerate())
        .filter(|(_, s)| s.acc[3].space == Space::Scratch)
        .map(|(n, _)| n)
        .collect();
    let ops: Vec<Op> = silent.iter().map(|&n| honest.steps[n].instr.op).collect();
    assert!(ops.contains(&Op::BrNz) && ops.contains(&Op::Return) && ops.contains(&Op::Halt));
    for n in silent {
        let mut c = circuit(BRANCHES, b"");
        c.steps[n].acc[3].value = 7;
        let v = violation(c).unwrap_or_else(|| panic!("step {n}: a result of 7 accepted"));
        let op = honest.steps[n].instr.op;
        assert!(
            v.contains(&format!("step {n} ({op:?})")),
            "step {n}: caught by {v}"
        );
    }
}
