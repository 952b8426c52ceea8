//! Groth16 over BN254: setup per size class, proving a traced run, and verification against a
//! [`Statement`] the verifier computed itself.

use ark_bn254::{Bn254, Fr, G1Affine, G1Projective};
use ark_ec::VariableBaseMSM;
use ark_ff::Zero;
use ark_groth16::{Groth16, PreparedVerifyingKey, Proof, ProvingKey, VerifyingKey};
use ark_snark::SNARK;
use rand::rngs::OsRng;

use crate::circuit::{Class, Statement, ZkvmCircuit};
use crate::isa::{Instr, Op, Program};
use crate::trace::{Access, Regs, Step};

pub type Pk = ProvingKey<Bn254>;
pub type Vk = VerifyingKey<Bn254>;
pub type Pvk = PreparedVerifyingKey<Bn254>;
pub type Zk = Proof<Bn254>;

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("synthesis failed: {0}")]
    Synthesis(#[from] ark_relations::gr1cs::SynthesisError),
}

/// A circuit of the class's shape with a trivial witness, for setup: the constraint system's
/// shape depends only on the class.
pub fn blank(class: Class) -> ZkvmCircuit {
    let program = Program {
        code: vec![Instr::new(Op::Halt)],
        globals: vec![0],
        data_base: 0,
        data: vec![],
        mem_pages: 0,
        mem_max_pages: 0,
    };
    let halt = Step {
        regs: Regs::default(),
        instr: program.code[0],
        acc: [
            Access::NONE_READ,
            Access::NONE_READ,
            Access::NONE_READ,
            Access::NONE_WRITE,
        ],
    };
    let statement = Statement::new(&class, &program, b"", b"", 0, 0, 0).expect("fits");
    ZkvmCircuit {
        class,
        statement,
        steps: vec![halt; class.steps],
        tamper: Default::default(),
        strict: false,
        violation: None,
        shape: None,
        memory_in: vec![],
        memory_out: vec![],
    }
}

/// The fingerprint of `class`'s circuit: its capacities and the [`shape`] of the circuit. Keys
/// are stored with it, and keys made for another circuit, or for other capacities of the same
/// class, are never used (they would give proofs that do not verify).
pub fn fingerprint(class: &Class) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{} {class:?}", shape())))
}

/// A hash of the circuit's shape (every constraint's variables and coefficients) for a small
/// reference class. Every class is built from the same step and network gadgets, so any change
/// to the circuit changes it.
pub fn shape() -> String {
    use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem, SynthesisMode};
    static ONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let class = Class {
            name: "fingerprint",
            steps: 4,
            program: 8,
            globals: 2,
            data: 2,
            input: 1,
            output: 1,
            state: 2,
        };
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut c = blank(class);
        c.shape = Some(out.clone());
        let cs = ConstraintSystem::<Fr>::new_ref();
        cs.set_mode(SynthesisMode::Setup);
        c.generate_constraints(cs).expect("reference circuit");
        out.lock().unwrap().clone()
    })
    .clone()
}

/// The number of constraints of a class.
pub fn count_constraints(class: Class) -> Result<u64, ProofError> {
    use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem, SynthesisMode};
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_mode(SynthesisMode::Setup);
    blank(class).generate_constraints(cs.clone())?;
    Ok(cs.num_constraints() as u64)
}

/// A hash of the whole constraint system of `class` (every constraint's variables and
/// coefficients, in order) and of its capacities: keys made for a system with another hash
/// must not be used, whatever changed. Synthesises the class without keeping its matrices, so
/// it costs time (seconds for c14) but little memory; a verifier checks it when a class is
/// first used, not at every start.
pub fn constraint_system_hash(class: &Class) -> Result<String, ProofError> {
    use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem, SynthesisMode};
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut c = blank(*class);
    c.shape = Some(out.clone());
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_mode(SynthesisMode::Prove {
        construct_matrices: false,
        generate_lc_assignments: false,
    });
    c.generate_constraints(cs)?;
    let shape = out.lock().unwrap().clone();
    Ok(with_capacities(class, &shape))
}

