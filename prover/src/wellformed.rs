//! What the circuit assumes of a program, checked before any statement is built from it.
//!
//! The verifier lowers the module itself, so a program is only as trustworthy as the lowering.
//! The circuit proves what the program's *words* say, decoded its own way; the interpreter and
//! the soundness argument reason about the [`Instr`]s. The two agree only for instructions whose
//! fields fit their bits and whose operands mean what both sides think. [`check`] refuses every
//! program outside that set, so a lowering bug becomes an error at the verifier and the prover,
//! never a statement whose meaning differs from the run's.
//!
//! What is checked, per instruction:
//! - the fields fit their bits (`a`, `b`, `c` below [`MAX_SLOT`], `width` below 4), so the
//!   packed word decodes to this instruction and no other;
//! - an immediate second operand only on a binary operation;
//! - a space only where the operation uses one, and only the spaces its access may touch
//!   (loads: memory, input, output; stores: memory, output; `GetM`: globals, input; `SetM`:
//!   globals), with a `GetM`/`SetM` index inside its space;
//! - targets inside the program (jumps, branches, calls, every `br_table` entry, every
//!   `call_indirect` entry);
//! - `Select`'s condition slot below [`MAX_SLOT`]; `Return` moves a result or not (`c` is 0 or
//!   1); `memory.grow`'s maximum at most [`MAX_PAGES`]; `ExtendS` from 8, 16 or 32 bits, 32 only
//!   in a wide operation.
//!
//! and for the program: the memory's initial size at most its maximum, at most [`MAX_PAGES`];
//! the initial data inside the initial memory; the output length (global 0) starting at zero.

use crate::isa::{GLOBAL_OUT_LEN, Instr, MAX_PAGES, MAX_SLOT, Op, PAGE, Program, SPACE_SIZE};
use crate::isa::{Space, WORD};

/// Whether `op` takes a second operand (a slot, or the immediate when `imm_b`).
pub fn is_binary(op: Op) -> bool {
    matches!(
        op,
        Op::Add
            | Op::Sub
            | Op::Mul
            | Op::DivU
            | Op::RemU
            | Op::And
            | Op::Or
            | Op::Xor
            | Op::Shl
            | Op::ShrU
            | Op::ShrS
            | Op::Rotl
            | Op::Rotr
            | Op::Eq
            | Op::Ne
            | Op::LtU
            | Op::LtS
            | Op::GeU
            | Op::GeS
    )
}

/// A lowered program that breaks an assumption of the circuit: the first instruction (by its
/// pc) or property that breaks one, in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// Checks `program` against every assumption above.
pub fn check(program: &Program) -> Result<(), Malformed> {
    check_text(program).map_err(Malformed)
}

fn check_text(program: &Program) -> Result<(), String> {
    if program.mem_max_pages > MAX_PAGES || program.mem_pages > program.mem_max_pages {
        return Err(format!(
            "a memory of {} pages growing to {} (the zkVM allows {MAX_PAGES})",
            program.mem_pages, program.mem_max_pages
        ));
    }
    let data_end = (program.data_base)
        .checked_add(program.data.len() as u64)
        .and_then(|w| w.checked_mul(WORD));
    if data_end.is_none_or(|end| end > program.mem_pages * PAGE) {
        return Err(format!(
            "initial data of {} words at word {} outside the initial memory of {} pages",
            program.data.len(),
            program.data_base,
            program.mem_pages
        ));
    }
    if program
        .globals
        .get(GLOBAL_OUT_LEN as usize)
        .is_some_and(|&g| g != 0)
    {
        return Err("the output length does not start at zero".into());
    }
    if program
        .globals
        .get(crate::isa::GLOBAL_LIMIT_HIT as usize)
        .is_some_and(|&g| g != 0)
    {
        return Err("the memory-limit flag does not start at zero".into());
    }
    let len = program.code.len() as u64;
    for (pc, i) in program.code.iter().enumerate() {
        instruction(i, len).map_err(|why| format!("instruction {pc} ({:?}): {why}", i.op))?;
    }
    Ok(())
}

fn instruction(i: &Instr, len: u64) -> Result<(), String> {
    let slot = |name: &str, v: u64| -> Result<(), String> {
        if v >= MAX_SLOT as u64 {
            return Err(format!("{name} = {v} is not a slot below {MAX_SLOT}"));
        }
        Ok(())
    };
    slot("a", i.a as u64)?;
    slot("b", i.b as u64)?;
    slot("c", i.c as u64)?;
    if i.width > 3 {
        return Err(format!("width {} (at most 3)", i.width));
    }
    if i.imm_b && !is_binary(i.op) {
        return Err("an immediate second operand on an operation with one operand".into());
    }
    let spaces: &[Space] = match i.op {
        Op::Load => &[Space::Memory, Space::Input, Space::Output],
        Op::Store => &[Space::Memory, Space::Output],
        Op::GetM => &[Space::Globals, Space::Input],
        Op::SetM => &[Space::Globals],
        _ => &[Space::Zero],
    };
    if !spaces.contains(&i.space) {
        return Err(format!("space {:?} (allowed: {spaces:?})", i.space));
    }
    let target = |t: u64| -> Result<(), String> {
        if t >= len {
            return Err(format!(
                "target {t} outside the program of {len} instructions"
            ));
        }
        Ok(())
    };
    match i.op {
        Op::GetM | Op::SetM if i.imm >= SPACE_SIZE => {
            Err(format!("index {} outside its space", i.imm))
        }
        Op::Select => slot("the condition slot", i.imm),
        Op::Jump | Op::BrNz | Op::BrZ | Op::Call => target(i.imm),
        // Entries imm ..= imm + b (the last one the default).
        Op::BrTable => target(i.imm.saturating_add(i.b as u64)),
        // Entries (imm mod 2^32) ..= (imm mod 2^32) + (imm >> 32).
        Op::CallIndirect => target((i.imm & 0xffff_ffff) + (i.imm >> 32)),
        Op::Return if i.c > 1 => Err(format!("c = {} (a result moves, 1, or not, 0)", i.c)),
        Op::MemGrow if i.imm > MAX_PAGES => Err(format!(
            "a maximum of {} pages (at most {MAX_PAGES})",
            i.imm
        )),
        Op::ExtendS if i.width > 2 || (i.width == 2 && !i.wide) => Err(format!(
            "sign extension from {} bits in a {}-bit operation",
            8 << i.width,
            if i.wide { 64 } else { 32 }
        )),
        _ => Ok(()),
    }
}
