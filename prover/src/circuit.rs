//! The universal circuit: one per size class, proving that a lowered program ran one segment of
//! a run on an input: from a register and memory state to the next, or to a halt with an output.
//!
//! # Shape
//!
//! - **Public inputs** ([`Statement`]): step start and count, whether the segment halts and
//!   with what status, register state in and out, Poseidon commitments to the memory state in
//!   and out, the whole program (fixed capacity per class, so one setup serves every module),
//!   the initial globals and data window and the input (zero after the first segment), and the
//!   output (zero unless the segment halts). The verifier computes every one of them itself
//!   from the module, the input, the claimed output and the previous segment's claim.
//! - **Steps**: each step fetches `(packed, imm)` at `pc`, decodes it into a one-hot opcode and
//!   range-checked fields, reads two slots, makes one more access, writes one result, and
//!   computes the next `pc`, `fp` and memory size. Operations are checked by gated constraints
//!   over shared bit decompositions (unit U of the result or first operand, Y of the second
//!   operand, H, D and E of auxiliary values).
//! - **Fetch check**: the step fetches and the program (as initial entries) are routed through
//!   a Beneš network into `pc` order; consecutive entries either repeat the `pc` with the same
//!   contents or move to the next `pc`, which must be the program's own entry.
//! - **Memory check**: every data access (initial values, the state in as writes, four per
//!   step, final reads of the output, the state out as final reads) is routed into
//!   `(address, time)` order; the sorted side checks strict order with a range check, that
//!   every read returns the previous access's value at that address (or zero at its first
//!   access), and, in a segment that does not halt, that the last access of every address
//!   holding a value other than zero is a final read: the state out is complete, so the next
//!   segment, which starts from it and reads zero everywhere else, sees the same memory.

use ark_bn254::Fr;
use ark_ff::{One, PrimeField, Zero};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef};

use crate::benes;
use crate::isa::{ADDR_BITS, FLAG_BITS, GLOBAL_OUT_LEN, Instr, OP_COUNT, Op, SLOT_BITS, Space};
use crate::isa::{Program, SPACE_SHIFT, WORD};
use crate::poseidon;
use crate::r1cs::{Cs, L, R, bits_of, f, pow2, sum};
use crate::trace::{Exit, Step, Trace};

/// Largest stack slot index plus one (a call deeper than this does not fit); the interpreter
/// traps at the same bound.
pub const MAX_STACK: u64 = 1 << FP_BITS;
/// Bits of a frame pointer.
const FP_BITS: usize = 20;
/// Bits of a memory size in pages: [`crate::isa::MAX_PAGES`] is `2^14 - 1`.
const MS_BITS: usize = 14;
const _: () = assert!(crate::isa::MAX_PAGES < 1 << MS_BITS);

/// A size class: capacities of everything that varies between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub name: &'static str,
    pub steps: usize,
    pub program: usize,
    pub globals: usize,
    pub data: usize,
    /// Input capacity in 4-byte words.
    pub input: usize,
    /// Output capacity in 4-byte words.
    pub output: usize,
    /// Capacity of the memory state carried between segments, in (address, value) entries.
    pub state: usize,
}

/// The public inputs, as integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// Who proves what: a value derived from the task, the segment's index and the proving
    /// node ([`crate::zkvm::Binding`]), so that a proof (or a re-randomised copy of it) is worth
    /// nothing to another node or for another task.
    pub binding: Fr,
    /// Steps executed before this segment (0 for the first). Not a public input: the chain
    /// verifier derives it, and nothing in one segment depends on it.
    pub step_start: u64,
    /// Steps this segment executes (all of them unless it halts).
    pub steps: u64,
    /// Whether the segment ends in a halt: the last segment of a run.
    pub halted: bool,
    /// Halt status (0 unless halted).
    pub status: u64,
    pub data_base: u64,
    /// Register state before the first step: `pc + fp * 2^32 + ms * 2^64`.
    pub state_in: u128,
    /// Register state after the last step.
    pub state_out: u128,
    /// Poseidon commitments to the memory state before and after the segment: the list of
    /// `(address, value)` of every non-zero word (empty for the first segment's state in and
    /// the last one's state out).
    pub memory_in: Fr,
    pub memory_out: Fr,
    /// `(packed, imm)` of every program slot, zero-padded to the class.
    pub program: Vec<(u64, u64)>,
    pub globals: Vec<u64>,
    pub data: Vec<u64>,
    /// Input length, then its words.
    pub input: Vec<u64>,
    /// Output length, then its words.
    pub output: Vec<u64>,
}

pub fn pack_state(pc: u64, fp: u64, ms: u64) -> u128 {
    pc as u128 | (fp as u128) << 32 | (ms as u128) << 64
}

/// `(pc, fp, ms)` of a packed state (each 32 bits; a state that is not is refused by the
/// circuit).
pub fn unpack_state(s: u128) -> (u64, u64, u64) {
    let m = 0xffff_ffff;
    (
        (s & m) as u64,
        ((s >> 32) & m) as u64,
        (s >> 64).min(u64::MAX as u128) as u64,
    )
}

/// The commitment to a memory state of `class`: the Poseidon hash of its `(address, value)`
/// list, zero-padded to the class's capacity.
/// The empty list's is cached (every statement has one).
pub fn memory_digest(class: &Class, list: &[(u64, u64)]) -> Fr {
    if list.is_empty() {
        return empty_memory(class);
    }
    hash_memory(class, list)
}

fn hash_memory(class: &Class, list: &[(u64, u64)]) -> Fr {
    let mut items: Vec<Fr> = list.iter().flat_map(|(a, v)| [f(*a), f(*v)]).collect();
    items.resize(2 * class.state, Fr::zero());
    poseidon::hash(&items)
}

/// The commitment to the empty memory state of `class`.
pub fn empty_memory(class: &Class) -> Fr {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<usize, Fr>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(d) = cache.lock().unwrap().get(&class.state) {
        return *d;
    }
    let d = hash_memory(class, &[]);
    cache.lock().unwrap().insert(class.state, d);
    d
}

fn fr128(v: u128) -> Fr {
    Fr::from(v)
}

impl Statement {
    /// Where the register state in, the memory commitments and the data base sit in
    /// [`Statement::to_field`].
    pub const STATE_IN_AT: usize = 4;
    pub const MEMORY_IN_AT: usize = 6;
    pub const MEMORY_OUT_AT: usize = 7;
    pub const DATA_BASE_AT: usize = 8;

    /// Where the program's `(packed, imm)` pairs sit in [`Statement::to_field`].
    pub fn program_range(&self) -> std::ops::Range<usize> {
        Self::DATA_BASE_AT + 1..Self::DATA_BASE_AT + 1 + 2 * self.program.len()
    }

    /// The public inputs in the circuit's order.
    pub fn to_field(&self) -> Vec<Fr> {
        let mut v = vec![
            self.binding,
            f(self.steps),
            f(self.halted as u64),
            f(self.status),
            fr128(self.state_in),
            fr128(self.state_out),
            self.memory_in,
            self.memory_out,
            f(self.data_base),
        ];
        for (p, i) in &self.program {
            v.push(f(*p));
            v.push(f(*i));
        }
        for x in self
            .globals
            .iter()
            .chain(&self.data)
            .chain(&self.input)
            .chain(&self.output)
        {
            v.push(f(*x));
        }
        v
    }
}

/// A change to the auxiliary witness of one step.
pub type AuxTamper = (usize, Box<dyn Fn(&mut Aux) + Send + Sync>);

/// Ways to corrupt a witness, for tests that prove the constraints catch each one. Each is
/// what a dishonest prover controls: the witness, never the statement's public inputs.
#[derive(Default)]
pub struct Tamper {
    /// Change the auxiliary values of step `.0`.
    pub aux: Option<AuxTamper>,
    /// Flip this switch of the memory network.
    pub memory_switch: Option<usize>,
    /// Flip this switch of the fetch network.
    pub fetch_switch: Option<usize>,
    /// Step `.0` fetches its own `instr` from the program but decodes and executes `.1`
    /// (a prover that names another instruction than the word it fetched).
    pub decode: Vec<(usize, Instr)>,
    /// The memory state in or out as arbitrary field elements, instead of the integer lists
    /// [`ZkvmCircuit::memory_in`] and [`ZkvmCircuit::memory_out`] (whatever a prover may hash
    /// into a commitment).
    pub state_in: Option<Vec<(Fr, Fr)>>,
    pub state_out: Option<Vec<(Fr, Fr)>>,
    /// On the sorted side of the memory check, split each entry's `(time, final, write)` so
    /// that its key `address * 2^tb + time` is an integer plus one half, and route by that key
    /// (the witness of a prover that shifts every key off the integers).
    pub half_keys: bool,
}

