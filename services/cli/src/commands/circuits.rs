//! `zkmesh circuits`: the verifier's circuit classes and their keys.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use zkmesh_proto::*;

use crate::args::CircuitsCommand;
use crate::commands::client;

/// `zkmesh circuits list|setup|vk`.
pub(crate) async fn circuits(mesh: &Option<PathBuf>, c: CircuitsCommand) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    match c {
        CircuitsCommand::List { json } => {
            let list = api.circuits().await?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| {
                        json!({"class": c.circuit_class, "steps": c.steps, "program": c.program,
                        "data_words": c.data_words, "input_words": c.input_words,
                        "output_words": c.output_words, "state": c.state_line(),
                        "constraints": c.constraints, "proving_key_size": c.proving_key_size,
                        "proving_key_sha256": c.proving_key_sha256,
                        "verifying_key_sha256": c.verifying_key_sha256, "setup_ms": c.setup_ms})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("class   steps   program  state");
                for c in list {
                    println!(
                        "{:<7} {:>6}  {:>7}  {}",
                        c.circuit_class,
                        c.steps,
                        c.program,
                        c.state_line()
                    );
                }
            }
            Ok(0)
        }
        CircuitsCommand::Setup { class } => {
            let mut stream = api
                .admin_verifier()?
                .setup_circuit(SetupCircuitRequest {
                    circuit_class: class.clone(),
                })
                .await?
                .into_inner();
            while let Some(p) = stream.message().await? {
                if p.done {
                    let info = p.info.unwrap_or_default();
                    println!(
                        "{class} ready: {} constraints, proving key {} bytes (sha256 {}), verifying key sha256 {}",
                        info.constraints,
                        info.proving_key_size,
                        info.proving_key_sha256,
                        info.verifying_key_sha256
                    );
                } else {
                    eprintln!("{class}: {} ({} s)", p.phase, p.elapsed_ms / 1000);
                }
            }
            Ok(0)
        }
        CircuitsCommand::Vk { class, out } => {
            let data = api
                .verifier()?
                .get_verifying_key(GetVerifyingKeyRequest {
                    circuit_class: class.clone(),
                })
                .await?
                .into_inner();
            std::fs::write(&out, &data.verifying_key)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "verifying key of {class} written to {} (sha256 {})",
                out.display(),
                data.info
                    .map(|i| i.verifying_key_sha256)
                    .unwrap_or_default()
            );
            Ok(0)
        }
    }
}