fn with_capacities(class: &Class, shape: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{shape} {class:?}")))
}

/// Generates the proving and verifying keys of a class from fresh operating-system randomness,
/// and the [`constraint_system_hash`] of the system they were made for (from the same
/// synthesis). The randomness (the "toxic waste") lives only inside this call.
pub fn setup(class: Class) -> Result<(Pk, Vk, String), ProofError> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut c = blank(class);
    c.shape = Some(out.clone());
    let (pk, vk) = Groth16::<Bn254>::circuit_specific_setup(c, &mut OsRng)?;
    let shape = out.lock().unwrap().clone();
    Ok((pk, vk, with_capacities(&class, &shape)))
}

pub fn prove(pk: &Pk, circuit: ZkvmCircuit) -> Result<Zk, ProofError> {
    Ok(Groth16::<Bn254>::prove(pk, circuit, &mut OsRng)?)
}

pub fn prepare(vk: &Vk) -> Pvk {
    ark_groth16::prepare_verifying_key(vk)
}

/// `γ_abc[0] + Σ x_i γ_abc[i+1]` over the non-zero inputs only (most of a statement is
/// padding).
pub fn prepare_inputs(pvk: &Pvk, inputs: &[Fr]) -> Option<G1Projective> {
    prepare_inputs_with(pvk, inputs, None)
}

/// The shares of the input sum that are the same for every proof about one module in one class,
/// so a verifier computes them once per module and adds them to each proof's own inputs: the
/// program (with its data base), the initial globals and data and register state (the first
/// segment's), and the empty memory commitments (the first segment's state in, the last one's
/// state out). Each keeps its inputs and is used only for a statement that has exactly those.
#[derive(Clone)]
pub struct ProgramTerm {
    groups: Vec<Group>,
}

#[derive(Clone)]
struct Group {
    range: std::ops::Range<usize>,
    inputs: Vec<Fr>,
    sum: G1Projective,
}

impl ProgramTerm {
    /// The shares of `statement` (that of a single-segment run of the module).
    pub fn new(pvk: &Pvk, statement: &Statement) -> Option<ProgramTerm> {
        let all = statement.to_field();
        let (s_in, m_in, m_out, base) = (
            Statement::STATE_IN_AT,
            Statement::MEMORY_IN_AT,
            Statement::MEMORY_OUT_AT,
            Statement::DATA_BASE_AT,
        );
        assert!(all[s_in] == Fr::from(statement.state_in));
        assert!(all[m_in] == statement.memory_in && all[m_out] == statement.memory_out);
        assert!(all[base] == Fr::from(statement.data_base));
        let program = statement.program_range();
        let initial = program.end..program.end + statement.globals.len() + statement.data.len();
        let mut groups = vec![];
        let one = |k: usize| k..k + 1;
        for range in [base..program.end, initial, one(s_in), one(m_in), one(m_out)] {
            let inputs = all.get(range.clone())?.to_vec();
            let bases = pvk.vk.gamma_abc_g1.get(range.start + 1..range.end + 1)?;
            let (bases, scalars): (Vec<G1Affine>, Vec<Fr>) = inputs
                .iter()
                .zip(bases)
                .filter(|(x, _)| !x.is_zero())
                .map(|(x, g)| (*g, *x))
                .unzip();
            let sum = G1Projective::msm(&bases, &scalars).ok()?;
            groups.push(Group { range, inputs, sum });
        }
        Some(ProgramTerm { groups })
    }
}