/// The auxiliary witness of a step: everything the constraints need beyond the trace.
#[derive(Clone, Debug)]
pub struct Aux {
    /// Decompositions: U of the result for the operations in [`Z_UNIT`] and of the `a` value
    /// for all others, Y of the second operand, H and D of the operation's helper values. 64
    /// bits each, D 66.
    pub u: Vec<Fr>,
    pub y: Vec<Fr>,
    pub h: Vec<Fr>,
    pub d: Vec<Fr>,
    /// 34 bits: bounds (memory accesses, call depth).
    pub e: Vec<Fr>,
    /// 64 bits of the first operand `x`, whatever the operation.
    pub x: Vec<Fr>,
    /// Selector of each opcode.
    pub sel: Vec<Fr>,
}

pub struct ZkvmCircuit {
    pub class: Class,
    pub statement: Statement,
    /// Exactly `class.steps` steps (the halting step repeated to fill).
    pub steps: Vec<Step>,
    pub tamper: Tamper,
    /// Panic at the first violated constraint (see [`Cs::strict`]).
    pub strict: bool,
    /// Receives where the first violated constraint was made (see [`Cs::violation`]).
    pub violation: Option<std::sync::Arc<std::sync::Mutex<Option<String>>>>,
    /// Receives the hash of the constraint system's shape (see [`crate::groth::fingerprint`]).
    pub shape: Option<std::sync::Arc<std::sync::Mutex<String>>>,
    /// The memory state in and out as `(address, value)` lists (the witnesses behind the
    /// statement's commitments).
    pub memory_in: Vec<(u64, u64)>,
    pub memory_out: Vec<(u64, u64)>,
}

fn to_u128(x: Fr) -> u128 {
    let b = x.into_bigint();
    let l = b.as_ref();
    l[0] as u128 | (l[1] as u128) << 64
}

/// Bytes a load or store of this width touches.
fn size_of(i: &Instr) -> u64 {
    1 << i.width
}

/// The bound a load or store must stay under, in bytes of its space.
fn limit_of(class: &Class, space: Space, ms: u64) -> u64 {
    match space {
        Space::Memory => ms * crate::isa::PAGE,
        Space::Input => (class.input as u64 + 1) * WORD,
        Space::Output => class.output as u64 * WORD,
        _ => 0,
    }
}

/// The native auxiliary values of a step.
fn aux_of(class: &Class, step: &Step) -> Aux {
    let i = &step.instr;
    let [a, _, m, z] = step.acc;
    let (x, y, zv) = (a.value, step.y(), z.value);
    let wide = i.wide;
    let n: u32 = if wide { 64 } else { 32 };
    let w: u128 = 1 << n;
    let k = (y % n as u64) as u32;
    let fp = step.regs.fp;
    let sx = (x >> (n - 1)) & 1;
    let xs = x as i128 - ((sx as i128) << n);
    // Wrapping: a witness for a frame out of range (which the circuit refuses) is still built.
    let stack_room = |frame: u64| (MAX_STACK - (1 << SLOT_BITS)).wrapping_sub(fp + frame) as u128;
    let (mut h, mut d, mut e): (u128, u128, u128) = (0, 0, 0);
    match i.op {
        Op::Add => h = (x as u128 + y as u128) / w,
        Op::Sub => h = (x as u128 + w - y as u128) / w,
        Op::Mul => h = (x as u128 * y as u128) / w,
        Op::DivU if y != 0 => {
            h = (x % y) as u128;
            d = (y - x % y - 1) as u128;
        }
        Op::RemU if y != 0 => {
            h = (x / y) as u128;
            d = (y - x % y - 1) as u128;
        }
        Op::Shl => h = ((x as u128) << k) >> n,
        Op::ShrU => h = ((x as u128) << (n - k)) % w,
        Op::ShrS => {
            h = ((xs << (n - k)).rem_euclid(w as i128)) as u128;
            d = x as u128;
        }
        Op::Rotl | Op::Rotr => {
            let k = if i.op == Op::Rotl { k } else { n - k };
            let v = (x as u128) << k;
            h = v >> n;
            d = v % w;
        }
        Op::Clz if x != 0 => h = (x as u128).checked_shl(zv as u32).unwrap_or(0),
        Op::Ctz if x != 0 => h = x.checked_shr(zv as u32).unwrap_or(0) as u128,
        Op::LtU | Op::GeU => d = x as u128 + w - y as u128,
        Op::LtS | Op::GeS => {
            let flip = |v: u64| (v as u128 + w / 2) % w;
            d = flip(x) + w - flip(y);
        }
        Op::Load | Op::Store => {
            h = m.value as u128;
            let ea = x as u128 + i.imm as u128;
            d = ea;
            e = (limit_of(class, i.space, step.regs.ms) as u128)
                .wrapping_sub(ea + size_of(i) as u128);
        }
        Op::Return => d = m.value as u128,
        Op::Call => e = stack_room(i.a as u64),
        Op::CallIndirect => {
            h = i.imm as u128;
            d = x as u128 + (1 << 32) - (i.imm >> 32) as u128;
            e = stack_room(i.b as u64);
        }
        Op::BrTable => d = x as u128 + (1 << 32) - i.b as u128,
        Op::MemGrow => d = (step.regs.ms + x) as u128 + (1 << 33) - i.imm as u128 - 1,
        _ => {}
    }
    let mut sel = vec![Fr::zero(); OP_COUNT];
    sel[i.op as usize - 1] = Fr::one();
    Aux {
        u: bits_of(if Z_UNIT.contains(&i.op) { zv } else { x } as u128, 64),
        y: bits_of(y as u128, 64),
        h: bits_of(h, 64),
        d: bits_of(d, 66),
        e: bits_of(e, 34),
        x: bits_of(x as u128, 64),
        sel,
    }
}

/// Operations whose result needs its bits or a range check: unit U decomposes their result
/// (for all others, their first operand).
pub const Z_UNIT: [Op; 10] = [
    Op::Add,
    Op::Sub,
    Op::Mul,
    Op::DivU,
    Op::RemU,
    Op::Shl,
    Op::ShrU,
    Op::ShrS,
    Op::Clz,
    Op::Ctz,
];

/// One entry of a list that is routed and checked.
#[derive(Clone)]
struct Entry {
    fields: [L; 3],
    /// Native sort key.
    key: (u64, u64),
}

impl ConstraintSynthesizer<Fr> for ZkvmCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> R<()> {
        let cs = Cs {
            cs,
            strict: self.strict,
            violation: Default::default(),
            region: Default::default(),
            shape: std::cell::RefCell::new(self.shape.as_ref().map(|_| {
                use sha2::Digest;
                sha2::Sha256::new()
            })),
        };
        let result = self.synthesize(&cs);
        if let Some(out) = &self.violation {
            *out.lock().unwrap() = cs.violation.borrow().clone();
        }
        if let (Some(out), Some(h)) = (&self.shape, cs.shape.borrow_mut().take()) {
            use sha2::Digest;
            *out.lock().unwrap() = hex::encode(h.finalize());
        }
        result
    }
}

