//! The tracing interpreter: runs a lowered [`Program`] and records, for every step, the
//! instruction it fetched, the registers it started from and the four memory accesses it made.
//! That record is the witness the circuit checks.
//!
//! Semantics follow WebAssembly exactly for everything in the subset; the differential tests
//! compare output and exit with wasmtime on every guest and on generated modules.

use crate::isa::{GLOBAL_OUT_LEN, Instr, Op, PAGE, Program, SPACE_SIZE, Space, WORD, status};

/// One memory access of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub space: Space,
    pub index: u64,
    pub value: u64,
    pub write: bool,
}

impl Access {
    /// The access an unused slot makes: a read of the zero space.
    pub const NONE_READ: Access = Access {
        space: Space::Zero,
        index: 0,
        value: 0,
        write: false,
    };
    /// The access an unused write slot makes: a write of zero to the scratch space.
    pub const NONE_WRITE: Access = Access {
        space: Space::Scratch,
        index: 0,
        value: 0,
        write: true,
    };

    pub fn addr(&self) -> u64 {
        self.space.base() | self.index
    }
}

/// Registers at the start of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Regs {
    pub pc: u64,
    pub fp: u64,
    /// Memory size in pages.
    pub ms: u64,
}

/// One executed step: where it started, what it fetched, and its accesses in slot order
/// (`a` read, `b` read, `m` read or write, `z` write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub regs: Regs,
    pub instr: Instr,
    pub acc: [Access; 4],
}

impl Step {
    /// The second operand: the immediate when the instruction has one, else what `b` read.
    pub fn y(&self) -> u64 {
        if self.instr.imm_b {
            self.instr.imm
        } else {
            self.acc[1].value
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Reached a `Halt` with this status: 0 is a normal return, others are the traps the zkVM
    /// proves (`unreachable`, failed indirect calls).
    Halted(u64),
    /// A WebAssembly trap the zkVM can execute but not yet prove.
    Trap(String),
    /// Ran `max_steps` steps without halting.
    StepLimit,
}

impl Exit {
    /// True when the run ended in any kind of trap (as wasmtime would report it).
    pub fn is_trap(&self) -> bool {
        match self {
            Exit::Trap(_) => true,
            Exit::Halted(s) => *s != status::OK,
            Exit::StepLimit => false,
        }
    }
}

/// The result of running a program.
#[derive(Clone, Debug)]
pub struct Trace {
    pub steps: Vec<Step>,
    pub exit: Exit,
    pub output: Vec<u8>,
    /// Registers after the last step.
    pub end: Regs,
    /// Why this trace cannot be proved, although it ran (an access across a word boundary).
    pub unprovable: Option<String>,
}

impl Trace {
    /// Steps before the machine halted (the halting step itself excluded).
    pub fn executed(&self) -> usize {
        self.steps
            .iter()
            .position(|s| s.instr.op == Op::Halt)
            .unwrap_or(self.steps.len())
    }
}

/// Limits of an interpreter run.
#[derive(Clone, Copy, Debug)]
pub struct RunLimits {
    pub max_steps: u64,
    pub max_output: usize,
    /// Largest stack slot index (a frame deeper than this is a stack overflow).
    pub max_stack: u64,
    /// Keep the per-step record (off for plain execution).
    pub record: bool,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_steps: 100_000_000,
            max_output: 16 << 20,
            max_stack: 1 << 20,
            record: true,
        }
    }
}

struct Machine<'p> {
    regs: Regs,
    stack: Vec<u64>,
    globals: Vec<u64>,
    mem: Vec<u8>,
    input: &'p [u8],
    output: Vec<u8>,
    limits: RunLimits,
    unprovable: Option<String>,
}

enum Flow {
    Next,
    Halt(u64),
    Trap(String),
}

const MASK32: u64 = 0xffff_ffff;

fn mask(wide: bool) -> u64 {
    if wide { u64::MAX } else { MASK32 }
}

fn bits(wide: bool) -> u32 {
    if wide { 64 } else { 32 }
}

/// Sign-extends the low `n` bits of `v` to 64 bits.
fn sext(v: u64, n: u32) -> u64 {
    (((v << (64 - n)) as i64) >> (64 - n)) as u64
}

impl<'p> Machine<'p> {
    fn slot(&mut self, index: u64) -> &mut u64 {
        let i = index as usize;
        if i >= self.stack.len() {
            self.stack.resize(i + 1, 0);
        }
        &mut self.stack[i]
    }

    fn read_slot(&mut self, off: u32) -> Access {
        let index = self.regs.fp + off as u64;
        let value = *self.slot(index);
        Access {
            space: Space::Stack,
            index,
            value,
            write: false,
        }
    }

