//! Proving a run under the proof policy: the trace, the segments' Groth16 proofs, and the
//! proving keys fetched from the verifier.

use std::sync::Arc;

use tonic::transport::Channel;
use zkmesh_kit::client::channel;
use zkmesh_proto::*;

use crate::enrollment::node_tls;
use crate::shared::Shared;

/// Traces the run in the zkVM, checks it agrees with wasmtime, and proves it in the smallest
/// ready class that holds it.
pub(crate) async fn prove(
    shared: &Arc<Shared>,
    task_id: &str,
    wasm: Arc<Vec<u8>>,
    input: Vec<u8>,
    memory_limit_mib: u32,
    output: &[u8],
    exit: ExitKind,
    progress: impl Fn(String) + Send + Sync + 'static,
) -> Result<ZkProof, String> {
    use zkmesh_prover::zkvm;
    let endpoint = shared.config.verifier_endpoint.clone().ok_or(
        "this node has no verifier_endpoint in its configuration, so it has no proving keys",
    )?;
    let tls = node_tls(&shared.config).map_err(|e| e.to_string())?;
    let mut verifier = zkmesh_proto::verifier_service_client::VerifierServiceClient::new(
        channel(&endpoint, &tls, "verifier").map_err(|e| e.to_string())?,
    )
    .max_decoding_message_size(64 << 20);
    let circuits_info = zkmesh_kit::lists::all_circuits(&verifier)
        .await
        .map_err(|e| format!("verifier: {}", e.message()))?;
    let ready: Vec<_> = zkvm::CLASSES
        .iter()
        .filter(|c| {
            circuits_info
                .iter()
                .any(|i| i.circuit_class == c.name && i.state() == CircuitSetupState::Ready)
        })
        .copied()
        .collect();
    if ready.is_empty() {
        return Err("the verifier has no circuit class ready yet".into());
    }
    let (circuits, traced) = tokio::task::spawn_blocking(move || {
        let program =
            zkvm::program(&wasm, (memory_limit_mib as u64) << 20).map_err(|e| e.to_string())?;
        let largest = ready.last().expect("checked above");
        let trace = zkvm::trace(&program, &input, largest);
        let traced = (trace.output.clone(), trace.exit.clone());
        zkvm::fit(&program, &input, &trace, &ready)
            .map(|c| (c, traced))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("tracing crashed: {e}"))??;
    // The zkVM must have computed what wasmtime did; a difference is a bug to report, not a
    // result to prove.
    let zk_ending = match traced.1 {
        zkmesh_prover::trace::Exit::Halted(status) => Some(zkvm::ending(status)),
        _ => None,
    };
    if traced.0 != output || zk_ending.is_none() || zk_ending != zkvm::ending_of_exit(exit as i32) {
        return Err(format!(
            "the zkVM and wasmtime disagree on this run (zkVM: {:?}, {} output bytes; wasmtime: \
             {exit:?}, {} output bytes)",
            traced.1,
            traced.0.len(),
            output.len()
        ));
    }
    let class = circuits[0].class.name;
    let info = circuits_info
        .iter()
        .find(|i| i.circuit_class == class)
        .cloned()
        .expect("ready classes come from the list");
    let steps = circuits
        .last()
        .map_or(0, |c| c.statement.step_start + c.statement.steps);
    let segments = circuits.len();
    if segments == 1 {
        progress(format!(
            "traced: {steps} zkVM steps; proving in circuit class {class} ({} constraints)",
            info.constraints
        ));
    } else {
        progress(format!(
            "traced: {steps} zkVM steps, more than class {class} holds: proving {segments} \
             segments of {} steps ({} constraints each)",
            circuits[0].class.steps, info.constraints
        ));
    }
    let pk = proving_key(shared, &mut verifier, &info).await?;
    let started = std::time::Instant::now();
    let progress = Arc::new(progress);
    let report = progress.clone();
    let binding = zkvm::Binding::new(task_id, &shared.node_id);
    let (mut proofs, claim) = tokio::task::spawn_blocking(move || {
        zkvm::prove(&pk, circuits, &binding, |done, of| {
            if of > 1 {
                report(format!(
                    "proved segment {done} of {of} ({} s)",
                    started.elapsed().as_secs()
                ))
            }
        })
    })
    .await
    .map_err(|e| format!("prover crashed: {e}"))?
    .map_err(|e| e.to_string())?;
    let last = proofs.pop().expect("one proof per segment");
    Ok(ZkProof {
        circuit_class: claim.class,
        proof: last,
        steps: claim.steps,
        halt: ZkHalt::from_code(claim.status).map_or(ZkHalt::Unspecified as i32, |h| h as i32),
        status: claim.status,
        state_out: claim.state_out.to_string(),
        verifying_key_sha256: info.verifying_key_sha256,
        prove_time_ms: started.elapsed().as_millis() as u64,
        links: claim
            .links
            .iter()
            .zip(proofs)
            .map(|(l, proof)| ZkLink {
                steps: l.steps,
                state_out: l.state_out.to_string(),
                memory_out: zkvm::digest_to_hex(&l.memory_out),
                proof,
            })
            .collect(),
    })
}

/// The proving key of a class: from memory, from the keys directory (checked against its
/// hash), or downloaded from the verifier (checked, then kept).
pub(crate) async fn proving_key(
    shared: &Arc<Shared>,
    verifier: &mut zkmesh_proto::verifier_service_client::VerifierServiceClient<Channel>,
    info: &CircuitInfo,
) -> Result<Arc<zkmesh_prover::groth::Pk>, String> {
    use zkmesh_prover::zkvm;
    let hash = info.proving_key_sha256.clone();
    let mut keys = shared.keys.lock().await;
    if let Some(pk) = keys.get(&hash) {
        return Ok(pk.clone());
    }
    let dir = shared
        .config
        .keys_dir
        .clone()
        .unwrap_or_else(|| shared.config.data_dir.join("keys"));
    let path = dir.join(format!("{hash}.pk"));
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) if zkvm::sha256_hex(&b) == hash => b,
        _ => {
            tracing::info!(class = %info.circuit_class, size = info.proving_key_size, "downloading proving key");
            let mut stream = verifier
                .fetch_proving_key(FetchProvingKeyRequest {
                    circuit_class: info.circuit_class.clone(),
                })
                .await
                .map_err(|e| format!("proving key: {}", e.message()))?
                .into_inner();
            let mut bytes = Vec::with_capacity(info.proving_key_size as usize);
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| format!("proving key: {}", e.message()))?
            {
                bytes.extend_from_slice(&chunk.chunk);
            }
            if zkvm::sha256_hex(&bytes) != hash {
                return Err("the proving key downloaded does not match its hash".into());
            }
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let tmp = dir.join(format!("{hash}.{}.tmp", shared.node_id));
            tokio::fs::write(&tmp, &bytes)
                .await
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            bytes
        }
    };
    let pk = tokio::task::spawn_blocking(move || zkvm::pk_from_checked(&bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let pk = Arc::new(pk);
    keys.insert(hash, pk.clone());
    Ok(pk)
}