impl ZkvmCircuit {
    fn synthesize(&self, cs: &Cs) -> R<()> {
        let st = &self.statement;
        let class = self.class;
        assert_eq!(self.steps.len(), class.steps);
        assert_eq!(st.program.len(), class.program);
        assert!(self.memory_in.len() <= class.state && self.memory_out.len() <= class.state);

        // Public inputs, in `Statement::to_field` order.
        let binding = cs.input(st.binding)?;
        let n_steps = cs.input(f(st.steps))?;
        let halted = cs.input(f(st.halted as u64))?;
        let status = cs.input(f(st.status))?;
        let state_in = cs.input(fr128(st.state_in))?;
        let state_out = cs.input(fr128(st.state_out))?;
        let memory_in = cs.input(st.memory_in)?;
        let memory_out = cs.input(st.memory_out)?;
        let data_base = cs.input(f(st.data_base))?;
        let mut program = vec![];
        for (p, i) in &st.program {
            program.push((cs.input(f(*p))?, cs.input(f(*i))?));
        }
        let publics = |xs: &[u64]| -> R<Vec<L>> { xs.iter().map(|x| cs.input(f(*x))).collect() };
        let globals = publics(&st.globals)?;
        let data = publics(&st.data)?;
        let input = publics(&st.input)?;
        let output = publics(&st.output)?;
        assert_eq!(globals.len(), class.globals);
        assert_eq!(data.len(), class.data);
        assert_eq!(input.len(), class.input + 1);
        assert_eq!(output.len(), class.output + 1);

        let one = L::konst(Fr::one());
        cs.region("public inputs");
        // The binding enters no statement about the run; Groth16 already ties a proof to every
        // public input, and this product makes it part of a constraint as well.
        cs.mul(&binding, &binding)?;
        // The segment either halts (the last one, with its status) or does not (status 0).
        cs.gate(&halted, &one.sub(&halted))?;
        cs.gate(&one.sub(&halted), &status)?;
        // The registers in, packed as in `pack_state`: pc of 32 bits, and fp and memory size in
        // the ranges every run keeps them in (fp below MAX_STACK, which every call and return
        // checks; at most MAX_PAGES pages, which every memory.grow checks through its maximum).
        let (pc_in, fp_in, ms_in) = unpack_state(st.state_in);
        let (_, pc0) = cs.bits(&bits_of(pc_in as u128, 32))?;
        let (_, fp0) = cs.bits(&bits_of(fp_in as u128, FP_BITS))?;
        let (_, ms0) = cs.bits(&bits_of(ms_in as u128, MS_BITS))?;
        cs.equal(
            &pc0.add(&fp0.scale(pow2(32))).add(&ms0.scale(pow2(64))),
            &state_in,
        )?;

        let mut mem: Vec<Entry> = vec![];
        let mut fetch: Vec<Entry> = vec![];
        let mut time = 0u64;
        // tw = 4 time + 2 final + write: final entries are the reads that report the memory
        // state at the end of the segment.
        let mut push_mem =
            |mem: &mut Vec<Entry>, addr: L, w: L, fin: bool, value: L, native: u64| {
                let tw = w.add(&L::konst(f(4 * time + 2 * fin as u64)));
                mem.push(Entry {
                    fields: [addr, tw, value],
                    key: (native, time),
                });
                time += 1;
            };
        // Initial values: the module's globals and data and the input (a segment after the
        // first has them all zero, and gets its memory from the state in).
        for (k, g) in globals.iter().enumerate() {
            let a = Space::Globals.base() + k as u64;
            push_mem(&mut mem, L::konst(f(a)), one.clone(), false, g.clone(), a);
        }
        for (k, d) in data.iter().enumerate() {
            let a = Space::Memory.base() + st.data_base + k as u64;
            let addr = data_base.add_c(f(Space::Memory.base() + k as u64));
            push_mem(&mut mem, addr, one.clone(), false, d.clone(), a);
        }
        for (k, x) in input.iter().enumerate() {
            let a = Space::Input.base() + k as u64;
            push_mem(&mut mem, L::konst(f(a)), one.clone(), false, x.clone(), a);
        }
        // The memory state in: writes of every (address, value) it lists, bound to the public
        // commitment.
        cs.region("memory in");
        let state_list =
            |list: &[(u64, u64)], raw: &Option<Vec<(Fr, Fr)>>| -> R<Vec<(L, L, u64)>> {
                let mut out = vec![];
                for k in 0..class.state {
                    let (a, v) = match raw {
                        Some(raw) => raw.get(k).copied().unwrap_or_default(),
                        None => {
                            let (a, v) = list.get(k).copied().unwrap_or((0, 0));
                            (f(a), f(v))
                        }
                    };
                    // Every address is an integer of ADDR_BITS bits, like every address a step
                    // makes: the ordering argument on the sorted side holds only for those.
                    let (_, addr) = cs.bits(&bits_of(to_u128(a), ADDR_BITS as usize))?;
                    out.push((addr, cs.witness(v)?, to_u128(a) as u64));
                }
                Ok(out)
            };
        let m_in = state_list(&self.memory_in, &self.tamper.state_in)?;
        let flat = |l: &[(L, L, u64)]| -> Vec<L> {
            l.iter()
                .flat_map(|(a, v, _)| [a.clone(), v.clone()])
                .collect()
        };
        cs.equal(&poseidon::hash_gadget(cs, &flat(&m_in))?, &memory_in)?;
        for (a, v, native) in &m_in {
            push_mem(&mut mem, a.clone(), one.clone(), false, v.clone(), *native);
        }

        for (k, (p, i)) in program.iter().enumerate() {
            fetch.push(Entry {
                fields: [L::konst(f(2 * k as u64 + 1)), p.clone(), i.clone()],
                key: (k as u64, 0),
            });
        }

        // The steps.
        let mut pc = pc0;
        let mut fp = fp0;
        let mut ms = ms0;
        let mut executed = L::zero();
        let mut last_halt = L::zero();
        let mut last_imm = L::zero();
        for (n, step) in self.steps.iter().enumerate() {
            // What the step executes: the word it fetched, unless a test decodes another.
            let exec = Step {
                instr: (self.tamper.decode.iter())
                    .find(|(at, _)| *at == n)
                    .map_or(step.instr, |(_, i)| *i),
                ..*step
            };
            let mut aux = aux_of(&class, &exec);
            if let Some((at, t)) = &self.tamper.aux
                && *at == n
            {
                t(&mut aux);
            }
            cs.region(format!("step {n} ({:?})", exec.instr.op));
            let s = self.step(cs, &exec, &step.instr, &aux, &pc, &fp, &ms)?;
            for (k, acc) in s.acc.iter().enumerate() {
                let native = step.acc[k].addr();
                push_mem(
                    &mut mem,
                    acc.0.clone(),
                    acc.1.clone(),
                    false,
                    acc.2.clone(),
                    native,
                );
            }
            fetch.push(Entry {
                fields: [pc.scale(f(2)), s.packed.clone(), s.imm.clone()],
                key: (step.regs.pc, 1 + n as u64),
            });
            executed = executed.add(&one.sub(&s.halt));
            last_halt = s.halt.clone();
            last_imm = s.imm.clone();
            (pc, fp, ms) = (s.pc, s.fp, s.ms);
        }
        cs.region("end state");
        // The segment halted or not, as public, with the public status, after the public number
        // of steps, in the public final state.
        cs.equal(&last_halt, &halted)?;
        cs.gate(&halted, &last_imm.sub(&status))?;
        cs.equal(&executed, &n_steps)?;
        let end = pc.add(&fp.scale(pow2(32))).add(&ms.scale(pow2(64)));
        cs.equal(&end, &state_out)?;

        // Final reads of the output length and words, in the segment that halts (elsewhere
        // reads of the zero space, so the public output must be zero there).
        let out_len_addr = Space::Globals.base() + GLOBAL_OUT_LEN;
        let gated = |a: u64| -> u64 { if st.halted { a } else { 0 } };
        push_mem(
            &mut mem,
            halted.scale(f(out_len_addr)),
            L::zero(),
            false,
            output[0].clone(),
            gated(out_len_addr),
        );
        for (k, o) in output[1..].iter().enumerate() {
            let a = Space::Output.base() + k as u64;
            push_mem(
                &mut mem,
                halted.scale(f(a)),
                L::zero(),
                false,
                o.clone(),
                gated(a),
            );
        }
        // The memory state out: final reads of every (address, value) it lists, bound to the
        // public commitment. The memory check makes the list complete unless the segment halts.
        cs.region("memory out");
        let m_out = state_list(&self.memory_out, &self.tamper.state_out)?;
        cs.equal(&poseidon::hash_gadget(cs, &flat(&m_out))?, &memory_out)?;
        for (a, v, native) in &m_out {
            push_mem(&mut mem, a.clone(), L::zero(), true, v.clone(), *native);
        }

        // Padding: reads of the zero space, and fetches of pc 0.
        let n_mem = mem.len().next_power_of_two();
        while mem.len() < n_mem {
            let zero = cs.witness(Fr::zero())?;
            push_mem(&mut mem, L::zero(), L::zero(), false, zero, 0);
        }
        let n_fetch = fetch.len().next_power_of_two().max(2);
        let mut pad = class.steps as u64 + 1;
        while fetch.len() < n_fetch {
            let p0 = cs.witness(program[0].0.v)?;
            let i0 = cs.witness(program[0].1.v)?;
            fetch.push(Entry {
                fields: [L::zero(), p0, i0],
                key: (0, pad),
            });
            pad += 1;
        }

        let time_bits = n_mem.trailing_zeros();
        let mem_order = if self.tamper.half_keys {
            let key = |e: &Entry| half_split(e.fields[0].v, e.fields[1].v, time_bits).map(|s| s.2);
            let mut keyed: Vec<(i128, usize)> = (0..mem.len())
                .map(|k| (key(&mem[k]).unwrap_or(i128::MAX), k))
                .collect();
            keyed.sort();
            keyed.into_iter().map(|(_, k)| k).collect()
        } else {
            order(&mem)
        };
        cs.region("memory routing");
        let sorted_mem = route(cs, &mem, &mem_order, self.tamper.memory_switch)?;
        cs.region("memory check");
        check_memory(cs, &sorted_mem, time_bits, &halted, self.tamper.half_keys)?;
        cs.region("fetch routing");
        let sorted_fetch = route(cs, &fetch, &order(&fetch), self.tamper.fetch_switch)?;
        cs.region("fetch check");
        check_fetch(cs, &sorted_fetch)?;
        Ok(())
    }
}

/// What a step hands back: its accesses `(address, write flag, value)`, its fetch and its next
/// registers.
struct StepOut {
    acc: [(L, L, L); 4],
    packed: L,
    imm: L,
    halt: L,
    pc: L,
    fp: L,
    ms: L,
}

