//! The node agent: makes its own keys, enrolls with a join token, waits for approval, then
//! pulls tasks from the scheduler over the `Work` stream, runs them in the wasmtime sandbox,
//! signs a receipt for every result and reports it.
//!
//! Its state lives in one data directory: `node.json` (node id and enrollment secret),
//! `tls.key`/`tls.crt` (its mesh certificate) and `receipt.key` (its Ed25519 receipt key).

mod config;
mod enrollment;
mod execution;
mod metrics;
mod modules;
mod proving;
mod session;
mod shared;

pub use config::WorkerConfig;
pub use execution::exit_kind;
pub use session::{WorkerHandle, start};

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Setup(String),
    #[error("enrollment: {0}")]
    Enroll(String),
    #[error("node {0} was denied by an admin")]
    Denied(String),
    #[error("node {0} is revoked")]
    Revoked(String),
    #[error("gave up waiting for approval of node {0}")]
    ApprovalTimeout(String),
    /// The configuration asks for something the worker may not do.
    #[error(transparent)]
    Config(#[from] zkmesh_kit::config::ConfigError),
}

/// A setup error from anything that displays.
pub(crate) fn setup_err(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Setup(e.to_string())
}
