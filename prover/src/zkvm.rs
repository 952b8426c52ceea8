//! The zkVM as the mesh uses it: size classes, proving a run, verifying a claimed result, and
//! the byte formats of keys and proofs.

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use sha2::{Digest, Sha256};

use crate::circuit::{Class, FitError, Statement, ZkvmCircuit};
use crate::groth::{self, Pk, Pvk, Vk, Zk};
use crate::isa::Program;
use crate::lower::{LowerError, lower};
use crate::trace::{Exit, RunLimits, Trace, run};

/// A class whose data-memory network has `2^k` entries: capacities scale with it, and the step
/// capacity is whatever fills the network exactly. The program holds `2^(k-2)` instructions, so
/// program and step fetches together fill a fetch network of `2^(k-1)` entries (the step
/// capacity is a little under `2^(k-2)`); the guests' programs are far smaller than their runs.
const fn class(name: &'static str, k: u32) -> Class {
    let entries = 1usize << k;
    let globals = 16;
    let data = 1 << (k - 4);
    let io = 1 << (k - 6);
    let fixed = globals + data + 2 * (io + 1);
    Class {
        name,
        steps: (entries - fixed) / 4,
        program: 1 << (k - 2),
        globals,
        data,
        input: io,
        output: io,
    }
}

/// The size classes, smallest first. About 1,150-1,250 constraints per step: c9 is about
/// 127,000 constraints (tests), c12 about 1.1 million, c16 about 20 million.
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

/// What a proof claims besides the module, input and output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub class: String,
    pub steps: u64,
    pub status: u64,
    pub state_out: u128,
}

#[derive(Debug, thiserror::Error)]
pub enum ZkvmError {
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error("{0}")]
    Fit(#[from] FitError),
    #[error(
        "the run needs more than the largest size class ({largest}: {steps} steps, a program of \
         {program} instructions, {data} words of data, {io} words of input and of output): {why}; \
         use --policy replicate:K for it"
    )]
    TooLong {
        largest: &'static str,
        steps: usize,
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
/// for any class early.
pub fn trace(program: &Program, input: &[u8]) -> Trace {
    let largest = CLASSES[CLASSES.len() - 1].steps as u64;
    run(
        program,
        input,
        RunLimits {
            max_steps: largest + 1,
            ..RunLimits::default()
        },
    )
}

/// The smallest class among `available` that holds the run, with its circuit.
pub fn fit(
    program: &Program,
    input: &[u8],
    trace: &Trace,
    available: &[Class],
) -> Result<ZkvmCircuit, ZkvmError> {
    if trace.exit == Exit::StepLimit {
        let last = CLASSES[CLASSES.len() - 1];
        return Err(too_long(last, format!("it ran past {} steps", last.steps)));
    }
    let mut last_err = None;
    for class in available {
        match ZkvmCircuit::new(*class, program, input, trace) {
            Ok(c) => return Ok(c),
            Err(e @ FitError::TooBig { .. }) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    let largest = available.last().copied().unwrap_or(CLASSES[0]);
    Err(too_long(
        largest,
        last_err.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

fn too_long(c: Class, why: String) -> ZkvmError {
    ZkvmError::TooLong {
        largest: c.name,
        steps: c.steps,
        program: c.program,
        data: c.data,
        io: c.input,
        why,
    }
}

/// Proves a circuit; returns the proof bytes and the claim.
pub fn prove(pk: &Pk, circuit: ZkvmCircuit) -> Result<(Vec<u8>, Claim), ZkvmError> {
    let claim = Claim {
        class: circuit.class.name.to_string(),
        steps: circuit.statement.steps,
        status: circuit.statement.status,
        state_out: circuit.statement.state_out,
    };
    let proof = groth::prove(pk, circuit).map_err(|e| ZkvmError::Prove(e.to_string()))?;
    Ok((proof_bytes(&proof), claim))
}

/// Checks that `proof` proves `program` (lowered from the module) ran on `input` and wrote
/// `output` as `claim` says. The error is the reason.
pub fn verify(
    pvk: &Pvk,
    program: &Program,
    input: &[u8],
    output: &[u8],
    claim: &Claim,
    proof: &[u8],
) -> Result<(), String> {
    let class =
        class_named(&claim.class).ok_or_else(|| format!("unknown class {}", claim.class))?;
    let statement = Statement::new(
        &class,
        program,
        input,
        output,
        claim.steps,
        claim.status,
        claim.state_out,
    )
    .map_err(|e| format!("the claim does not fit its class: {e}"))?;
    let proof = proof_from(proof).map_err(|e| e.to_string())?;
    if groth::verify(pvk, &statement, &proof) {
        Ok(())
    } else {
        Err("the proof does not verify for this module, input, output and claim".into())
    }
}

/// Lowers a module (the verifier's own lowering, never the prover's).
pub fn program(wasm: &[u8]) -> Result<Program, ZkvmError> {
    Ok(lower(wasm)?)
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