impl ZkvmCircuit {
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        cs: &Cs,
        step: &Step,
        fetched: &Instr,
        aux: &Aux,
        pc: &L,
        fp: &L,
        ms: &L,
    ) -> R<StepOut> {
        let i: &Instr = &step.instr;
        let one = L::konst(Fr::one());

        // Fetch and decode.
        let packed = cs.witness(f(fetched.packed()))?;
        let imm = cs.witness(f(fetched.imm))?;
        let mut sel = vec![];
        for (k, v) in aux.sel.iter().enumerate() {
            let _ = k;
            sel.push(cs.bit(*v)?);
        }
        cs.equal(&sum(&sel), &one)?;
        let s = |op: Op| sel[op as usize - 1].clone();
        let any = |ops: &[Op]| sum(&ops.iter().map(|o| s(*o)).collect::<Vec<_>>());
        let opcode = sel
            .iter()
            .enumerate()
            .fold(L::zero(), |acc, (k, b)| acc.add_scaled(b, f(k as u64 + 1)));
        let wide = cs.bit(f(i.wide as u64))?;
        let w0 = cs.bit(f((i.width & 1) as u64))?;
        let w1 = cs.bit(f((i.width >> 1) as u64))?;
        let signed = cs.bit(f(i.signed as u64))?;
        let immb = cs.bit(f(i.imm_b as u64))?;
        let w01 = cs.mul(&w0, &w1)?;
        let sp: Vec<L> = (0..3)
            .map(|k| cs.bit(f(((i.space as u64) >> k) & 1)))
            .collect::<R<_>>()?;
        let flags = opcode
            .add_scaled(&wide, f(64))
            .add_scaled(&w0, f(128))
            .add_scaled(&w1, f(256))
            .add_scaled(&signed, f(512))
            .add_scaled(&sp[0], f(1024))
            .add_scaled(&sp[1], f(2048))
            .add_scaled(&sp[2], f(4096))
            .add_scaled(&immb, f(8192));
        let (_, a) = cs.bits(&bits_of(i.a as u128, SLOT_BITS as usize))?;
        let (_, b) = cs.bits(&bits_of(i.b as u128, SLOT_BITS as usize))?;
        let (_, c) = cs.bits(&bits_of(i.c as u128, SLOT_BITS as usize))?;
        // The decode equality. Every part is bounded (the opcode is 1..=42 from the one-hot
        // selectors, the flags are bits, a, b and c have 16 bits each) and the whole is below
        // 2^62, so the fetched word has exactly one split: the step executes the instruction
        // the program holds at `pc`, nothing else.
        cs.equal(
            &packed,
            &flags
                .add(&a.scale(pow2(FLAG_BITS)))
                .add(&b.scale(pow2(FLAG_BITS + SLOT_BITS)))
                .add(&c.scale(pow2(FLAG_BITS + 2 * SLOT_BITS))),
        )?;
        let space_base = sp.iter().enumerate().fold(L::zero(), |acc, (k, b)| {
            acc.add_scaled(b, pow2(SPACE_SHIFT + k as u32))
        });

        // Access values.
        let [ra, rb, rm, rz] = step.acc;
        let x = cs.witness(f(ra.value))?;
        // The second operand: what `b` read, or the immediate (then `b` reads address 0).
        let vb = cs.witness(f(rb.value))?;
        let y = vb.add(&cs.mul(&immb, &imm.sub(&vb))?);
        let m = cs.witness(f(rm.value))?;
        let z = cs.witness(f(rz.value))?;

        // Units. U decomposes the result of the operations whose result needs its bits or a
        // range check, and the first operand of all others (whose results are expressions of
        // bits, or copies, or small): every value written is in range either way.
        let zsel = any(&Z_UNIT);
        let u = x.add(&cs.mul(&zsel, &z.sub(&x))?);
        let (ub, us) = cs.bits(&aux.u)?;
        let (yb, ys) = cs.bits(&aux.y)?;
        let (hb, h) = cs.bits(&aux.h)?;
        let (db, d) = cs.bits(&aux.d)?;
        let (_, e) = cs.bits(&aux.e)?;
        let (xbits, xs) = cs.bits(&aux.x)?;
        cs.equal(&x, &xs)?;
        cs.equal(&u, &us)?;
        cs.equal(&y, &ys)?;
        // The bits of x for operations outside Z_UNIT, of z for those in it.
        let (xb, zb) = (&ub, &ub);
        let hi = |bits: &[L], from: usize, to: usize| {
            bits[from..to]
                .iter()
                .enumerate()
                .fold(L::zero(), |acc, (k, b)| {
                    acc.add_scaled(b, pow2((from + k) as u32))
                })
        };

        // Width-dependent constants: W = 2^32 or 2^64, and products with `wide`.
        let w = L::konst(pow2(32)).add_scaled(&wide, pow2(64) - pow2(32));
        let wide_h = cs.mul(&wide, &h)?;
        let w_h = h.scale(pow2(32)).add_scaled(&wide_h, pow2(64) - pow2(32));

        // Addresses: slots are `Stack + fp + offset`.
        let stack = |off: &L| fp.add(off).add_c(base_of(Space::Stack));
        const BINARY: [Op; 18] = [
            Op::Add,
            Op::Sub,
            Op::Mul,
            Op::DivU,
            Op::RemU,
            Op::And,
            Op::Or,
            Op::Xor,
            Op::Shl,
            Op::ShrU,
            Op::ShrS,
            Op::Rotl,
            Op::Rotr,
            Op::Eq,
            Op::Ne,
            Op::LtU,
            Op::LtS,
            Op::GeU,
        ];
        const UNARY: [Op; 6] = [Op::Clz, Op::Ctz, Op::Popcnt, Op::Eqz, Op::Wrap, Op::ExtendS];
        let uses_a = any(&BINARY).add(&any(&UNARY)).add(&any(&[
            Op::GeS,
            Op::Copy,
            Op::Select,
            Op::SetM,
            Op::BrNz,
            Op::BrZ,
            Op::BrTable,
            Op::CallIndirect,
            Op::Return,
            Op::Load,
            Op::Store,
            Op::MemGrow,
        ]));
        let uses_b = any(&BINARY).add(&any(&[Op::GeS, Op::Select, Op::Store]));
        // Only binary operations take an immediate second operand.
        cs.gate(&immb, &one.sub(&any(&BINARY)).sub(&s(Op::GeS)))?;
        let writes_c = any(&BINARY).add(&any(&UNARY)).add(&any(&[
            Op::GeS,
            Op::Const,
            Op::Copy,
            Op::Select,
            Op::GetM,
            Op::MemSize,
            Op::Load,
            Op::MemGrow,
        ]));
        let ldst = any(&[Op::Load, Op::Store]);
        // Loads and stores: ea = a + imm = 8 word + off, inside the space's bound.
        let word = hi(&db, 2, 66).scale(f(WORD).inverse_or_zero());
        let mem_addr = space_base.add(&word);
        let addr_a = cs.mul(&uses_a, &stack(&a))?;
        let addr_b = cs
            .mul(&uses_b.sub(&immb), &stack(&b))?
            .add(&cs.mul(&s(Op::Load), &mem_addr)?);
        let addr_m = cs
            .mul(&s(Op::Select), &stack(&imm))?
            .add(&cs.mul(&any(&[Op::GetM, Op::SetM]), &space_base.add(&imm))?)
            .add(&cs.mul(&s(Op::Return), &stack(&b))?)
            .add(&cs.mul(&ldst, &mem_addr)?)
            .add(&s(Op::Load));
        let scratch = L::konst(base_of(Space::Scratch));
        let ret_c = cs.mul(&s(Op::Return), &c)?;
        let addr_z = scratch
            .add(&cs.mul(&writes_c, &stack(&c).sub(&scratch))?)
            .add(&cs.mul(&s(Op::Call), &stack(&a.add(&b)).sub(&scratch))?)
            .add(&cs.mul(&s(Op::CallIndirect), &stack(&b.add(&c)).sub(&scratch))?)
            .add(&cs.mul(&s(Op::Store), &mem_addr.add(&w01).sub(&scratch))?)
            .add(&cs.mul(&ret_c, &stack(&L::zero()).sub(&scratch))?);
        let m_write = s(Op::SetM).add(&cs.mul(&s(Op::Store), &w01)?);
        // A step without a result writes zero to the scratch space: nothing reads it there, and
        // the witness keeps one form (`Return` moves a result when c = 1, which the program
        // check keeps to 0 or 1).
        let writes = (writes_c.clone())
            .add(&any(&[Op::Call, Op::CallIndirect, Op::Store]))
            .add(&ret_c);
        cs.gate(&one.sub(&writes), &z)?;

        // Shared helpers.
        let e_in = x.sub(&y).add(&cs.mul(&s(Op::Select), &m.sub(&x).add(&y))?);
        let isz = cs.is_zero(&e_in)?;
        let bit_at = |bits: &[L], lo: usize, hi_: usize| -> R<L> {
            // bits[lo] when narrow, bits[hi_] when wide
            Ok(bits[lo].add(&cs.mul(&wide, &bits[hi_].sub(&bits[lo]))?))
        };

        // Operations.
        let g = |op: Op, e: &L| cs.gate(&s(op), e);
        g(Op::Const, &z.sub(&imm))?;
        g(Op::Copy, &z.sub(&x))?;
        g(Op::GetM, &z.sub(&m))?;
        g(Op::SetM, &m.sub(&x))?;
        g(Op::MemSize, &z.sub(ms))?;
        // Select: z = m != 0 ? x : y
        let picked = y.add(&cs.mul(&one.sub(&isz), &x.sub(&y))?);
        g(Op::Select, &z.sub(&picked))?;
        // x + y = z + W h ; x + W - y = z + W h ; x y = z + W h
        g(Op::Add, &x.add(&y).sub(&z).sub(&w_h))?;
        g(Op::Sub, &x.add(&w).sub(&y).sub(&z).sub(&w_h))?;
        let xy = cs.mul(&x, &y)?;
        g(Op::Mul, &xy.sub(&z).sub(&w_h))?;
        // Bitwise, from the shared decompositions.
        let mut and = L::zero();
        for k in 0..64 {
            and = and.add_scaled(&cs.mul(&xb[k], &yb[k])?, pow2(k as u32));
        }
        g(Op::And, &z.sub(&and))?;
        g(Op::Or, &z.sub(&x.add(&y).sub(&and)))?;
        g(Op::Xor, &z.sub(&x.add(&y).sub(&and.scale(f(2)))))?;
        g(Op::Popcnt, &z.sub(&sum(xb.iter())))?;
        g(Op::Wrap, &z.sub(&hi(&xb, 0, 32)))?;
        // Equality.
        g(Op::Eqz, &z.sub(&isz))?;
        g(Op::Eq, &z.sub(&isz))?;
        g(Op::Ne, &z.sub(&one.sub(&isz)))?;
        // Comparisons: D = x' - y' + W, and bit n of D says x' >= y'.
        let sx = bit_at(&xb, 31, 63)?;
        let sy = bit_at(&yb, 31, 63)?;
        let half = |sgn: &L| -> R<L> {
            // Half * (1 - 2 sgn), Half = 2^31 or 2^63
            let ws = cs.mul(&wide, sgn)?;
            let half = L::konst(pow2(31)).add_scaled(&wide, pow2(63) - pow2(31));
            let half_s = sgn.scale(pow2(31)).add_scaled(&ws, pow2(63) - pow2(31));
            Ok(half.sub(&half_s.scale(f(2))))
        };
        let xf = x.add(&half(&sx)?);
        let yf = y.add(&half(&sy)?);
        cs.gate(&any(&[Op::LtU, Op::GeU]), &d.sub(&x.sub(&y).add(&w)))?;
        cs.gate(&any(&[Op::LtS, Op::GeS]), &d.sub(&xf.sub(&yf).add(&w)))?;
        let ge = bit_at(&db, 32, 64)?;
        g(Op::LtU, &z.sub(&one.sub(&ge)))?;
        g(Op::LtS, &z.sub(&one.sub(&ge)))?;
        g(Op::GeU, &z.sub(&ge))?;
        g(Op::GeS, &z.sub(&ge))?;
        // Narrow arithmetic keeps results and carries below 2^32.
        let alu = any(&[
            Op::Add,
            Op::Sub,
            Op::Mul,
            Op::DivU,
            Op::RemU,
            Op::And,
            Op::Or,
            Op::Xor,
            Op::Popcnt,
            Op::Shl,
            Op::ShrU,
            Op::ShrS,
            Op::Rotl,
            Op::Rotr,
            Op::Clz,
            Op::Ctz,
        ]);
        let narrow = cs.mul(&alu, &one.sub(&wide))?;
        cs.gate(&narrow, &hi(&ub, 32, 64))?;
        cs.gate(&narrow, &hi(&hb, 32, 64))?;
        // Operands are range-checked where they are used, rather than trusted to be in range
        // because every value stored was: the first operand below 2^64 always (X above), below
        // 2^32 for every operation that reads it as an i32 (narrow arithmetic and comparisons,
        // eqz and extension, and the index or page count of br_table, call_indirect and
        // memory.grow); the second below 2^32 for narrow arithmetic and comparisons.
        let cmp = any(&[Op::Eq, Op::Ne, Op::LtU, Op::LtS, Op::GeU, Op::GeS]);
        let narrow_cmp = cs.mul(&cmp, &one.sub(&wide))?;
        let narrow_x = narrow
            .add(&narrow_cmp)
            .add(&cs.mul(&any(&[Op::Eqz, Op::ExtendS]), &one.sub(&wide))?)
            .add(&any(&[Op::BrTable, Op::CallIndirect, Op::MemGrow]));
        cs.gate(&narrow_x, &hi(&xbits, 32, 64))?;
        cs.gate(&narrow.add(&narrow_cmp), &hi(&yb, 32, 64))?;

        // Division by a non-zero divisor: x = q y + r, r < y.
        let zy = cs.mul(&z, &y)?;
        let hy = cs.mul(&h, &y)?;
        g(Op::DivU, &x.sub(&zy).sub(&h))?;
        g(Op::RemU, &x.sub(&hy).sub(&z))?;
        g(Op::DivU, &d.sub(&y.sub(&h).sub(&one)))?;
        g(Op::RemU, &d.sub(&y.sub(&z).sub(&one)))?;
        cs.gate(&any(&[Op::DivU, Op::RemU]), &hi(&db, 64, 66))?;

        // Shifts and rotations by k = y mod n: P = 2^k from y's low bits, Q = 2^(n-k) = W / P.
        let wy5 = cs.mul(&wide, &yb[5])?;
        let mut pk = one.clone();
        for (j, bit) in yb.iter().enumerate().take(5) {
            let factor = one.add_scaled(bit, pow2(1 << j) - Fr::one());
            pk = cs.mul(&pk, &factor)?;
        }
        let pk = cs.mul(&pk, &one.add_scaled(&wy5, pow2(32) - Fr::one()))?;
        let q = cs.witness(w.v * pk.v.inverse_or_zero())?;
        cs.enforce(&pk, &q, &w)?;
        let xp = cs.mul(&x, &pk)?;
        let xq = cs.mul(&x, &q)?;
        let wide_z = cs.mul(&wide, &z)?;
        let z_w = z.scale(pow2(32)).add_scaled(&wide_z, pow2(64) - pow2(32));
        g(Op::Shl, &xp.sub(&z).sub(&w_h))?;
        g(Op::ShrU, &xq.sub(&z_w).sub(&h))?;
        // Arithmetic: (x - W sx) Q = (z - W sx) W + h, the sign of x from D = x.
        g(Op::ShrS, &d.sub(&x))?;
        let sxd = bit_at(&db, 31, 63)?;
        let wsx = cs.mul(&wide, &sxd)?;
        let w_sx = sxd.scale(pow2(32)).add_scaled(&wsx, pow2(64) - pow2(32));
        let ww_sx = sxd.scale(pow2(64)).add_scaled(&wsx, pow2(128) - pow2(64));
        let xsq = cs.mul(&x.sub(&w_sx), &q)?;
        g(Op::ShrS, &xsq.sub(&z_w.sub(&ww_sx)).sub(&h))?;
        // Rotations: x P = h W + d (rotl) or x Q = h W + d (rotr), z = h + d, d < W.
        g(Op::Rotl, &xp.sub(&w_h).sub(&d))?;
        g(Op::Rotr, &xq.sub(&w_h).sub(&d))?;
        let rot = any(&[Op::Rotl, Op::Rotr]);
        cs.gate(&rot, &z.sub(&h).sub(&d))?;
        cs.gate(&rot, &hi(&db, 64, 66))?;
        let rot_narrow = cs.mul(&rot, &one.sub(&wide))?;
        cs.gate(&rot_narrow, &hi(&db, 32, 64))?;

        // Leading and trailing zeros: 2^z from z's low bits; x = 0 gives z = n.
        let mut pz = one.clone();
        for (j, bit) in zb.iter().enumerate().take(7) {
            let factor = one.add_scaled(bit, pow2(1 << j) - Fr::one());
            pz = cs.mul(&pz, &factor)?;
        }
        let n_bits = L::konst(f(32)).add_scaled(&wide, f(32));
        // 2^z above uses z's low 7 bits only, so the count itself must stay below 128.
        cs.gate(&any(&[Op::Clz, Op::Ctz]), &hi(&zb, 7, 64))?;
        let nonzero = one.sub(&isz);
        let zero_n = cs.mul(&isz, &z.sub(&n_bits))?;
        g(Op::Clz, &zero_n)?;
        g(Op::Ctz, &zero_n)?;
        let xpz = cs.mul(&x, &pz)?;
        g(Op::Clz, &xpz.sub(&h))?;
        let htop = bit_at(&hb, 31, 63)?;
        g(Op::Clz, &cs.mul(&nonzero, &one.sub(&htop))?)?;
        let hpz = cs.mul(&h, &pz)?;
        g(Op::Ctz, &x.sub(&hpz))?;
        g(Op::Ctz, &cs.mul(&nonzero, &one.sub(&hb[0]))?)?;

        // Sign extension from 8, 16 or 32 bits (width 0, 1, 2).
        let m8 = one.sub(&w0).sub(&w1).add(&w01);
        let m16 = w0.sub(&w01);
        let m32 = w1.sub(&w01);
        let low = cs
            .mul(&m8, &hi(&xb, 0, 8))?
            .add(&cs.mul(&m16, &hi(&xb, 0, 16))?)
            .add(&cs.mul(&m32, &hi(&xb, 0, 32))?);
        let sign = cs
            .mul(&m8, &xb[7])?
            .add(&cs.mul(&m16, &xb[15])?)
            .add(&cs.mul(&m32, &xb[31])?);
        let top = L::konst(pow2(8))
            .add_scaled(&m16, pow2(16) - pow2(8))
            .add_scaled(&m32, pow2(32) - pow2(8));
        let ext = cs.mul(&sign, &w.sub(&top))?;
        g(Op::ExtendS, &z.sub(&low).sub(&ext))?;

        // Loads and stores at ea = a + imm = 4 word + off, below the space's bound. A load reads
        // the window of two words (y from S2 and h from S3) and takes `size` bytes from `off`.
        // A store of up to 4 bytes rewrites them inside one word (old word h from S3); an 8-byte
        // store writes two whole words at a 4-aligned address.
        g(Op::Load, &h.sub(&m))?;
        cs.gate(&ldst, &d.sub(&x).sub(&imm))?;
        let sp01 = cs.mul(&sp[0], &sp[1])?;
        let in_sp = sp[2].sub(&cs.mul(&sp[2], &sp[0])?);
        let out_sp = sp[2].sub(&in_sp);
        let size = one.add(&w0).add_scaled(&w1, f(3)).add_scaled(&w01, f(3));
        let limit = cs
            .mul(&sp01, &ms.scale(f(crate::isa::PAGE)))?
            .add(&in_sp.scale(f((self.class.input as u64 + 1) * WORD)))
            .add(&out_sp.scale(f(self.class.output as u64 * WORD)));
        cs.gate(&ldst, &e.sub(&limit.sub(&d).sub(&size)))?;
        let d01 = cs.mul(&db[0], &db[1])?;
        let oh = [
            one.sub(&db[0]).sub(&db[1]).add(&d01),
            db[0].sub(&d01),
            db[1].sub(&d01),
            d01.clone(),
        ];
        let sz = [
            one.sub(&w0).sub(&w1).add(&w01),
            w0.sub(&w01),
            w1.sub(&w01),
            w01.clone(),
        ];
        let mut mask = vec![];
        for k in 0..8usize {
            let mut mk = L::zero();
            for (si, s_) in sz.iter().enumerate() {
                let lo = (k + 1).saturating_sub(1 << si);
                if lo > 3 {
                    continue;
                }
                let run = sum(&oh[lo..=k.min(3)].to_vec());
                mk = mk.add(&cs.mul(s_, &run)?);
            }
            mask.push(mk);
        }
        let p4 = oh.iter().enumerate().fold(L::zero(), |acc, (j, o)| {
            acc.add_scaled(o, pow2(8 * j as u32))
        });
        let byte = |bits: &[L], k: usize| {
            hi(bits, 8 * k, 8 * k + 8).scale(pow2(8 * k as u32).inverse_or_zero())
        };
        let window: Vec<L> = (0..8)
            .map(|k| {
                if k < 4 {
                    byte(&yb, k)
                } else {
                    byte(&hb, k - 4)
                }
            })
            .collect();
        let mut masked = L::zero();
        for k in 0..8 {
            masked = masked.add_scaled(&cs.mul(&mask[k], &window[k])?, pow2(8 * k as u32));
        }
        g(Op::Load, &sum(&mask).sub(&size))?;
        let val = cs.witness(if i.op == Op::Load {
            masked.v * p4.v.inverse_or_zero()
        } else {
            Fr::zero()
        })?;
        let vp = cs.mul(&val, &p4)?;
        g(Op::Load, &vp.sub(&masked))?;
        let mut sbit = L::zero();
        for k in 0..8 {
            let next = if k < 7 {
                mask[k + 1].clone()
            } else {
                L::zero()
            };
            let end = cs.mul(&mask[k], &one.sub(&next))?;
            let top = if k < 4 {
                &yb[8 * k + 7]
            } else {
                &hb[8 * (k - 4) + 7]
            };
            sbit = sbit.add(&cs.mul(&end, top)?);
        }
        let sb = cs.mul(&signed, &sbit)?;
        let span = sz
            .iter()
            .enumerate()
            .fold(L::zero(), |acc, (si, s_)| acc.add_scaled(s_, pow2(8 << si)));
        let fill = cs.mul(&sb, &w.sub(&span))?;
        g(Op::Load, &z.sub(&val).sub(&fill))?;

        let store8 = cs.mul(&s(Op::Store), &w01)?;
        let store_small = s(Op::Store).sub(&store8);
        cs.gate(&store_small, &h.sub(&m))?;
        cs.gate(&store_small, &sum(&mask[..4].to_vec()).sub(&size))?;
        let mut old = L::zero();
        for (k, mk) in mask.iter().enumerate().take(4) {
            old = old.add_scaled(&cs.mul(mk, &byte(&hb, k))?, pow2(8 * k as u32));
        }
        let mut ylow = L::zero();
        for (si, s_) in sz[..3].iter().enumerate() {
            ylow = ylow.add(&cs.mul(s_, &hi(&yb, 0, 8 << si))?);
        }
        let yp = cs.mul(&ylow, &p4)?;
        cs.gate(&store_small, &z.sub(&m.sub(&old).add(&yp)))?;
        cs.gate(&store8, &m.sub(&hi(&yb, 0, 32)))?;
        cs.gate(
            &store8,
            &z.sub(&hi(&yb, 32, 64).scale(pow2(32).inverse_or_zero())),
        )?;
        cs.gate(&store8, &db[0].add_scaled(&db[1], f(2)))?;

        // br_table and call_indirect: index = min(a, len); a >= len when bit 32 of
        // D = a - len + 2^32 is set.
        let table_len = b.add(&cs.mul(
            &s(Op::CallIndirect),
            &hi(&hb, 32, 64).scale(pow2(32).inverse_or_zero()).sub(&b),
        )?);
        let tables = any(&[Op::BrTable, Op::CallIndirect]);
        cs.gate(&tables, &d.sub(&x.sub(&table_len).add_c(pow2(32))))?;
        g(Op::CallIndirect, &h.sub(&imm))?;
        let past = db[32].clone();
        let index = x.add(&cs.mul(&past, &table_len.sub(&x))?);
        let table_base = imm.add(&cs.mul(&s(Op::CallIndirect), &hi(&hb, 0, 32).sub(&imm))?);
        let table_target = table_base.add(&index);

        // memory.grow: fails (z = 2^32 - 1, size kept) when ms + a > max, i.e. bit 33 of
        // D = ms + a - max - 1 + 2^33 is set.
        g(
            Op::MemGrow,
            &d.sub(&ms.add(&x).sub(&imm).sub(&one).add_c(pow2(33))),
        )?;
        let fail = db[33].clone();
        let grown = cs.mul(&fail, &L::konst(f(0xffff_ffff)).sub(ms))?;
        g(Op::MemGrow, &z.sub(ms).sub(&grown))?;
        g(Op::MemGrow, &hi(&db, 34, 66))?;
        let grow_by = cs.mul(&s(Op::MemGrow), &cs.mul(&one.sub(&fail), &x)?)?;

        // Calls: the link is `pc + 1 + fp 2^32`, the new frame must leave room below MAX_STACK.
        g(
            Op::Call,
            &z.sub(&pc.add_c(Fr::one()).add(&fp.scale(pow2(32)))),
        )?;
        let room = L::konst(f(MAX_STACK - (1 << SLOT_BITS))).sub(fp);
        g(Op::Call, &e.sub(&room.sub(&a)))?;
        g(Op::CallIndirect, &e.sub(&room.sub(&b)))?;
        g(
            Op::CallIndirect,
            &z.sub(&pc.add_c(Fr::one()).add(&fp.scale(pow2(32)))),
        )?;
        // Returns: the link (read through m) splits into return pc and caller fp; a result moves
        // from slot a to slot 0.
        g(Op::Return, &m.sub(&d))?;
        // The caller's frame pointer is below MAX_STACK = 2^20, as every call leaves it.
        g(Op::Return, &hi(&db, 52, 66))?;
        let ret_pc = hi(&db, 0, 32);
        let ret_fp = hi(&db, 32, 66).scale(pow2(32).inverse_or_zero());
        cs.gate(&ret_c, &z.sub(&x))?;

        // Next registers.
        let halt = s(Op::Halt);
        let jump = imm.sub(pc).sub(&one);
        let brnz_t = cs.mul(&s(Op::BrNz), &one.sub(&isz))?;
        let brz_t = cs.mul(&s(Op::BrZ), &isz)?;
        let taken = any(&[Op::Jump, Op::Call]).add(&brnz_t).add(&brz_t);
        let next_pc = pc
            .add(&one)
            .add(&cs.mul(&taken, &jump)?)
            .add(&cs.mul(&s(Op::Return), &ret_pc.sub(pc).sub(&one))?)
            .add(&cs.mul(&tables, &table_target.sub(pc).sub(&one))?)
            .sub(&halt);
        let next_fp = fp
            .add(&cs.mul(&s(Op::Call), &a)?)
            .add(&cs.mul(&s(Op::CallIndirect), &b)?)
            .add(&cs.mul(&s(Op::Return), &ret_fp.sub(fp))?);
        let next_ms = ms.add(&grow_by);

        Ok(StepOut {
            acc: [
                (addr_a, L::zero(), x),
                (addr_b, L::zero(), vb),
                (addr_m, m_write, m),
                (addr_z, one.clone(), z),
            ],
            packed,
            imm,
            halt,
            pc: cs.fresh(&next_pc)?,
            fp: cs.fresh(&next_fp)?,
            ms: cs.fresh(&next_ms)?,
        })
    }
}

