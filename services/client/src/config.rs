//! The client config: where the services are and which certificates this client presents
//! (what `zkmesh dev` writes and the client commands read).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Where the services are and which certificates this client presents.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub registry: String,
    pub scheduler: String,
    pub ledger: String,
    pub verifier: String,
    /// The mesh CA certificate.
    pub ca: PathBuf,
    /// The user certificate (task submission).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The admin certificate, for `node`, `ledger mint` and `ledger audit`.
    pub admin_cert: Option<PathBuf>,
    pub admin_key: Option<PathBuf>,
    /// The ledger's Ed25519 public key (hex), pinned for `ledger audit`.
    pub ledger_public_key: Option<String>,
    /// The verifier's Ed25519 settlement key (hex), pinned for `ledger audit`: every payout in
    /// the journal must follow a settlement it signed.
    #[serde(default)]
    pub verifier_public_key: Option<String>,
}

impl ClientConfig {
    pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the client config {}", path.display()))?;
        let mut config: ClientConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // Relative paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.ca, &mut config.cert, &mut config.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [&mut config.admin_cert, &mut config.admin_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self)?;
        zkmesh_kit::identity::write_file(path, text.as_bytes(), false)?;
        Ok(())
    }
}
