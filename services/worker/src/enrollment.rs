//! The node's identity: its keys, enrollment with a join token, waiting for approval, and
//! renewing its certificate.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use zkmesh_kit::ca::generate_csr;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_kit::identity::{read_file, write_file};
use zkmesh_kit::{CancellationToken, now_ms, sha256_hex};
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::*;

use crate::config::WorkerConfig;
use crate::{WorkerError, setup_err};

#[derive(Serialize, Deserialize)]
pub(crate) struct NodeFile {
    pub(crate) node_id: String,
    pub(crate) enrollment_secret: String,
}

pub(crate) struct Keys {
    pub(crate) node_id: String,
    pub(crate) receipt: SigningKey,
}

/// An enrollment sent but not yet answered: what a restart sends again.
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingEnrollment {
    csr: String,
    enrollment_secret: String,
}

pub(crate) fn load_or_create_receipt_key(path: &Path) -> Result<SigningKey, WorkerError> {
    if path.exists() {
        let pem = read_file(path).map_err(setup_err)?;
        return SigningKey::from_pkcs8_pem(&pem).map_err(setup_err);
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key.to_pkcs8_pem(Default::default()).map_err(setup_err)?;
    write_file(path, pem.as_bytes(), true).map_err(setup_err)?;
    Ok(key)
}

/// Enrolls if needed and waits until the registry hands out this node's certificate.
pub(crate) async fn ensure_identity(
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<Keys, WorkerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(setup_err)?;
    let ca = read_file(&config.ca_cert).map_err(setup_err)?;
    let receipt = load_or_create_receipt_key(&dir.join("receipt.key"))?;
    let node_path = dir.join("node.json");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    let anonymous = ClientTls {
        ca: ca.clone(),
        identity: None,
    };
    let mut registry = RegistryServiceClient::new(
        channel(&config.registry_endpoint, &anonymous, "registry").map_err(setup_err)?,
    );
    let node: NodeFile = if node_path.exists() {
        serde_json::from_str(&read_file(&node_path).map_err(setup_err)?).map_err(setup_err)?
    } else {
        let token = config.join_token.clone().ok_or_else(|| {
            WorkerError::Enroll("this node is not enrolled yet: give it a join token (join_token / ZKMESH_WORKER_JOIN_TOKEN)".into())
        })?;
        // The request is kept before it is sent (key, CSR and secret), so a start after an
        // answer was lost sends the same one again, and the registry answers the node it
        // enrolled instead of making a second one with a second use of the token.
        let pending_path = dir.join("enrolling.json");
        let pending: PendingEnrollment = if pending_path.exists() {
            serde_json::from_str(&read_file(&pending_path).map_err(setup_err)?)
                .map_err(setup_err)?
        } else {
            let (tls_key, csr) = generate_csr(&config.name).map_err(setup_err)?;
            write_file(&key_path, tls_key.as_bytes(), true).map_err(setup_err)?;
            let secret: [u8; 32] = rand::random();
            let pending = PendingEnrollment {
                csr,
                enrollment_secret: hex::encode(secret),
            };
            write_file(
                &pending_path,
                serde_json::to_string_pretty(&pending)
                    .map_err(setup_err)?
                    .as_bytes(),
                true,
            )
            .map_err(setup_err)?;
            pending
        };
        let secret = hex::decode(&pending.enrollment_secret).map_err(setup_err)?;
        let request = EnrollRequest {
            join_token: token,
            csr_pem: pending.csr.clone(),
            receipt_public_key: receipt.verifying_key().to_bytes().to_vec(),
            name: config.name.clone(),
            enrollment_secret_sha256: sha2_digest(&secret),
        };
        let mut tries = 0;
        let response = loop {
            tries += 1;
            match registry.enroll(request.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s)
                    if tries < 5
                        && matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Unknown
                        ) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(500 * tries)).await;
                }
                Err(s) => return Err(WorkerError::Enroll(s.message().to_string())),
            }
        };
        let node = NodeFile {
            node_id: response.node_id,
            enrollment_secret: pending.enrollment_secret,
        };
        write_file(
            &node_path,
            serde_json::to_string_pretty(&node)
                .map_err(setup_err)?
                .as_bytes(),
            true,
        )
        .map_err(setup_err)?;
        let _ = std::fs::remove_file(&pending_path);
        tracing::info!(node_id = %node.node_id, "enrolled");
        node
    };
    if !cert_path.exists() {
        let started = std::time::Instant::now();
        let mut said = false;
        loop {
            let r = registry
                .fetch_certificate(FetchCertificateRequest {
                    node_id: node.node_id.clone(),
                    enrollment_secret: hex::decode(&node.enrollment_secret).map_err(setup_err)?,
                })
                .await
                .map_err(|s| WorkerError::Enroll(s.message().to_string()))?
                .into_inner();
            match r.status() {
                NodeStatus::Denied => return Err(WorkerError::Denied(node.node_id)),
                NodeStatus::Revoked => return Err(WorkerError::Revoked(node.node_id)),
                _ if !r.certificate_pem.is_empty() => {
                    write_file(&cert_path, r.certificate_pem.as_bytes(), false)
                        .map_err(setup_err)?;
                    tracing::info!(node_id = %node.node_id, "approved; certificate received");
                    break;
                }
                _ => {}
            }
            if !said {
                tracing::info!(node_id = %node.node_id, "waiting for an admin to approve this node (zkmesh node approve {})", node.node_id);
                said = true;
            }
            if config.approval_timeout_secs > 0
                && started.elapsed().as_secs() >= config.approval_timeout_secs
            {
                return Err(WorkerError::ApprovalTimeout(node.node_id));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(WorkerError::Setup("shut down while waiting for approval".into())),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    Ok(Keys {
        node_id: node.node_id,
        receipt,
    })
}

pub(crate) fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    hex::decode(sha256_hex(bytes)).expect("hex of a digest")
}

/// This node's mesh certificate and key, from its data directory.
pub(crate) fn node_tls(config: &WorkerConfig) -> Result<ClientTls, WorkerError> {
    let dir = &config.data_dir;
    // A renewal interrupted between its two renames (key first, certificate last) is finished
    // here, so the key and certificate on disk always belong together.
    if dir.join("tls.crt.new").exists() {
        if dir.join("tls.key.new").exists() {
            std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).map_err(setup_err)?;
        }
        std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).map_err(setup_err)?;
    }
    Ok(ClientTls {
        ca: read_file(&config.ca_cert).map_err(setup_err)?,
        identity: Some((
            read_file(&dir.join("tls.crt")).map_err(setup_err)?,
            read_file(&dir.join("tls.key")).map_err(setup_err)?,
        )),
    })
}