fn base_of(s: Space) -> Fr {
    Fr::from(s.base())
}

trait InverseOrZero {
    fn inverse_or_zero(&self) -> Fr;
}

impl InverseOrZero for Fr {
    fn inverse_or_zero(&self) -> Fr {
        ark_ff::Field::inverse(self).unwrap_or(Fr::zero())
    }
}

/// Longest expression a routed value is carried as before it becomes a variable.
const ROUTE_TERMS: usize = 8;

/// The positions of `entries` in native key order.
fn order(entries: &[Entry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&k| entries[k].key);
    order
}

/// The `(write, final)` split of a memory entry `(address, tw)` that makes its sorted key
/// `address * 2^tb + time` an integer plus one half, with that key minus one half; `None` when
/// no split does. Only [`Tamper::half_keys`] uses it: it is the witness of an attack.
fn half_split(addr: Fr, tw: Fr, time_bits: u32) -> Option<(bool, bool, i128)> {
    let half = Fr::from(2u64).inverse_or_zero();
    let small = |x: Fr| -> Option<i128> {
        let (p, n) = (to_u128(x), to_u128(-x));
        let fits = |x: Fr, v: u128| Fr::from(v) == x && v < 1 << 100;
        if fits(x, p) {
            Some(p as i128)
        } else if fits(-x, n) {
            Some(-(n as i128))
        } else {
            None
        }
    };
    for (w, fin) in [(false, false), (true, false), (false, true), (true, true)] {
        let t = (tw - f(w as u64) - f(2 * fin as u64)) * f(4).inverse_or_zero();
        let key = addr * pow2(time_bits) + t;
        if let Some(k) = small(key - half) {
            return Some((w, fin, k));
        }
    }
    None
}