/// [`prepare_inputs`], with the shares in `term` that match the inputs taken from it.
fn prepare_inputs_with(
    pvk: &Pvk,
    inputs: &[Fr],
    term: Option<&ProgramTerm>,
) -> Option<G1Projective> {
    if inputs.len() + 1 != pvk.vk.gamma_abc_g1.len() {
        return None;
    }
    let used: Vec<&Group> = term
        .map(|t| {
            t.groups
                .iter()
                .filter(|g| inputs.get(g.range.clone()) == Some(&g.inputs[..]))
                .collect()
        })
        .unwrap_or_default();
    let skipped = |k: usize| used.iter().any(|g| g.range.contains(&k));
    let (bases, scalars): (Vec<G1Affine>, Vec<Fr>) = inputs
        .iter()
        .zip(&pvk.vk.gamma_abc_g1[1..])
        .enumerate()
        .filter(|(k, (x, _))| !x.is_zero() && !skipped(*k))
        .map(|(_, (x, g))| (*g, *x))
        .unzip();
    let sum = G1Projective::msm(&bases, &scalars).ok()?;
    let shares: G1Projective = used.iter().map(|g| g.sum).sum();
    Some(sum + shares + pvk.vk.gamma_abc_g1[0])
}

/// True when `proof` proves `statement`.
pub fn verify(pvk: &Pvk, statement: &Statement, proof: &Zk) -> bool {
    verify_with(pvk, statement, None, proof)
}

/// [`verify`] with the program's share of the inputs precomputed.
pub fn verify_with(
    pvk: &Pvk,
    statement: &Statement,
    term: Option<&ProgramTerm>,
    proof: &Zk,
) -> bool {
    let Some(prepared) = prepare_inputs_with(pvk, &statement.to_field(), term) else {
        return false;
    };
    Groth16::<Bn254>::verify_proof_with_prepared_inputs(pvk, proof, &prepared).unwrap_or(false)
}

/// Checks many proofs of one key at once: with random weights r_i, the product of
/// e(r_i A_i, B_i) must equal e(alpha, beta)^(sum r_i) e(sum r_i PI_i, gamma) e(sum r_i C_i, delta).
/// One Miller loop per proof plus two, and one final exponentiation, instead of three Miller
/// loops and a final exponentiation per proof. False if any proof is invalid (except with
/// negligible probability).
pub fn verify_batch(pvk: &Pvk, items: &[(&Statement, &Zk)]) -> bool {
    verify_batch_with(pvk, items, None)
}

/// [`verify_batch`] with the program's share of the inputs precomputed.
pub fn verify_batch_with(
    pvk: &Pvk,
    items: &[(&Statement, &Zk)],
    term: Option<&ProgramTerm>,
) -> bool {
    use ark_ec::pairing::Pairing;
    use ark_ec::{AffineRepr, CurveGroup};
    use ark_ff::{Field, PrimeField, UniformRand};
    if items.is_empty() {
        return true;
    }
    let mut rng = OsRng;
    let mut g1: Vec<<Bn254 as Pairing>::G1Prepared> = Vec::with_capacity(items.len() + 2);
    let mut g2: Vec<<Bn254 as Pairing>::G2Prepared> = Vec::with_capacity(items.len() + 2);
    let (mut sum_r, mut sum_pi, mut sum_c) = (
        Fr::from(0u64),
        G1Projective::default(),
        G1Projective::default(),
    );
    for (statement, proof) in items {
        let r = Fr::rand(&mut rng);
        let Some(pi) = prepare_inputs_with(pvk, &statement.to_field(), term) else {
            return false;
        };
        sum_r += r;
        sum_pi += pi * r;
        sum_c += proof.c.into_group() * r;
        g1.push((proof.a.into_group() * r).into_affine().into());
        g2.push(proof.b.into());
    }
    g1.push(sum_pi.into_affine().into());
    g2.push(pvk.gamma_g2_neg_pc.clone());
    g1.push(sum_c.into_affine().into());
    g2.push(pvk.delta_g2_neg_pc.clone());
    let Some(lhs) = Bn254::final_exponentiation(Bn254::multi_miller_loop(g1, g2)) else {
        return false;
    };
    lhs.0 == pvk.alpha_g1_beta_g2.pow(sum_r.into_bigint())
}
