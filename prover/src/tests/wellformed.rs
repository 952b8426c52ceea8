//! The program check: every program a lowering could get wrong in a way the circuit would
//! prove with another meaning than the interpreter's is refused before a statement exists,
//! at the prover and at the verifier alike.

use crate::circuit::{FitError, Statement};
use crate::isa::{Instr, MAX_PAGES, MAX_SLOT, Op, PAGE, Program, SPACE_SIZE, Space, WORD};
use crate::lower::lower;

use super::circuit::TINY;

/// Uses every instruction kind the check looks at: a load, a store, globals, select, a
/// br_table, calls direct and indirect, memory.grow and sign extension.
const ALL_KINDS: &str = r#"(module
  (import "zkmesh" "write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1 4)
  (global $g (mut i32) (i32.const 3))
  (table 2 funcref)
  (elem (i32.const 0) $id $id)
  (type $t (func (param i32) (result i32)))
  (func $id (param i32) (result i32) (local.get 0))
  (func (export "run") (local i32)
    (local.set 0 (i32.extend8_s (i32.load (i32.const 0))))
    (block (block (br_table 0 1 (global.get $g))))
    (global.set $g (select (local.get 0) (i32.const 2) (global.get $g)))
    (drop (memory.grow (i32.const 1)))
    (i32.store (i32.const 0) (call_indirect (type $t) (call $id (i32.const 1)) (i32.const 1)))
    (call $out (i32.const 0) (i32.const 4))))"#;

fn program() -> Program {
    let p = lower(&wat::parse_str(ALL_KINDS).unwrap()).unwrap();
    statement(&p).expect("the lowering's own program is well formed");
    p
}

fn statement(p: &Program) -> Result<Statement, FitError> {
    let class = crate::circuit::Class {
        program: 256,
        ..TINY
    };
    Statement::new(&class, p, b"", b"", 0, 0, 0)
}

/// The first instruction running `op`.
fn at(p: &Program, op: Op) -> usize {
    (p.code.iter().position(|i| i.op == op)).unwrap_or_else(|| panic!("no {op:?}"))
}

fn refused(p: &Program, what: &str) {
    match statement(p) {
        Err(FitError::Malformed(why)) => assert!(why.contains(what), "{why}; expected {what}"),
        other => panic!("expected a malformed program ({what}), got {other:?}"),
    }
}

fn edited(edit: impl FnOnce(&mut Program)) -> Program {
    let mut p = program();
    edit(&mut p);
    p
}

fn instr(op: Op, edit: impl FnOnce(&mut Instr)) -> Program {
    edited(|p| {
        let k = at(p, op);
        edit(&mut p.code[k]);
    })
}

#[test]
fn fields_that_do_not_fit_their_bits_are_refused() {
    // Each of these packs into a word that decodes as another instruction.
    refused(&instr(Op::Add, |i| i.a = MAX_SLOT), "a = 65536");
    refused(&instr(Op::Add, |i| i.b = MAX_SLOT + 3), "b = 65539");
    refused(&instr(Op::Add, |i| i.c = u32::MAX), "c = ");
    refused(&instr(Op::Load, |i| i.width = 4), "width 4");
    refused(
        &instr(Op::Copy, |i| i.imm_b = true),
        "immediate second operand",
    );
}

#[test]
fn spaces_outside_an_operation_s_own_are_refused() {
    refused(&instr(Op::Store, |i| i.space = Space::Input), "space Input");
    refused(&instr(Op::Store, |i| i.space = Space::Stack), "space Stack");
    refused(
        &instr(Op::Load, |i| i.space = Space::Globals),
        "space Globals",
    );
    refused(
        &instr(Op::GetM, |i| i.space = Space::Memory),
        "space Memory",
    );
    refused(&instr(Op::SetM, |i| i.space = Space::Input), "space Input");
    refused(&instr(Op::Add, |i| i.space = Space::Memory), "space Memory");
    refused(
        &instr(Op::GetM, |i| i.imm = SPACE_SIZE),
        "outside its space",
    );
    refused(
        &instr(Op::SetM, |i| i.imm = SPACE_SIZE + 1),
        "outside its space",
    );
}

#[test]
fn targets_outside_the_program_are_refused() {
    let len = program().code.len() as u64;
    refused(&instr(Op::Jump, |i| i.imm = len), "target");
    refused(&instr(Op::BrZ, |i| i.imm = len + 7), "target");
    refused(&instr(Op::Call, |i| i.imm = u64::MAX), "target");
    // The last br_table entry (the default) past the end.
    refused(&instr(Op::BrTable, |i| i.imm = len - i.b as u64), "target");
    // A call_indirect table whose last entry is past the end.
    refused(
        &instr(Op::CallIndirect, |i| i.imm = (len - 1) | 1 << 32),
        "target",
    );
}

#[test]
fn operands_with_another_meaning_in_the_circuit_are_refused() {
    refused(
        &instr(Op::Select, |i| i.imm = MAX_SLOT as u64),
        "condition slot",
    );
    refused(&instr(Op::Return, |i| i.c = 2), "c = 2");
    refused(
        &instr(Op::MemGrow, |i| i.imm = MAX_PAGES + 1),
        "a maximum of",
    );
    refused(&instr(Op::ExtendS, |i| i.width = 3), "sign extension");
    refused(
        &instr(Op::ExtendS, |i| {
            i.width = 2;
            i.wide = false
        }),
        "sign extension from 32 bits in a 32-bit",
    );
}

#[test]
fn memories_and_data_outside_their_bounds_are_refused() {
    refused(&edited(|p| p.mem_max_pages = MAX_PAGES + 1), "pages");
    refused(&edited(|p| p.mem_pages = p.mem_max_pages + 1), "pages");
    refused(
        &edited(|p| {
            p.data = vec![1; 4];
            p.data_base = p.mem_pages * PAGE / WORD - 3;
        }),
        "initial data",
    );
    refused(
        &edited(|p| {
            p.data = vec![1];
            p.data_base = u64::MAX;
        }),
        "initial data",
    );
    refused(&edited(|p| p.globals[0] = 5), "output length");
    refused(
        &edited(|p| p.globals[crate::isa::GLOBAL_LIMIT_HIT as usize] = 1),
        "memory-limit flag",
    );
}