/// Routes `entries` through a Beneš network so that entry `order[j]` comes out at position
/// `j`; returns the sorted side.
fn route(cs: &Cs, entries: &[Entry], order: &[usize], flip: Option<usize>) -> R<Vec<[L; 3]>> {
    let mut perm = vec![0; entries.len()];
    for (pos, &k) in order.iter().enumerate() {
        perm[k] = pos;
    }
    let mut settings = benes::route(&perm);
    if let Some(k) = flip {
        settings[k] = !settings[k];
    }
    let inputs: Vec<[L; 3]> = entries.iter().map(|e| e.fields.clone()).collect();
    let mut switch = |a: &[L; 3], b: &[L; 3], crossed: bool| -> R<([L; 3], [L; 3])> {
        let s = cs.bit(if crossed { Fr::one() } else { Fr::zero() })?;
        let mut first: Vec<L> = vec![];
        let mut second: Vec<L> = vec![];
        // t = s (b - a): the outputs a + t and b - t are expressions, one term longer than
        // their inputs per column; an output longer than ROUTE_TERMS becomes a fresh variable,
        // which keeps the constraint matrices small at a fraction of a constraint per switch.
        for k in 0..3 {
            let t = cs.mul(&s, &b[k].sub(&a[k]))?;
            let short = |e: L| -> R<L> {
                if e.lc.len() > ROUTE_TERMS {
                    cs.fresh(&e)
                } else {
                    Ok(e)
                }
            };
            first.push(short(a[k].add(&t))?);
            second.push(short(b[k].sub(&t))?);
        }
        let arr = |v: Vec<L>| -> [L; 3] { v.try_into().map_err(|_| ()).expect("three fields") };
        Ok((arr(first), arr(second)))
    };
    benes::apply(&inputs, &mut settings.into_iter(), &mut switch)
}

