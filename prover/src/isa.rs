//! The lowered instruction set: what a WebAssembly function becomes before it is traced and
//! proved.
//!
//! The zkVM is a register machine over *slots*. WebAssembly's operand stack has a height known
//! at every instruction, so each stack position, local and call-frame link becomes a fixed slot
//! relative to the frame pointer `fp`, and each lowered instruction names its operand and result
//! slots directly. A step reads at most two slots (`a`, `b`), makes at most one more memory
//! access (`m`: a global, a memory word, an input or output word, a call link) and writes at most
//! one result (`z`). Branch targets are resolved program counters.
//!
//! Frame layout of a function with `p` parameters and `l` locals in all:
//!
//! ```text
//! fp + 0 .. p        parameters (locals 0..p)
//! fp + p             link: return pc + caller fp * 2^32
//! fp + p+1 .. l+1    the other locals (locals p..l), zeroed on entry
//! fp + l+1 ..        the operand stack
//! ```
//!
//! Addresses of every space share one numbering: `space << SPACE_SHIFT | index`.

/// Bits of an address below its space tag.
pub const SPACE_SHIFT: u32 = 28;
/// Largest index inside one space (exclusive). A memory of [`MAX_PAGES`] pages leaves room for
/// the word after its last one, which loads read as the second half of their window.
pub const SPACE_SIZE: u64 = 1 << SPACE_SHIFT;
/// Bits of a full address (space tag included).
pub const ADDR_BITS: u32 = SPACE_SHIFT + 3;

/// Address spaces of the data memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Space {
    /// Never written; every read returns zero. Unused access slots read index 0 here.
    Zero = 0,
    /// Slots: locals, links and operand stacks of all frames.
    Stack = 1,
    /// Global variables; index 0 holds the output length.
    Globals = 2,
    /// Linear memory, one 4-byte little-endian word per index.
    Memory = 3,
    /// The input: index 0 holds its length in bytes, index 1 + i its i-th 4-byte word.
    Input = 4,
    /// The output, one 4-byte word per index.
    Output = 5,
    /// Written by steps that must write somewhere but have no result; never read.
    Scratch = 6,
}

impl Space {
    pub fn base(self) -> u64 {
        (self as u64) << SPACE_SHIFT
    }

    pub fn from_code(code: u8) -> Option<Space> {
        Some(match code {
            0 => Space::Zero,
            1 => Space::Stack,
            2 => Space::Globals,
            3 => Space::Memory,
            4 => Space::Input,
            5 => Space::Output,
            6 => Space::Scratch,
            _ => return None,
        })
    }
}

/// Index in [`Space::Globals`] of the output length in bytes.
pub const GLOBAL_OUT_LEN: u64 = 0;
/// Index in [`Space::Globals`] of the flag set when a `memory.grow` past the task's memory
/// limit returned -1: a trap after it halts with [`status::OUT_OF_MEMORY`], as in the runtime.
pub const GLOBAL_LIMIT_HIT: u64 = 1;
/// Index in [`Space::Globals`] of the module's global 0.
pub const GLOBAL_FIRST: u64 = 2;

/// The operation of a lowered instruction. The discriminant is the opcode the circuit decodes;
/// 0 is deliberately not an opcode, so a fetch from an empty program slot can never execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// `z = imm`
    Const = 1,
    /// `z = a`
    Copy,
    Add,
    Sub,
    Mul,
    /// Unsigned division; the lowering makes sure the divisor is not zero, and builds signed
    /// division from it.
    DivU,
    RemU,
    And,
    Or,
    Xor,
    Shl,
    ShrU,
    ShrS,
    Rotl,
    Rotr,
    Clz,
    Ctz,
    Popcnt,
    /// `z = (a == 0)`
    Eqz,
    Eq,
    Ne,
    /// `z = (a < b)` unsigned; `gt` is lowered as `lt` with the operands swapped.
    LtU,
    LtS,
    /// `z = (a >= b)` unsigned; `le` is lowered as `ge` with the operands swapped.
    GeU,
    GeS,
    /// `z = a mod 2^32`
    Wrap,
    /// `z = sign-extend the low 8 << width bits of a` to the instruction's width.
    ExtendS,
    /// `z = if m != 0 { a } else { b }`, `m` read from the slot `imm`.
    Select,
    /// `z = m`, `m` read from `space[imm]`.
    GetM,
    /// `space[imm] = a` (written through the `m` access).
    SetM,
    /// `z = load(space, a + imm)` with the instruction's width and signedness.
    Load,
    /// `store(space, a + imm, b)` with the instruction's width.
    Store,
    /// `pc = imm`
    Jump,
    /// `pc = if a != 0 { imm } else { pc + 1 }`
    BrNz,
    /// `pc = if a == 0 { imm } else { pc + 1 }`
    BrZ,
    /// `pc = imm + min(a, b)` (`b` is the table length, a constant)
    BrTable,
    /// Call the function at `imm`: its frame starts at `fp + a`, its link goes to slot
    /// `fp + a + b`.
    Call,
    /// Call through a dispatch table: like `Call` (frame at `fp + b`, link at `fp + b + c`), to
    /// `pc = (imm mod 2^32) + min(a, imm >> 32)`. Each table entry jumps to its function, or
    /// halts with [`status::INDIRECT_CALL`] if the type differs or the entry is empty.
    CallIndirect,
    /// Return: the link is in slot `b`; a result (if `c == 1`) moves from slot `a` to slot 0.
    Return,
    /// `z = memory.size`
    MemSize,
    /// `z = memory.grow(a)`, up to `imm` pages (the module's declared maximum)
    MemGrow,
    /// Stop with exit status `imm` (0: returned normally). The machine stays here.
    Halt,
}

