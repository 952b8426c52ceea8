//! Result bundles: everything needed to check a proved result offline, in one JSON file.
//!
//! A bundle carries the module, the input and the output themselves (with their hashes), the
//! node's signed receipt, and the zkVM proof with the id (SHA-256) of the verifying key it was
//! made for. `zkmesh verify` rebuilds the statement from the bytes, with its own lowering of the
//! module, and checks the proof with a verifying key from a file or from the mesh's verifier,
//! whose hash must be the bundle's key id.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zkmesh_proto::{Task, TaskResult, ZkProof};
use zkmesh_prover::zkvm;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Version 2: the task's memory limit is part of what the proof is about.
pub const FORMAT: &str = "zkmesh-result-bundle/2";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub task_id: String,
    /// The task's memory limit: the verifier lowers the module for it (a memory.grow past it
    /// returns -1, and a trap after that ends out of memory, as in the runtime).
    pub memory_limit_mib: u32,
    pub module_hash: String,
    pub input_hash: String,
    pub output_hash: String,
    pub module_base64: String,
    pub input_base64: String,
    pub output_base64: String,
    pub receipt: BundleReceipt,
    pub proof: BundleProof,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleReceipt {
    pub node_id: String,
    pub task_id: String,
    pub module_hash: String,
    pub input_hash: String,
    pub output_hash: String,
    pub fuel_used: u64,
    pub exit: i32,
    pub signature_hex: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleProof {
    pub circuit_class: String,
    pub verifying_key_sha256: String,
    pub steps: u64,
    pub status: u64,
    pub state_out: String,
    /// Proof of the last segment (the whole run when `links` is empty).
    pub proof_base64: String,
    /// The segments before the last, in order, for a run proved in segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<BundleLink>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleLink {
    pub steps: u64,
    pub state_out: String,
    pub memory_out: String,
    pub proof_base64: String,
}

impl Bundle {
    pub fn new(task: &Task, result: &TaskResult, module: &[u8]) -> anyhow::Result<Bundle> {
        let proof = result.proof.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "task {} has no proof (its policy is not proof, or it is not verified yet)",
                task.task_id
            )
        })?;
        let receipt = result
            .receipts
            .first()
            .ok_or_else(|| anyhow::anyhow!("task {} has no receipt", task.task_id))?;
        Ok(Bundle {
            format: FORMAT.into(),
            task_id: task.task_id.clone(),
            memory_limit_mib: task.memory_limit_mib,
            module_hash: task.module_hash.clone(),
            input_hash: task.input_hash.clone(),
            output_hash: result.output_hash.clone(),
            module_base64: B64.encode(module),
            input_base64: B64.encode(&result.input),
            output_base64: B64.encode(&result.output),
            receipt: BundleReceipt {
                node_id: receipt.node_id.clone(),
                task_id: receipt.task_id.clone(),
                module_hash: receipt.module_hash.clone(),
                input_hash: receipt.input_hash.clone(),
                output_hash: receipt.output_hash.clone(),
                fuel_used: receipt.fuel_used,
                exit: receipt.exit,
                signature_hex: hex::encode(&receipt.signature),
            },
            proof: BundleProof::from(proof),
        })
    }
}

impl From<&ZkProof> for BundleProof {
    fn from(p: &ZkProof) -> Self {
        BundleProof {
            circuit_class: p.circuit_class.clone(),
            verifying_key_sha256: p.verifying_key_sha256.clone(),
            steps: p.steps,
            // A verified proof has a known halt; an unknown one gives a code no proof has.
            status: p.halt_code().unwrap_or(u64::MAX),
            state_out: p.state_out.clone(),
            proof_base64: B64.encode(&p.proof),
            links: p
                .links
                .iter()
                .map(|l| BundleLink {
                    steps: l.steps,
                    state_out: l.state_out.clone(),
                    memory_out: l.memory_out.clone(),
                    proof_base64: B64.encode(&l.proof),
                })
                .collect(),
        }
    }
}