/// The sorted side of the memory check: strictly increasing `(address, time)`, every read sees
/// the previous value at its address (zero if it is the first access there), and, unless the
/// segment `halted`, the last access of every address whose value is not zero is a final read,
/// so the state out lists every such address.
fn check_memory(cs: &Cs, sorted: &[[L; 3]], time_bits: u32, halted: &L, half_keys: bool) -> R<()> {
    let one = L::konst(Fr::one());
    let running = one.sub(halted);
    // tw = 4 time + 2 final + write.
    let split = |e: &[L; 3]| -> R<(L, L, L, L, L)> {
        let low = to_u128(e[1].v) & 3;
        let (w, fin) = match half_split(e[0].v, e[1].v, time_bits) {
            Some((w, fin, _)) if half_keys => (w as u64, fin as u64),
            _ => ((low & 1) as u64, (low >> 1) as u64),
        };
        let w = cs.bit(f(w))?;
        let fin = cs.bit(f(fin))?;
        let t = e[1]
            .sub(&w)
            .sub(&fin.scale(f(2)))
            .scale(f(4).inverse_or_zero());
        Ok((e[0].clone(), t, w, fin, e[2].clone()))
    };
    // An address's last access that is not a final read must leave zero there (while running).
    let complete = |fin: &L, left: &L| -> R<()> {
        let open = cs.mul(&one.sub(fin), &running)?;
        cs.gate(&open, left)
    };
    let (mut pa, mut pt, w0, mut pfin, mut pv) = split(&sorted[0])?;
    cs.gate(&one.sub(&w0), &pv)?;
    // The first time is a small integer: with it, every entry's (time, final, write) split is
    // the one its packing meant (a shift of all times by a quarter would turn reads into
    // writes, and the gaps alone do not see a common shift).
    let (_, t0) = cs.bits(&bits_of(to_u128(pt.v), time_bits as usize))?;
    cs.equal(&t0, &pt)?;
    // And the whole first key is an integer key of a real address: every later key exceeds it
    // by a range-checked gap, so all of them are.
    let key0 = pa.scale(pow2(time_bits)).add(&pt);
    let (_, k0) = cs.bits(&bits_of(to_u128(key0.v), (ADDR_BITS + time_bits) as usize))?;
    cs.equal(&k0, &key0)?;
    for e in &sorted[1..] {
        let (a, t, w, fin, v) = split(e)?;
        let da = a.sub(&pa);
        let gap = da.scale(pow2(time_bits)).add(&t).sub(&pt).sub(&one);
        let bits = bits_of(to_u128(gap.v), (ADDR_BITS + time_bits) as usize);
        let (_, g) = cs.bits(&bits)?;
        cs.equal(&g, &gap)?;
        let same = cs.is_zero(&da)?;
        let prev = cs.mul(&same, &pv)?;
        cs.gate(&one.sub(&w), &v.sub(&prev))?;
        // The previous entry was its address's last when the address changes here: what it
        // left is pv - prev.
        complete(&pfin, &pv.sub(&prev))?;
        (pa, pt, pfin, pv) = (a, t, fin, v);
    }
    complete(&pfin, &pv)?;
    Ok(())
}

/// The sorted side of the fetch check: `pc` starts at 0 and steps by 0 or 1; a step by 1 lands on
/// the program's own entry for that `pc`; a repeat carries the same contents.
fn check_fetch(cs: &Cs, sorted: &[[L; 3]]) -> R<()> {
    let one = L::konst(Fr::one());
    // First: the entry of pc 0 (pcf = 2 * 0 + 1).
    cs.equal(&sorted[0][0], &one)?;
    let mut prev_delta = one.clone();
    for k in 1..sorted.len() {
        let (p, e) = (&sorted[k - 1], &sorted[k]);
        let dv = (to_u128(e[0].v) & 1) as u64;
        let delta = cs.bit(f(dv))?;
        // pcf = pcf_prev - delta_prev + 3 delta
        cs.equal(&e[0], &p[0].sub(&prev_delta).add(&delta.scale(f(3))))?;
        let same = one.sub(&delta);
        cs.gate(&same, &e[1].sub(&p[1]))?;
        cs.gate(&same, &e[2].sub(&p[2]))?;
        prev_delta = delta;
    }
    Ok(())
}

/// Why a run cannot be proved in a class.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FitError {
    #[error("the run did not halt ({0:?})")]
    NotHalted(Exit),
    #[error("{0}")]
    Unprovable(String),
    /// The program breaks an assumption of the circuit ([`crate::wellformed`]): a lowering bug.
    #[error("the lowered program is malformed: {0}")]
    Malformed(String),
    #[error("{what} needs {need}, the class {class} holds {cap}")]
    TooBig {
        what: &'static str,
        need: usize,
        cap: usize,
        class: &'static str,
    },
}

