//! The zkVM as the mesh uses it: size classes, proving a run, verifying a claimed result, and
//! the byte formats of keys and proofs.

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use sha2::{Digest, Sha256};

use ark_bn254::Fr;

use crate::circuit::{Boundary, Class, FitError, Statement, ZkvmCircuit, empty_memory, pack_state};
use crate::groth::{self, Pk, ProgramTerm, Pvk, Vk, Zk};
use crate::isa::{Program, status};
use crate::lower::LowerError;
use crate::trace::{Exit, RunLimits, Trace, run};

/// A class whose data-memory network has `2^k` entries: capacities scale with it, and the step
/// capacity is whatever fills the network exactly. The program holds `2^(k-2)` instructions, so
/// program and step fetches together fill a fetch network of `2^(k-1)` entries (the step
/// capacity is a little under `2^(k-2)`); the guests' programs are far smaller than their runs.
/// A run longer than a class carries up to `2^(k-5)` words of memory state from one segment to
/// the next (the Rust guests carry 30-260).
const fn class(name: &'static str, k: u32) -> Class {
    let entries = 1usize << k;
    let globals = 16;
    let data = 1 << (k - 4);
    let io = 1 << (k - 6);
    let state = 1 << (k - 5);
    let fixed = globals + data + 2 * (io + 1) + 2 * state;
    Class {
        name,
        steps: (entries - fixed) / 4,
        program: 1 << (k - 2),
        globals,
        data,
        input: io,
        output: io,
        state,
    }
}

/// The size classes, smallest first. About 1,250-1,400 constraints per step: c9 is about
/// 125,000 constraints (tests), c12 about 1.1 million, c16 about 20 million.
pub const CLASSES: [Class; 6] = [
    class("c9", 9),
    class("c10", 10),
    class("c12", 12),
    class("c14", 14),
    class("c16", 16),
    class("c18", 18),
];

pub fn class_named(name: &str) -> Option<Class> {
    CLASSES.iter().find(|c| c.name == name).copied()
}

/// Most segments one run is split into.
pub const MAX_SEGMENTS: usize = 64;

/// What a proof claims besides the module, input and output: the whole run's steps, halt
/// status and final register state, and where the run was cut into segments (empty for a run
/// proved in one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub class: String,
    pub steps: u64,
    pub status: u64,
    pub state_out: u128,
    /// One per segment before the last, in order.
    pub links: Vec<Link>,
}

/// The end of a segment that does not halt: its steps (all of the class's), the register state
/// and the commitment to the memory state it hands to the next segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub steps: u64,
    pub state_out: u128,
    pub memory_out: Fr,
}

/// Why a claim and its proofs were refused (the verifier tells the node and the user why).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The claim's text form does not parse.
    #[error("{0}")]
    MalformedClaim(String),
    /// The claim names a class this build does not have.
    #[error("unknown class {0}")]
    UnknownClass(String),
    /// More segments than any run may have.
    #[error("{segments} segments, more than {MAX_SEGMENTS}")]
    TooManySegments {
        /// Segments claimed.
        segments: usize,
    },
    /// A segment that does not halt claims fewer steps than its class runs.
    #[error(
        "segment {segment} claims {steps} steps; a segment that does not halt runs all \
         {class_steps} of its class"
    )]
    ShortSegment {
        /// The segment, from 1.
        segment: usize,
        /// Steps it claims.
        steps: u64,
        /// Steps a segment of its class runs.
        class_steps: usize,
    },
    /// The non-halting segments claim more steps than the whole run.
    #[error("the segments claim more steps than the run")]
    TooManySteps,
    /// A segment's statement does not fit the class.
    #[error("the claim does not fit its class: {0}")]
    ClaimDoesNotFit(FitError),
    /// The program does not fit the class.
    #[error("the program does not fit its class: {0}")]
    ProgramDoesNotFit(FitError),
    /// The key given is of another class than the program's term.
    #[error("a verifying key of another class")]
    ForeignKey,
    /// The number of proofs is not the number of segments.
    #[error("{proofs} proofs for a claim of {segments} segments")]
    ProofCount {
        /// Proofs given.
        proofs: usize,
        /// Segments claimed.
        segments: usize,
    },
    /// A proof's bytes do not decode.
    #[error(transparent)]
    Proof(ZkvmError),
    /// The proofs decode but do not verify against the statement.
    #[error("{}", does_not_verify(*segments))]
    DoesNotVerify {
        /// Segments claimed.
        segments: usize,
    },
}