    fn write_slot(&mut self, off: u32, value: u64) -> Access {
        self.write_stack(self.regs.fp + off as u64, value)
    }

    fn write_stack(&mut self, index: u64, value: u64) -> Access {
        *self.slot(index) = value;
        Access {
            space: Space::Stack,
            index,
            value,
            write: true,
        }
    }

    /// The byte at `addr` of a byte-addressed space (zero past its end). The input space starts
    /// with its length as a word.
    fn byte(&self, space: Space, addr: u64) -> u64 {
        let a = addr as usize;
        let b = match space {
            Space::Memory => self.mem.get(a).copied(),
            Space::Output => self.output.get(a).copied(),
            Space::Input if addr < WORD => Some((self.input.len() as u64 >> (8 * addr)) as u8),
            Space::Input => self.input.get(a - WORD as usize).copied(),
            _ => unreachable!("not byte-addressed"),
        };
        b.unwrap_or(0) as u64
    }

    fn set_byte(&mut self, space: Space, addr: u64, b: u64) {
        let a = addr as usize;
        match space {
            Space::Memory => self.mem[a] = b as u8,
            Space::Output => {
                if self.output.len() <= a {
                    self.output.resize(a + 1, 0);
                }
                self.output[a] = b as u8;
            }
            _ => unreachable!("not writable byte by byte"),
        }
    }

    fn word(&self, space: Space, index: u64) -> u64 {
        match space {
            Space::Globals => self.globals.get(index as usize).copied().unwrap_or(0),
            Space::Memory | Space::Input | Space::Output => (0..WORD)
                .map(|k| self.byte(space, index * WORD + k) << (8 * k))
                .sum(),
            _ => 0,
        }
    }

    fn set_word(&mut self, space: Space, index: u64, value: u64) {
        match space {
            Space::Globals => self.globals[index as usize] = value,
            _ => unreachable!("globals only"),
        }
    }

    fn access(&self, space: Space, index: u64, write: bool) -> Access {
        Access {
            space,
            index,
            value: self.word(space, index),
            write,
        }
    }

    /// Checks an access of `size` bytes at byte address `ea` of `space`.
    fn check(&mut self, space: Space, ea: u64, size: u64) -> Result<(), String> {
        match space {
            Space::Memory if ea + size > self.regs.ms * PAGE => {
                Err("out of bounds memory access".into())
            }
            Space::Output if ea + size > self.limits.max_output as u64 => {
                Err("output limit exceeded".into())
            }
            _ => Ok(()),
        }
    }

    fn cannot_prove(&mut self, why: String) {
        if self.unprovable.is_none() {
            self.unprovable = Some(why);
        }
    }