/// Packs bytes into little-endian 4-byte words.
pub fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(WORD as usize)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w) as u64
        })
        .collect()
}

fn fit(what: &'static str, need: usize, cap: usize, class: &Class) -> Result<(), FitError> {
    if need > cap {
        return Err(FitError::TooBig {
            what,
            need,
            cap,
            class: class.name,
        });
    }
    Ok(())
}

/// Where a segment sits in its run: everything in its statement besides the module, the input
/// and the output. A chain verifier derives all of it from the previous segment's claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boundary {
    /// See [`Statement::binding`].
    pub binding: Fr,
    /// The first segment: it starts from the module's globals and data and the input, the
    /// others from their memory state in.
    pub first: bool,
    pub step_start: u64,
    pub steps: u64,
    pub halted: bool,
    pub status: u64,
    pub state_in: u128,
    pub state_out: u128,
    pub memory_in: Fr,
    pub memory_out: Fr,
}

impl Statement {
    /// The statement a verifier expects for `program` run on `input` with the claimed
    /// `output`, `steps` and `status`, ending in `state_out`, in one segment.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        class: &Class,
        program: &Program,
        input: &[u8],
        output: &[u8],
        steps: u64,
        status: u64,
        state_out: u128,
    ) -> Result<Statement, FitError> {
        let empty = empty_memory(class);
        Statement::segment(
            class,
            program,
            input,
            output,
            &Boundary {
                binding: Fr::zero(),
                first: true,
                step_start: 0,
                steps,
                halted: true,
                status,
                state_in: pack_state(0, 0, program.mem_pages),
                state_out,
                memory_in: empty,
                memory_out: empty,
            },
        )
    }

    /// The statement of one segment of a run of `program` on `input` that wrote `output`.
    pub fn segment(
        class: &Class,
        program: &Program,
        input: &[u8],
        output: &[u8],
        b: &Boundary,
    ) -> Result<Statement, FitError> {
        crate::wellformed::check(program).map_err(|m| FitError::Malformed(m.0))?;
        fit("the program", program.code.len(), class.program, class)?;
        fit("the globals", program.globals.len(), class.globals, class)?;
        fit("the initial data", program.data.len(), class.data, class)?;
        fit(
            "the input (words)",
            input.len().div_ceil(WORD as usize),
            class.input,
            class,
        )?;
        fit(
            "the output (words)",
            output.len().div_ceil(WORD as usize),
            class.output,
            class,
        )?;
        let mut code: Vec<(u64, u64)> = program.code.iter().map(|i| (i.packed(), i.imm)).collect();
        code.resize(class.program, (0, 0));
        let pad = |mut v: Vec<u64>, n: usize| {
            v.resize(n, 0);
            v
        };
        let mut inp = vec![input.len() as u64];
        inp.extend(pad(words(input), class.input));
        let mut out = vec![output.len() as u64];
        out.extend(pad(words(output), class.output));
        let mut globals = pad(program.globals.clone(), class.globals);
        let mut data = pad(program.data.clone(), class.data);
        if !b.first {
            for v in [&mut globals, &mut data, &mut inp] {
                v.iter_mut().for_each(|x| *x = 0);
            }
        }
        if !b.halted {
            out.iter_mut().for_each(|x| *x = 0);
        }
        Ok(Statement {
            binding: b.binding,
            step_start: b.step_start,
            steps: b.steps,
            halted: b.halted,
            status: b.status,
            data_base: program.data_base,
            state_in: b.state_in,
            state_out: b.state_out,
            memory_in: b.memory_in,
            memory_out: b.memory_out,
            program: code,
            globals,
            data,
            input: inp,
            output: out,
        })
    }
}

/// The memory state as the memory check sees it: every address whose last write left a value
/// other than zero.
#[derive(Clone, Default)]
struct MemoryState(std::collections::BTreeMap<u64, u64>);

impl MemoryState {
    fn set(&mut self, addr: u64, value: u64) {
        if value == 0 {
            self.0.remove(&addr);
        } else {
            self.0.insert(addr, value);
        }
    }

    fn list(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|(a, v)| (*a, *v)).collect()
    }
}

impl ZkvmCircuit {
    /// The circuit for an honest trace in one segment, or why it does not fit `class`.
    pub fn new(
        class: Class,
        program: &Program,
        input: &[u8],
        trace: &Trace,
    ) -> Result<ZkvmCircuit, FitError> {
        fit("the run (steps)", trace.steps.len(), class.steps, &class)?;
        let mut all = ZkvmCircuit::segments(class, program, input, trace)?;
        Ok(all.remove(0))
    }

    /// The circuits of an honest trace split into segments of `class.steps` steps, chained by
    /// their register states and memory commitments; or why it does not fit `class`.
    pub fn segments(
        class: Class,
        program: &Program,
        input: &[u8],
        trace: &Trace,
    ) -> Result<Vec<ZkvmCircuit>, FitError> {
        let mut memory = MemoryState::default();
        for (k, g) in program.globals.iter().enumerate() {
            memory.set(Space::Globals.base() + k as u64, *g);
        }
        for (k, d) in program.data.iter().enumerate() {
            memory.set(Space::Memory.base() + program.data_base + k as u64, *d);
        }
        memory.set(Space::Input.base(), input.len() as u64);
        for (k, w) in words(input).iter().enumerate() {
            memory.set(Space::Input.base() + 1 + k as u64, *w);
        }
        Self::segments_from(class, program, input, trace, 0, memory)
    }

    /// Where the state lists sit in the memory check's time order: the time of the state in's
    /// first entry, that of the state out's first entry, and the bits of a time. Tests that
    /// build attacks on the sorted side use it.
    pub fn state_times(&self) -> (u64, u64, u32) {
        let c = &self.class;
        let state_in = (c.globals + c.data + c.input + 1) as u64;
        let state_out = state_in + (c.state + 4 * c.steps + c.output + 1) as u64;
        let entries = state_out as usize + c.state;
        (
            state_in,
            state_out,
            entries.next_power_of_two().trailing_zeros(),
        )
    }

    /// The segments of a trace that starts after `step_start` steps of a run, from a memory
    /// that is all zero, as a machine whose memory was wiped would continue (tests build
    /// attacks with it; [`crate::trace::resume_wiped`] makes such a trace).
    pub fn segments_resumed(
        class: Class,
        program: &Program,
        input: &[u8],
        trace: &Trace,
        step_start: u64,
    ) -> Result<Vec<ZkvmCircuit>, FitError> {
        Self::segments_from(
            class,
            program,
            input,
            trace,
            step_start,
            MemoryState::default(),
        )
    }

    fn segments_from(
        class: Class,
        program: &Program,
        input: &[u8],
        trace: &Trace,
        mut step_start: u64,
        mut memory: MemoryState,
    ) -> Result<Vec<ZkvmCircuit>, FitError> {
        let Exit::Halted(status) = trace.exit else {
            return Err(FitError::NotHalted(trace.exit.clone()));
        };
        if let Some(why) = &trace.unprovable {
            return Err(FitError::Unprovable(why.clone()));
        }
        let chunks: Vec<&[Step]> = trace.steps.chunks(class.steps).collect();
        let mut out = vec![];
        let first_segment = step_start == 0;
        for (n, chunk) in chunks.iter().enumerate() {
            let last = n + 1 == chunks.len();
            let first = first_segment && n == 0;
            let memory_in = if first { vec![] } else { memory.list() };
            for s in chunk.iter() {
                for a in s.acc.iter().filter(|a| a.write) {
                    memory.set(a.addr(), a.value);
                }
            }
            let memory_out = if last { vec![] } else { memory.list() };
            for list in [&memory_in, &memory_out] {
                fit("the memory state (words)", list.len(), class.state, &class)?;
            }
            let regs = |s: &Step| pack_state(s.regs.pc, s.regs.fp, s.regs.ms);
            let end = if last {
                chunk[chunk.len() - 1]
            } else {
                chunks[n + 1][0]
            };
            let steps = if last {
                chunk.iter().filter(|s| s.instr.op != Op::Halt).count() as u64
            } else {
                chunk.len() as u64
            };
            let output: &[u8] = if last { &trace.output } else { &[] };
            let statement = Statement::segment(
                &class,
                program,
                input,
                output,
                &Boundary {
                    binding: Fr::zero(),
                    first,
                    step_start,
                    steps,
                    halted: last,
                    status: if last { status } else { 0 },
                    state_in: regs(&chunk[0]),
                    state_out: regs(&end),
                    memory_in: memory_digest(&class, &memory_in),
                    memory_out: memory_digest(&class, &memory_out),
                },
            )?;
            let mut steps_vec = chunk.to_vec();
            steps_vec.resize(class.steps, chunk[chunk.len() - 1]);
            out.push(ZkvmCircuit {
                class,
                statement,
                steps: steps_vec,
                tamper: Tamper::default(),
                strict: false,
                violation: None,
                shape: None,
                memory_in,
                memory_out,
            });
            step_start += steps;
        }
        Ok(out)
    }
}
