//! The ledger's configuration: the shared `[server]` table, the signing key, the registry and
//! the verifier keys it pays on.

use std::path::PathBuf;

use serde::Deserialize;
use zkmesh_kit::config::ServerConfig;

/// The ledger's configuration (`zkmesh ledger serve --config FILE`, `ZKMESH_LEDGER_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `[server]`: listen address, metrics, database, drain time and TLS.
    pub server: ServerConfig,
    /// The ledger's Ed25519 signing key (PKCS#8 PEM); created on first start.
    pub key_file: PathBuf,
    /// The registry, for the revocation list.
    pub registry_endpoint: String,
    /// The verifier's settlement keys (Ed25519 public keys, hex; the verifier logs its key at
    /// start and serves it with GetVerifierKey): a capture pays only what a settlement signed
    /// by one of them says. Two during a key change.
    #[serde(default)]
    pub verifier_keys: Vec<String>,
}

/// Where the ledger listens when `[server] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7003";