    fn step(&mut self, i: &Instr, acc: &mut [Access; 4]) -> Flow {
        let w = i.wide;
        let m = mask(w);
        let n = bits(w);
        let pc = self.regs.pc;
        let mut next = pc + 1;
        macro_rules! trap {
            ($msg:expr) => {
                return Flow::Trap($msg.to_string())
            };
        }
        match i.op {
            Op::Const => acc[3] = self.write_slot(i.c, i.imm),
            Op::Copy => {
                acc[0] = self.read_slot(i.a);
                acc[3] = self.write_slot(i.c, acc[0].value);
            }
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
            | Op::GeS => {
                acc[0] = self.read_slot(i.a);
                let y = if i.imm_b {
                    i.imm
                } else {
                    acc[1] = self.read_slot(i.b);
                    acc[1].value
                };
                let x = acc[0].value;
                let (xs, ys) = (sext(x, n) as i64, sext(y, n) as i64);
                let k = (y % n as u64) as u32;
                let z = match i.op {
                    Op::Add => x.wrapping_add(y) & m,
                    Op::Sub => x.wrapping_sub(y) & m,
                    Op::Mul => x.wrapping_mul(y) & m,
                    Op::DivU | Op::RemU if y == 0 => trap!("integer divide by zero"),
                    Op::DivU => x / y,
                    Op::RemU => x % y,
                    Op::And => x & y,
                    Op::Or => x | y,
                    Op::Xor => x ^ y,
                    Op::Shl => (x << k) & m,
                    Op::ShrU => x >> k,
                    Op::ShrS => ((xs >> k) as u64) & m,
                    Op::Rotl if w => x.rotate_left(k),
                    Op::Rotl => (x as u32).rotate_left(k) as u64,
                    Op::Rotr if w => x.rotate_right(k),
                    Op::Rotr => (x as u32).rotate_right(k) as u64,
                    Op::Eq => (x == y) as u64,
                    Op::Ne => (x != y) as u64,
                    Op::LtU => (x < y) as u64,
                    Op::LtS => (xs < ys) as u64,
                    Op::GeU => (x >= y) as u64,
                    Op::GeS => (xs >= ys) as u64,
                    _ => unreachable!(),
                };
                acc[3] = self.write_slot(i.c, z);
            }
            Op::Clz | Op::Ctz | Op::Popcnt | Op::Eqz | Op::Wrap | Op::ExtendS => {
                acc[0] = self.read_slot(i.a);
                let x = acc[0].value;
                let z = match i.op {
                    Op::Clz if w => x.leading_zeros() as u64,
                    Op::Clz => (x as u32).leading_zeros() as u64,
                    Op::Ctz if w => x.trailing_zeros() as u64,
                    Op::Ctz => (x as u32).trailing_zeros() as u64,
                    Op::Popcnt => x.count_ones() as u64,
                    Op::Eqz => (x == 0) as u64,
                    Op::Wrap => x & MASK32,
                    Op::ExtendS => sext(x, 8 << i.width) & m,
                    _ => unreachable!(),
                };
                acc[3] = self.write_slot(i.c, z);
            }
            Op::Select => {
                acc[0] = self.read_slot(i.a);
                acc[1] = self.read_slot(i.b);
                acc[2] = self.read_slot(i.imm as u32);
                let z = if acc[2].value != 0 {
                    acc[0].value
                } else {
                    acc[1].value
                };
                acc[3] = self.write_slot(i.c, z);
            }
            Op::GetM => {
                acc[2] = Access {
                    space: i.space,
                    index: i.imm,
                    value: self.word(i.space, i.imm),
                    write: false,
                };
                acc[3] = self.write_slot(i.c, acc[2].value);
            }
            Op::SetM => {
                acc[0] = self.read_slot(i.a);
                self.set_word(i.space, i.imm, acc[0].value);
                acc[2] = Access {
                    space: i.space,
                    index: i.imm,
                    value: acc[0].value,
                    write: true,
                };
            }
            Op::Load => {
                acc[0] = self.read_slot(i.a);
                let size = 1u64 << i.width;
                let ea = acc[0].value + i.imm;
                if let Err(e) = self.check(i.space, ea, size) {
                    trap!(e)
                }
                // The window is the word holding the first byte and the one after it.
                let (word, off) = (ea / WORD, ea % WORD);
                acc[1] = self.access(i.space, word, false);
                acc[2] = self.access(i.space, word + 1, false);
                if off + size > 2 * WORD {
                    self.cannot_prove(format!(
                        "an 8-byte load at address {ea:#x}, which is not 4-aligned; the zkVM \
                         proves 8-byte accesses at 4-aligned addresses only"
                    ));
                }
                let v = (0..size).fold(0, |v, k| v | self.byte(i.space, ea + k) << (8 * k));
                let z = if i.signed {
                    sext(v, 8 * size as u32) & m
                } else {
                    v
                };
                acc[3] = self.write_slot(i.c, z);
            }
            Op::Store => {
                acc[0] = self.read_slot(i.a);
                acc[1] = self.read_slot(i.b);
                let size = 1u64 << i.width;
                let ea = acc[0].value + i.imm;
                if let Err(e) = self.check(i.space, ea, size) {
                    trap!(e)
                }
                let (word, off) = (ea / WORD, ea % WORD);
                if size == 8 && off != 0 {
                    self.cannot_prove(format!(
                        "an 8-byte store at address {ea:#x}, which is not 4-aligned; the zkVM \
                         proves 8-byte accesses at 4-aligned addresses only"
                    ));
                } else if size < 8 && off + size > WORD {
                    self.cannot_prove(format!(
                        "a {size}-byte store at address {ea:#x} across a 4-byte boundary; the \
                         zkVM proves stores of up to 4 bytes inside one aligned 4-byte word"
                    ));
                }
                if size < 8 {
                    acc[2] = self.access(i.space, word, false);
                }
                for k in 0..size {
                    self.set_byte(i.space, ea + k, (acc[1].value >> (8 * k)) & 0xff);
                }
                if size == 8 {
                    acc[2] = self.access(i.space, word, true);
                    acc[3] = self.access(i.space, word + 1, true);
                } else {
                    acc[3] = self.access(i.space, word, true);
                }
            }
            Op::Jump => next = i.imm,
            Op::BrNz | Op::BrZ => {
                acc[0] = self.read_slot(i.a);
                if (acc[0].value != 0) == (i.op == Op::BrNz) {
                    next = i.imm;
                }
            }
            Op::BrTable => {
                acc[0] = self.read_slot(i.a);
                next = i.imm + acc[0].value.min(i.b as u64);
            }
            Op::Call | Op::CallIndirect => {
                let (frame, link_off) = if i.op == Op::Call {
                    (i.a, i.b)
                } else {
                    acc[0] = self.read_slot(i.a);
                    next = (i.imm & MASK32) + acc[0].value.min(i.imm >> 32);
                    (i.b, i.c)
                };
                if i.op == Op::Call {
                    next = i.imm;
                }
                let fp = self.regs.fp + frame as u64;
                if fp + crate::isa::MAX_SLOT as u64 > self.limits.max_stack {
                    trap!("call stack exhausted");
                }
                let link = (pc + 1) | self.regs.fp << 32;
                acc[3] = self.write_stack(fp + link_off as u64, link);
                self.regs.fp = fp;
            }
            Op::Return => {
                acc[0] = self.read_slot(i.a);
                acc[2] = self.read_slot(i.b);
                let link = acc[2].value;
                if i.c == 1 {
                    acc[3] = self.write_slot(0, acc[0].value);
                }
                next = link & MASK32;
                self.regs.fp = link >> 32;
            }
            Op::MemSize => acc[3] = self.write_slot(i.c, self.regs.ms),
            Op::MemGrow => {
                acc[0] = self.read_slot(i.a);
                let old = self.regs.ms;
                let z = if old + acc[0].value <= i.imm {
                    self.regs.ms = old + acc[0].value;
                    self.mem.resize((self.regs.ms * PAGE) as usize, 0);
                    old
                } else {
                    MASK32
                };
                acc[3] = self.write_slot(i.c, z);
            }
            Op::Halt => return Flow::Halt(i.imm),
        }
        self.regs.pc = next;
        Flow::Next
    }
}

