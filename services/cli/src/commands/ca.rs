//! `zkmesh ca`: the mesh CA and the certificates it issues.

use std::time::Duration;

use zkmesh_kit::ca::MeshCa;
use zkmesh_kit::identity::{Identity, Role};

use crate::args::CaCommand;
use crate::{EXIT_USAGE, exit};

/// `zkmesh ca init`, `zkmesh ca issue` and `zkmesh ca revoke`.
pub(crate) async fn ca(mesh: &Option<std::path::PathBuf>, cmd: CaCommand) -> anyhow::Result<i32> {
    match cmd {
        CaCommand::Init { dir, mesh_name } => {
            let ca = MeshCa::generate(&mesh_name).map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            ca.save(&dir).map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            println!("created the CA of mesh {mesh_name:?} in {}", dir.display());
        }
        CaCommand::Issue {
            dir,
            role,
            name,
            host,
            out,
            days,
        } => {
            let ca = MeshCa::load(&dir)?;
            let role = Role::parse(&role).ok_or_else(|| {
                exit(
                    EXIT_USAGE,
                    format!("unknown role {role:?}: use admin, user, service or node"),
                )
            })?;
            let id = Identity::new(&ca.mesh, role, &name);
            let issued = ca.issue(&id, &host, Duration::from_secs(days * 86400))?;
            issued.write(&out, &name)?;
            let serial = zkmesh_kit::identity::serial_of_pem(&issued.cert_pem).unwrap_or_default();
            println!(
                "issued {} -> {}/{name}.crt (serial {serial})",
                id.uri(),
                out.display()
            );
        }
        CaCommand::Issuer { dir, out, days } => {
            if out.join("ca.key").exists() {
                return Err(exit(
                    EXIT_USAGE,
                    format!(
                        "{} holds a root key: give the node issuer a directory of its own (the registry's ca_dir), so the root key stays off the registry's host",
                        out.display()
                    ),
                ));
            }
            let ca = MeshCa::load(&dir)?;
            let issuer = ca
                .node_issuer(Duration::from_secs(days * 86400))
                .map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            issuer
                .save_node_issuer(&out)
                .map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            let serial = zkmesh_kit::identity::serial_of_pem(&issuer.cert_pem).unwrap_or_default();
            println!(
                "made the node issuer of mesh {:?} in {} (serial {serial}); point the registry's ca_dir at it and keep {} offline",
                ca.mesh,
                out.display(),
                dir.join("ca.key").display()
            );
        }
        CaCommand::Revoke {
            certificate,
            reason,
        } => {
            // A serial is hex; anything else names a certificate file, which must be there.
            let is_serial = !certificate.is_empty()
                && certificate.bytes().all(|b| b.is_ascii_hexdigit())
                && !std::path::Path::new(&certificate).exists();
            let serial = if is_serial {
                certificate.to_ascii_lowercase()
            } else {
                let pem = std::fs::read_to_string(&certificate)
                    .map_err(|e| exit(EXIT_USAGE, format!("{certificate}: {e}")))?;
                let serial = zkmesh_kit::identity::serial_of_pem(&pem).ok_or_else(|| {
                    exit(
                        EXIT_USAGE,
                        format!("{certificate} is not a PEM certificate"),
                    )
                })?;
                let who = zkmesh_kit::identity::identity_of_pem(&pem)
                    .map(|id| id.uri())
                    .unwrap_or_else(|| "no zkmesh identity".into());
                println!("{certificate}: {who}, serial {serial}");
                serial
            };
            let api = crate::commands::client(mesh)?;
            let answer = api
                .admin_registry()?
                .revoke_certificate(zkmesh_proto::RevokeCertificateRequest {
                    serial: serial.clone(),
                    reason,
                })
                .await?
                .into_inner();
            println!(
                "revoked certificate {serial} (at {} ms since the epoch); every service refuses it within its refresh",
                answer.revoked_at_ms
            );
        }
    }
    Ok(0)
}