/// What a successful check established.
pub struct Checked {
    pub class: String,
    pub steps: u64,
    pub segments: usize,
    pub output_len: usize,
    pub verify_us: u128,
    /// How the proved run ended: "returned", "trapped" or "out of memory".
    pub ending: &'static str,
}

/// Checks a bundle with a verifying key (its bytes). `module` replaces the bundle's copy when
/// given (it must hash the same). The error is the reason the bundle is not valid.
pub fn check(bundle: &Bundle, vk: &[u8], module: Option<&[u8]>) -> Result<Checked, String> {
    if bundle.format != FORMAT {
        return Err(format!("unknown bundle format {:?}", bundle.format));
    }
    let decode = |what: &str, s: &str| {
        B64.decode(s)
            .map_err(|e| format!("{what} is not valid base64: {e}"))
    };
    let own_module = decode("module", &bundle.module_base64)?;
    let module = module.unwrap_or(&own_module);
    let input = decode("input", &bundle.input_base64)?;
    let output = decode("output", &bundle.output_base64)?;
    let hash = zkvm::sha256_hex;
    if hash(module) != bundle.module_hash {
        return Err("the module does not hash to the bundle's module hash".into());
    }
    if hash(&input) != bundle.input_hash {
        return Err("the input does not hash to the bundle's input hash".into());
    }
    if hash(&output) != bundle.output_hash {
        return Err("the output does not hash to the bundle's output hash".into());
    }
    let r = &bundle.receipt;
    if r.task_id != bundle.task_id
        || r.module_hash != bundle.module_hash
        || r.input_hash != bundle.input_hash
        || r.output_hash != bundle.output_hash
    {
        return Err("the receipt is about another task, module, input or output".into());
    }
    if zkvm::ending_of_exit(r.exit) != Some(zkvm::ending(bundle.proof.status)) {
        return Err("the receipt's exit contradicts the proof's halt status".into());
    }
    if hash(vk) != bundle.proof.verifying_key_sha256 {
        return Err(format!(
            "the verifying key given is {}, but the proof was made for {}",
            hash(vk),
            bundle.proof.verifying_key_sha256
        ));
    }
    let vk = zkvm::vk_from(vk).map_err(|e| e.to_string())?;
    let pvk = zkmesh_prover::groth::prepare(&vk);
    let program =
        zkvm::program(module, (bundle.memory_limit_mib as u64) << 20).map_err(|e| e.to_string())?;
    let p = &bundle.proof;
    let links: Vec<(u64, &str, &str)> = p
        .links
        .iter()
        .map(|l| (l.steps, l.state_out.as_str(), l.memory_out.as_str()))
        .collect();
    let claim = zkvm::Claim::parse(&p.circuit_class, p.steps, p.status, &p.state_out, &links)
        .map_err(|e| e.to_string())?;
    let mut proofs = vec![];
    for (k, l) in p.links.iter().enumerate() {
        proofs.push(decode(
            &format!("segment {}'s proof", k + 1),
            &l.proof_base64,
        )?);
    }
    proofs.push(decode("proof", &p.proof_base64)?);
    let started = std::time::Instant::now();
    // The proofs are bound to the task and to the node that made them (the receipt's).
    let binding = zkvm::Binding::new(&bundle.task_id, &r.node_id);
    zkvm::verify(&pvk, &program, &input, &output, &claim, &proofs, &binding)
        .map_err(|e| e.to_string())?;
    Ok(Checked {
        class: claim.class,
        steps: claim.steps,
        segments: claim.links.len() + 1,
        output_len: output.len(),
        verify_us: started.elapsed().as_micros(),
        ending: match zkvm::ending(p.status) {
            zkvm::Ending::Returned => "returned",
            zkvm::Ending::Trapped => "trapped",
            zkvm::Ending::OutOfMemory => "out of memory",
        },
    })
}