/// The message with which services refuse a certificate the registry did not issue this node
/// (or no longer counts as its own): the node fetches the one it has on record.
pub(crate) const NOT_ISSUED: &str = "not one the registry issued to node";

/// The certificate the registry has on record for this node, written over the one on disk when
/// it differs and fits this node's key (an admin re-approved the node, which signs its last
/// request anew; or a restored registry). True when a new one was written.
pub(crate) async fn refetch_certificate(config: &WorkerConfig) -> Result<bool, String> {
    let dir = &config.data_dir;
    let node: NodeFile =
        serde_json::from_str(&read_file(&dir.join("node.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let anonymous = ClientTls {
        ca: read_file(&config.ca_cert).map_err(|e| e.to_string())?,
        identity: None,
    };
    let mut registry = RegistryServiceClient::new(
        channel(&config.registry_endpoint, &anonymous, "registry").map_err(|e| e.to_string())?,
    );
    let r = registry
        .fetch_certificate(FetchCertificateRequest {
            node_id: node.node_id.clone(),
            enrollment_secret: hex::decode(&node.enrollment_secret).map_err(|e| e.to_string())?,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let current = read_file(&dir.join("tls.crt")).unwrap_or_default();
    if r.certificate_pem.is_empty() || r.certificate_pem == current {
        return Ok(false);
    }
    // Only a certificate for this node's own key is of use (TLS proves the key).
    let key = read_file(&dir.join("tls.key")).map_err(|e| e.to_string())?;
    if !zkmesh_kit::ca::certifies_key(&r.certificate_pem, &key) {
        return Err(
            "the registry's certificate for this node is for another key: re-enroll it".into(),
        );
    }
    write_file(&dir.join("tls.crt"), r.certificate_pem.as_bytes(), false)
        .map_err(|e| e.to_string())?;
    tracing::info!(node_id = %node.node_id, "certificate fetched again from the registry");
    Ok(true)
}

/// Whether a certificate is into the last third of its lifetime.
pub(crate) fn due_for_renewal(cert_pem: &str) -> bool {
    let Some((not_before, not_after)) = zkmesh_kit::identity::validity_ms(cert_pem) else {
        return false;
    };
    let lifetime = not_after - not_before - zkmesh_kit::identity::BACKDATE_MS;
    not_after - now_ms() < lifetime / 3
}

/// A new key and certificate from the registry, written over the old ones.
pub(crate) async fn renew(
    config: &WorkerConfig,
    registry: &mut RegistryServiceClient<Channel>,
) -> Result<(), String> {
    let (key, csr) = generate_csr(&config.name).map_err(|e| e.to_string())?;
    let r = registry
        .renew_certificate(RenewCertificateRequest { csr_pem: csr })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let dir = &config.data_dir;
    // Write both beside the old ones, then swap them in.
    write_file(&dir.join("tls.key.new"), key.as_bytes(), true).map_err(|e| e.to_string())?;
    write_file(
        &dir.join("tls.crt.new"),
        r.certificate_pem.as_bytes(),
        false,
    )
    .map_err(|e| e.to_string())?;
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).map_err(|e| e.to_string())?;
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).map_err(|e| e.to_string())?;
    Ok(())
}