/// Runs `program` on `input`.
pub fn run(program: &Program, input: &[u8], limits: RunLimits) -> Trace {
    let mut globals = program.globals.clone();
    globals[GLOBAL_OUT_LEN as usize] = 0;
    let mut mem = vec![0u8; (program.mem_pages * PAGE) as usize];
    for (k, w) in program.data.iter().enumerate() {
        let at = ((program.data_base + k as u64) * WORD) as usize;
        mem[at..at + WORD as usize].copy_from_slice(&(*w as u32).to_le_bytes());
    }
    let regs = Regs {
        pc: 0,
        fp: 0,
        ms: program.mem_pages,
    };
    execute(program, regs, globals, mem, input, limits)
}

/// Runs `program` from the registers `regs` with every word of memory zero (stack slots,
/// globals, linear memory, input and output): what a machine whose memory was wiped between
/// two steps does next. Tests use it to build the witness of an attack that wipes memory.
pub fn resume_wiped(program: &Program, regs: Regs, limits: RunLimits) -> Trace {
    let globals = vec![0; program.globals.len()];
    let mem = vec![0u8; (regs.ms * PAGE) as usize];
    execute(program, regs, globals, mem, &[], limits)
}

fn execute(
    program: &Program,
    regs: Regs,
    globals: Vec<u64>,
    mem: Vec<u8>,
    input: &[u8],
    limits: RunLimits,
) -> Trace {
    let mut m = Machine {
        regs,
        stack: vec![0; 1024],
        globals,
        mem,
        input,
        output: vec![],
        limits,
        unprovable: None,
    };
    let limits = m.limits;
    debug_assert!(limits.max_stack < SPACE_SIZE);
    let mut steps = vec![];
    let mut count = 0u64;
    let exit = loop {
        if count == limits.max_steps {
            break Exit::StepLimit;
        }
        let Some(instr) = program.code.get(m.regs.pc as usize).copied() else {
            break Exit::Trap(format!("pc {} outside the program", m.regs.pc));
        };
        let regs = m.regs;
        let mut acc = [
            Access::NONE_READ,
            Access::NONE_READ,
            Access::NONE_READ,
            Access::NONE_WRITE,
        ];
        let flow = m.step(&instr, &mut acc);
        count += 1;
        if limits.record && !matches!(flow, Flow::Trap(_)) {
            steps.push(Step { regs, instr, acc });
        }
        match flow {
            Flow::Next => {}
            Flow::Halt(s) => break Exit::Halted(s),
            Flow::Trap(t) => break Exit::Trap(t),
        }
    };
    let out_len = m.globals[GLOBAL_OUT_LEN as usize] as usize;
    let mut output = m.output;
    output.resize(out_len, 0);
    Trace {
        steps,
        exit,
        output,
        end: m.regs,
        unprovable: m.unprovable,
    }
}
