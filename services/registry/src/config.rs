//! The registry's configuration: the shared `[server]` table, the mesh CA, heartbeats and
//! certificate lifetimes.

use std::path::PathBuf;

use serde::Deserialize;
use zkmesh_kit::config::ServerConfig;

/// The registry's configuration (`zkmesh registry serve --config FILE`, `ZKMESH_REGISTRY_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `[server]`: listen address, metrics, database, drain time and TLS.
    pub server: ServerConfig,
    /// Directory holding the mesh CA's `ca.crt` and `ca.key`: the registry signs node
    /// certificates.
    pub ca_dir: PathBuf,
    /// A node that has not sent a heartbeat for this long is offline.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_secs: u64,
    #[serde(default = "default_cert_lifetime")]
    pub node_certificate_lifetime_secs: u64,
    /// The most tasks a node may run at once when its approval (or its join token) names no
    /// number. A worker may ask for fewer, never more.
    #[serde(default = "default_node_slots")]
    pub default_node_slots: u32,
}

/// The most slots an admin may grant one node.
pub const MAX_NODE_SLOTS: u32 = 256;

/// Where the registry listens when `[server] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7001";

pub(crate) fn default_heartbeat_timeout() -> u64 {
    15
}
pub(crate) fn default_cert_lifetime() -> u64 {
    24 * 3600
}
pub(crate) fn default_node_slots() -> u32 {
    2
}