pub const OP_COUNT: usize = Op::Halt as usize;

impl Op {
    pub fn from_code(code: u8) -> Option<Op> {
        use Op::*;
        const ALL: [Op; OP_COUNT] = [
            Const,
            Copy,
            Add,
            Sub,
            Mul,
            DivU,
            RemU,
            And,
            Or,
            Xor,
            Shl,
            ShrU,
            ShrS,
            Rotl,
            Rotr,
            Clz,
            Ctz,
            Popcnt,
            Eqz,
            Eq,
            Ne,
            LtU,
            LtS,
            GeU,
            GeS,
            Wrap,
            ExtendS,
            Select,
            GetM,
            SetM,
            Load,
            Store,
            Jump,
            BrNz,
            BrZ,
            BrTable,
            Call,
            CallIndirect,
            Return,
            MemSize,
            MemGrow,
            Halt,
        ];
        (code as usize)
            .checked_sub(1)
            .and_then(|i| ALL.get(i))
            .copied()
    }
}

/// Exit statuses a lowered program can halt with.
pub mod status {
    pub const OK: u64 = 0;
    pub const UNREACHABLE: u64 = 1;
    pub const INDIRECT_CALL: u64 = 2;
    /// `memory.copy` or `memory.fill` out of bounds (checked before any byte moves).
    pub const OUT_OF_BOUNDS: u64 = 3;
    pub const DIVIDE_BY_ZERO: u64 = 4;
    /// `div_s` of the most negative value by -1.
    pub const INTEGER_OVERFLOW: u64 = 5;
    /// A trap after a `memory.grow` past the run's memory limit returned -1 (the runtime
    /// reports such a run as out of memory).
    pub const OUT_OF_MEMORY: u64 = 6;
}

/// One lowered instruction.
///
/// `a`, `b`, `c` are slot offsets from `fp` unless the operation says otherwise; `imm` is a
/// constant, an offset, a target or a slot, as the operation says. `wide` selects 64-bit
/// arithmetic; `width` is log2 of the access size in bytes for loads and stores (and of the source
/// size for `ExtendS`); `signed` asks loads to sign-extend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Instr {
    pub op: Op,
    pub wide: bool,
    pub width: u8,
    pub signed: bool,
    pub space: Space,
    /// A binary operation's second operand is `imm` instead of slot `b` (a constant folded
    /// into its use).
    pub imm_b: bool,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub imm: u64,
}

/// Bits of each slot-offset field in the packed instruction.
pub const SLOT_BITS: u32 = 16;
/// Largest slot offset a lowered instruction can name (exclusive).
pub const MAX_SLOT: u32 = 1 << SLOT_BITS;
/// Bits of the packed flags: opcode (6), wide (1), width (2), signed (1), space (3),
/// immediate second operand (1).
pub const FLAG_BITS: u32 = 14;

impl Instr {
    pub fn new(op: Op) -> Instr {
        Instr {
            op,
            wide: false,
            width: 0,
            signed: false,
            space: Space::Zero,
            imm_b: false,
            a: 0,
            b: 0,
            c: 0,
            imm: 0,
        }
    }

    /// The small fields packed into one integer below 2^(FLAG_BITS + 3 * SLOT_BITS):
    /// `flags | a << 14 | b << 30 | c << 46`.
    pub fn packed(&self) -> u64 {
        debug_assert!(self.a < MAX_SLOT && self.b < MAX_SLOT && self.c < MAX_SLOT);
        self.flags()
            | (self.a as u64) << FLAG_BITS
            | (self.b as u64) << (FLAG_BITS + SLOT_BITS)
            | (self.c as u64) << (FLAG_BITS + 2 * SLOT_BITS)
    }

    pub fn flags(&self) -> u64 {
        (self.op as u64)
            | (self.wide as u64) << 6
            | (self.width as u64) << 7
            | (self.signed as u64) << 9
            | (self.space as u64) << 10
            | (self.imm_b as u64) << 13
    }
}

/// A lowered module: everything the prover and the verifier agree on before any input is seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub code: Vec<Instr>,
    /// Initial values of the globals space (index 0 is the output length, always 0).
    pub globals: Vec<u64>,
    /// Initial linear memory: the words from `data_base` on (all others start at zero).
    pub data_base: u64,
    pub data: Vec<u64>,
    /// Memory size in pages at the start, and the most it may grow to.
    pub mem_pages: u64,
    pub mem_max_pages: u64,
}

pub const PAGE: u64 = 65536;
/// A zkVM memory is at most this many pages (the word index must fit in a space).
pub const MAX_PAGES: u64 = SPACE_SIZE * WORD / PAGE - 1;

/// Bytes per word of linear memory, input and output. Four, so that an `i64` access at a
/// 4-aligned address (which rustc emits freely) spans exactly two words.
pub const WORD: u64 = 4;