fn does_not_verify(segments: usize) -> String {
    if segments == 1 {
        "the proof does not verify for this module, input, output and claim, by this node for \
         this task"
            .into()
    } else {
        format!(
            "the {segments} segment proofs do not all verify for this module, input, output and \
             claim, by this node for this task"
        )
    }
}

impl Claim {
    /// A claim from its text form (as proofs travel in messages and bundles): register states
    /// in decimal, memory commitments in hex, `links` as `(steps, state_out, memory_out)`.
    pub fn parse(
        class: &str,
        steps: u64,
        status: u64,
        state_out: &str,
        links: &[(u64, &str, &str)],
    ) -> Result<Claim, VerifyError> {
        let state = |s: &str| {
            s.parse::<u128>()
                .map_err(|_| VerifyError::MalformedClaim(format!("malformed register state {s:?}")))
        };
        Ok(Claim {
            class: class.to_string(),
            steps,
            status,
            state_out: state(state_out)?,
            links: links
                .iter()
                .map(|(steps, state_out, memory_out)| {
                    Ok(Link {
                        steps: *steps,
                        state_out: state(state_out)?,
                        memory_out: digest_from_hex(memory_out)
                            .map_err(|e| VerifyError::MalformedClaim(e.to_string()))?,
                    })
                })
                .collect::<Result<_, VerifyError>>()?,
        })
    }
}

/// A memory commitment as text: 64 hex digits (its 32 little-endian bytes), for claims that
/// travel.
pub fn digest_to_hex(d: &Fr) -> String {
    let mut out = vec![];
    d.serialize_compressed(&mut out).expect("in-memory");
    hex::encode(out)
}

/// Reads a memory commitment written by [`digest_to_hex`] (a value outside the field is
/// refused).
pub fn digest_from_hex(s: &str) -> Result<Fr, ZkvmError> {
    let bytes = hex::decode(s).map_err(|_| ZkvmError::Malformed("memory commitment"))?;
    if bytes.len() != 32 {
        return Err(ZkvmError::Malformed("memory commitment"));
    }
    Fr::deserialize_compressed(&bytes[..]).map_err(|_| ZkvmError::Malformed("memory commitment"))
}

#[derive(Debug, thiserror::Error)]
pub enum ZkvmError {
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error("{0}")]
    Fit(#[from] FitError),
    #[error(
        "the run needs more than the largest size class ({largest}: {segments} segments of \
         {steps} steps, a program of {program} instructions, {data} words of data, {io} words of \
         input and of output, {state} words of memory state between segments): {why}; use \
         --policy replicate:K for it"
    )]
    TooLong {
        largest: &'static str,
        steps: usize,
        segments: usize,
        state: usize,
        program: usize,
        data: usize,
        io: usize,
        why: String,
    },
    #[error("no proving key for class {0}")]
    NoKey(String),
    #[error("proving failed: {0}")]
    Prove(String),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Runs `wasm` on `input` in the tracing interpreter, with a step limit that stops runs too long
/// for [`MAX_SEGMENTS`] segments of `largest` early (the trace of a run that long takes about
/// 200 bytes a step).
pub fn trace(program: &Program, input: &[u8], largest: &Class) -> Trace {
    run(
        program,
        input,
        RunLimits {
            max_steps: (MAX_SEGMENTS * largest.steps) as u64 + 1,
            ..RunLimits::default()
        },
    )
}

