//! The verifier's configuration: the shared `[server]` table, the registry, circuit keys.

use serde::Deserialize;
use zkmesh_kit::config::ServerConfig;

/// The verifier's configuration (`zkmesh verifier serve --config FILE`, `ZKMESH_VERIFIER_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    /// `[server]`: listen address, metrics, database, drain time and TLS.
    pub server: ServerConfig,
    /// The registry: node receipt keys and the revocation list.
    pub registry_endpoint: String,
    /// The verifier's Ed25519 settlement key (PKCS#8 PEM), created on first start; the ledger
    /// pays only on settlements it signs (the ledger's `verifier_keys` holds its public half).
    pub key_file: std::path::PathBuf,
    /// Where circuit keys are kept (content-addressed; reused across restarts).
    #[serde(default = "default_keys_dir")]
    pub keys_dir: std::path::PathBuf,
    /// Classes to set up at start if their keys are not there yet (in the background).
    #[serde(default = "default_setup_classes")]
    pub setup_classes: Vec<String>,
}

/// Where the verifier listens when `[server] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7004";

pub(crate) fn default_keys_dir() -> std::path::PathBuf {
    "zkmesh-verifier-keys".into()
}

pub(crate) fn default_setup_classes() -> Vec<String> {
    vec!["c9".into(), "c10".into()]
}
