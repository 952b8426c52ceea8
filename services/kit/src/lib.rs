//! Shared plumbing of every zkmesh service: mesh identity and mutual TLS, the per-RPC role
//! table, typed configuration, SQL pools and migrations, telemetry, and graceful serving.
//!
//! # Core concepts
//! - An [`identity::Identity`] comes only from the verified client certificate (a URI SAN
//!   `spiffe://<mesh>/<role>/<name>`), never from a field in a request.
//! - Each service declares one [`acl::Acl`]: which roles may call each of its RPCs. The
//!   [`auth::AuthLayer`] refuses everything else before a handler runs.
//! - [`server::serve`] runs a tonic service with health, reflection, metrics, the role check
//!   and graceful shutdown, the same way for every service.
//!
//! Modules depend in one direction: `identity` <- `tls` <- `auth` <- `server`, with `acl`,
//! `revocation` and `rpc_metrics` beside `auth`.

pub mod acl;
pub mod admission;
pub mod auth;
pub mod ca;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod identity;
pub mod journal;
pub mod lists;
pub mod message_limits;
pub mod paging;
pub mod receipt;
pub mod revocation;
pub mod rpc_metrics;
pub mod server;
pub mod settlement;
pub mod signing_key;
pub mod telemetry;
pub mod tls;

pub use tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random identifier: `prefix` followed by 16 lowercase hex digits.
pub fn random_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
