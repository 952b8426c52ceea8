//! `zkmesh verify`: checks a result bundle offline, against a verifying key.

use std::path::{Path, PathBuf};

use serde_json::json;
use zkmesh_proto::*;

use crate::commands::client;
use crate::{EXIT_CONFIG, EXIT_TASK, EXIT_USAGE, exit};

/// `zkmesh verify BUNDLE`: checks a result bundle offline; exit 0 if it verifies, 1 if not.
pub(crate) async fn verify(
    mesh: &Option<PathBuf>,
    path: &Path,
    module: Option<&Path>,
    vk: Option<&Path>,
    json: bool,
) -> anyhow::Result<i32> {
    let text = std::fs::read(path)
        .map_err(|e| exit(EXIT_USAGE, format!("cannot read {}: {e}", path.display())))?;
    let invalid = |why: String| -> anyhow::Result<i32> {
        if json {
            println!("{}", json!({"valid": false, "reason": why}));
        } else {
            println!("INVALID: {}", crate::render::safe(&why));
        }
        Ok(EXIT_TASK)
    };
    let bundle: zkmesh_client::bundle::Bundle = match serde_json::from_slice(&text) {
        Ok(b) => b,
        Err(e) => return invalid(format!("not a result bundle: {e}")),
    };
    let module = match module {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| exit(EXIT_USAGE, format!("cannot read {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let vk = match vk {
        Some(p) => std::fs::read(p)
            .map_err(|e| exit(EXIT_USAGE, format!("cannot read {}: {e}", p.display())))?,
        None => {
            let api = client(mesh).map_err(|e| {
                exit(
                    EXIT_CONFIG,
                    format!("no --vk given and no mesh to ask for it ({e:#}); save one with `zkmesh circuits vk CLASS --out FILE`"),
                )
            })?;
            api.verifier()?
                .get_verifying_key(GetVerifyingKeyRequest {
                    circuit_class: bundle.proof.circuit_class.clone(),
                })
                .await?
                .into_inner()
                .verifying_key
        }
    };
    match zkmesh_client::bundle::check(&bundle, &vk, module.as_deref()) {
        Ok(c) => {
            if json {
                println!(
                    "{}",
                    json!({"valid": true, "task_id": bundle.task_id, "circuit_class": c.class,
                           "memory_limit_mib": bundle.memory_limit_mib, "ending": c.ending,
                           "steps": c.steps, "segments": c.segments, "output_bytes": c.output_len, "verify_us": c.verify_us,
                           "module_hash": bundle.module_hash, "input_hash": bundle.input_hash,
                           "output_hash": bundle.output_hash})
                );
            } else {
                println!(
                    "VALID: task {} ran module {} on input {} under a memory limit of {} MiB for {} zkVM steps, ended {}, and wrote {} bytes (sha256 {}); Groth16 proof checked in {} µs (class {}{})",
                    crate::render::safe(&bundle.task_id),
                    crate::render::safe(&bundle.module_hash),
                    crate::render::safe(&bundle.input_hash),
                    bundle.memory_limit_mib,
                    c.steps,
                    c.ending,
                    c.output_len,
                    crate::render::safe(&bundle.output_hash),
                    c.verify_us,
                    c.class,
                    if c.segments > 1 {
                        format!(", {} chained segments", c.segments)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(0)
        }
        Err(why) => invalid(why),
    }
}