/// The circuits that prove the run: one in the smallest class among `available` that holds it
/// whole, or else its segments in the largest available class (at most [`MAX_SEGMENTS`]).
pub fn fit(
    program: &Program,
    input: &[u8],
    trace: &Trace,
    available: &[Class],
) -> Result<Vec<ZkvmCircuit>, ZkvmError> {
    let largest = available.last().copied().unwrap_or(CLASSES[0]);
    if trace.exit == Exit::StepLimit {
        return Err(too_long(
            largest,
            format!("it ran past {} steps", trace.steps.len().saturating_sub(1)),
        ));
    }
    let mut last_err = None;
    for class in available {
        match ZkvmCircuit::new(*class, program, input, trace) {
            Ok(c) => return Ok(vec![c]),
            Err(e @ FitError::TooBig { .. }) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    // Too long for one proof: segments, if everything but the step count fits.
    let too_big_apart_from_steps = matches!(
        &last_err,
        Some(FitError::TooBig { what, .. }) if *what == "the run (steps)"
    );
    if too_big_apart_from_steps && trace.steps.len() <= MAX_SEGMENTS * largest.steps {
        match ZkvmCircuit::segments(largest, program, input, trace) {
            Ok(all) => return Ok(all),
            Err(e @ FitError::TooBig { .. }) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(too_long(
        largest,
        last_err.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

/// Whether `program`, with `input_len` bytes of input, fits `class` apart from its run: the
/// program, globals, initial data and input all have fixed capacities, known before anything
/// runs (the run's length and output are known only after). Submit refuses a task that fails
/// this in the largest class a mesh serves.
pub fn fits_statically(program: &Program, input_len: usize, class: &Class) -> Result<(), FitError> {
    let b = Boundary {
        binding: Fr::from(0u64),
        first: true,
        step_start: 0,
        steps: 0,
        halted: true,
        status: 0,
        state_in: 0,
        state_out: 0,
        memory_in: Fr::from(0u64),
        memory_out: Fr::from(0u64),
    };
    Statement::segment(class, program, &vec![0; input_len], &[], &b).map(|_| ())
}

fn too_long(c: Class, why: String) -> ZkvmError {
    ZkvmError::TooLong {
        largest: c.name,
        steps: c.steps,
        segments: MAX_SEGMENTS,
        program: c.program,
        data: c.data,
        io: c.input,
        state: c.state,
        why,
    }
}

/// Who proves what: every proof is bound to its task, the index of its segment and the node
/// that made it (a public input of the statement, [`Statement::binding`]). A node cannot
/// present another node's proof, or a re-randomised copy of it, as its own work for the same
/// module and input; per segment, because the segments of one run may be proved by several
/// nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub task_id: String,
    pub node_id: String,
}

impl Binding {
    pub fn new(task_id: &str, node_id: &str) -> Binding {
        Binding {
            task_id: task_id.to_string(),
            node_id: node_id.to_string(),
        }
    }

    /// The public input of segment `index` (counted from 0): SHA-256 over a domain tag and
    /// the length-prefixed task id, the index and the length-prefixed node id, reduced into
    /// the field.
    pub fn segment(&self, index: usize) -> Fr {
        use ark_ff::PrimeField;
        let mut h = Sha256::new();
        h.update(b"zkmesh proof binding v1\0");
        for part in [self.task_id.as_bytes(), self.node_id.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update((index as u64).to_le_bytes());
        Fr::from_le_bytes_mod_order(&h.finalize())
    }
}

/// Proves the circuits of one run (one, or its segments in order) as `binding` says; returns
/// one proof per segment and the claim. `progress(done, of)` is called after each segment.
pub fn prove(
    pk: &Pk,
    circuits: Vec<ZkvmCircuit>,
    binding: &Binding,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Vec<u8>>, Claim), ZkvmError> {
    let n = circuits.len();
    let last = circuits.last().ok_or(ZkvmError::Malformed("empty run"))?;
    let claim = Claim {
        class: last.class.name.to_string(),
        steps: last.statement.step_start + last.statement.steps,
        status: last.statement.status,
        state_out: last.statement.state_out,
        links: circuits[..n - 1]
            .iter()
            .map(|c| Link {
                steps: c.statement.steps,
                state_out: c.statement.state_out,
                memory_out: c.statement.memory_out,
            })
            .collect(),
    };
    let mut proofs = vec![];
    for (k, mut circuit) in circuits.into_iter().enumerate() {
        circuit.statement.binding = binding.segment(k);
        if circuit.class.name != claim.class {
            return Err(ZkvmError::Malformed(
                "run with segments of different classes",
            ));
        }
        let proof = groth::prove(pk, circuit).map_err(|e| ZkvmError::Prove(e.to_string()))?;
        proofs.push(proof_bytes(&proof));
        progress(k + 1, n);
    }
    Ok((proofs, claim))
}

/// The statements a claim makes about `program` run on `input` with `output`, one per segment,
/// each derived from the one before: segment k+1 starts where segment k ended (steps, register
/// state, memory commitment), the first from the module's initial state, and the last halts.
/// Each is bound to its segment as `binding` says.
pub fn statements(
    class: &Class,
    program: &Program,
    input: &[u8],
    output: &[u8],
    claim: &Claim,
    binding: &Binding,
) -> Result<Vec<Statement>, VerifyError> {
    if claim.links.len() >= MAX_SEGMENTS {
        return Err(VerifyError::TooManySegments {
            segments: claim.links.len() + 1,
        });
    }
    let empty = empty_memory(class);
    let mut out = vec![];
    let mut step_start = 0u64;
    let mut state_in = pack_state(0, 0, program.mem_pages);
    let mut memory_in = empty;
    let n = claim.links.len() + 1;
    for k in 0..n {
        let b = if let Some(link) = claim.links.get(k) {
            if link.steps != class.steps as u64 {
                return Err(VerifyError::ShortSegment {
                    segment: k + 1,
                    steps: link.steps,
                    class_steps: class.steps,
                });
            }
            Boundary {
                binding: binding.segment(k),
                first: k == 0,
                step_start,
                steps: link.steps,
                halted: false,
                status: 0,
                state_in,
                state_out: link.state_out,
                memory_in,
                memory_out: link.memory_out,
            }
        } else {
            let steps = claim
                .steps
                .checked_sub(step_start)
                .ok_or(VerifyError::TooManySteps)?;
            Boundary {
                binding: binding.segment(k),
                first: k == 0,
                step_start,
                steps,
                halted: true,
                status: claim.status,
                state_in,
                state_out: claim.state_out,
                memory_in,
                memory_out: empty,
            }
        };
        (step_start, state_in, memory_in) = (b.step_start + b.steps, b.state_out, b.memory_out);
        out.push(
            Statement::segment(class, program, input, output, &b)
                .map_err(VerifyError::ClaimDoesNotFit)?,
        );
    }
    Ok(out)
}

/// Checks that `proofs` (one per segment) prove `program` (lowered from the module) ran on
/// `input` and wrote `output` as `claim` says, each proved as `binding` says. The error is the
/// reason.
pub fn verify(
    pvk: &Pvk,
    program: &Program,
    input: &[u8],
    output: &[u8],
    claim: &Claim,
    proofs: &[Vec<u8>],
    binding: &Binding,
) -> Result<(), VerifyError> {
    let class =
        class_named(&claim.class).ok_or_else(|| VerifyError::UnknownClass(claim.class.clone()))?;
    verify_in(
        &class, pvk, None, program, input, output, claim, proofs, binding,
    )
}

/// The program's share of the public inputs in `class`, to compute once per module and pass
/// to [`verify_in`] for every proof about it.
pub fn program_term(
    pvk: &Pvk,
    class: &Class,
    program: &Program,
) -> Result<ProgramTerm, VerifyError> {
    let statement = Statement::new(class, program, &[], &[], 0, 0, 0)
        .map_err(VerifyError::ProgramDoesNotFit)?;
    ProgramTerm::new(pvk, &statement).ok_or(VerifyError::ForeignKey)
}

/// [`verify`] for a class given by value (tests use classes outside [`CLASSES`]), with the
/// program's share of the inputs precomputed when `term` is given.
#[allow(clippy::too_many_arguments)]
pub fn verify_in(
    class: &Class,
    pvk: &Pvk,
    term: Option<&ProgramTerm>,
    program: &Program,
    input: &[u8],
    output: &[u8],
    claim: &Claim,
    proofs: &[Vec<u8>],
    binding: &Binding,
) -> Result<(), VerifyError> {
    let statements = statements(class, program, input, output, claim, binding)?;
    if proofs.len() != statements.len() {
        return Err(VerifyError::ProofCount {
            proofs: proofs.len(),
            segments: statements.len(),
        });
    }
    let proofs: Vec<Zk> = proofs
        .iter()
        .map(|p| proof_from(p))
        .collect::<Result<_, _>>()
        .map_err(VerifyError::Proof)?;
    let ok = if proofs.len() == 1 {
        groth::verify_with(pvk, &statements[0], term, &proofs[0])
    } else {
        let items: Vec<(&Statement, &Zk)> = statements.iter().zip(&proofs).collect();
        groth::verify_batch_with(pvk, &items, term)
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::DoesNotVerify {
            segments: proofs.len(),
        })
    }
}

/// Lowers a module for a task's memory limit (the verifier's own lowering, never the
/// prover's). The limit is part of what a proof is about: a `memory.grow` past it returns -1,
/// and a trap after that halts with [`status::OUT_OF_MEMORY`], as the runtime reports such a
/// run ([`crate::lower::lower_limited`]).
pub fn program(wasm: &[u8], memory_limit_bytes: u64) -> Result<Program, ZkvmError> {
    Ok(crate::lower::lower_limited(wasm, memory_limit_bytes)?)
}

/// A memory limit that lets a run grow to the zkVM's own bound ([`crate::isa::MAX_PAGES`]
/// pages), for runs outside a task (benchmarks).
pub const ZKVM_MEMORY_BYTES: u64 = crate::isa::MAX_PAGES * crate::isa::PAGE;

/// How a run that halts with `status` ends, in the terms of the mesh's runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Status 0: the entry function returned.
    Returned,
    /// A WebAssembly trap: unreachable, an indirect call that does not match, an access out of
    /// bounds, a division by zero, an integer overflow.
    Trapped,
    /// A trap after a `memory.grow` past the task's memory limit returned -1.
    OutOfMemory,
}

/// How a run the runtime ended with `exit_kind` (the wire value of `zkmesh.v1.ExitKind`:
/// 1 ok, 2 trap, 4 out of memory) ends in these terms, if the zkVM proves such an ending at all
/// (it does not prove running out of fuel or time, or any other exit).
pub fn ending_of_exit(exit_kind: i32) -> Option<Ending> {
    match exit_kind {
        1 => Some(Ending::Returned),
        2 => Some(Ending::Trapped),
        4 => Some(Ending::OutOfMemory),
        _ => None,
    }
}

pub fn ending(status: u64) -> Ending {
    match status {
        status::OK => Ending::Returned,
        status::OUT_OF_MEMORY => Ending::OutOfMemory,
        _ => Ending::Trapped,
    }
}

pub fn proof_bytes(p: &Zk) -> Vec<u8> {
    let mut out = vec![];
    p.serialize_compressed(&mut out).expect("in-memory");
    out
}

pub fn proof_from(bytes: &[u8]) -> Result<Zk, ZkvmError> {
    Zk::deserialize_compressed(bytes).map_err(|_| ZkvmError::Malformed("proof"))
}

/// Proving keys travel uncompressed: decompressing millions of points costs more than the bytes.
pub fn pk_bytes(pk: &Pk) -> Vec<u8> {
    let mut out = Vec::with_capacity(pk.serialized_size(Compress::No));
    pk.serialize_uncompressed(&mut out).expect("in-memory");
    out
}

/// Reads a proving key whose bytes were already checked against their SHA-256 (so the curve
/// checks, which take longer than proving a small class, are skipped).
pub fn pk_from_checked(bytes: &[u8]) -> Result<Pk, ZkvmError> {
    Pk::deserialize_with_mode(bytes, Compress::No, Validate::No)
        .map_err(|_| ZkvmError::Malformed("proving key"))
}

pub fn vk_bytes(vk: &Vk) -> Vec<u8> {
    let mut out = vec![];
    vk.serialize_compressed(&mut out).expect("in-memory");
    out
}

pub fn vk_from(bytes: &[u8]) -> Result<Vk, ZkvmError> {
    Vk::deserialize_compressed(bytes).map_err(|_| ZkvmError::Malformed("verifying key"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
