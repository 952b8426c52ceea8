//! The state one worker's tasks share.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use tokio::sync::Semaphore;
use zkmesh_runtime::Sandbox;

use crate::config::WorkerConfig;
use crate::metrics::WorkerMetrics;

/// State shared by one worker's tasks.
pub(crate) struct Shared {
    pub(crate) node_id: String,
    pub(crate) receipt_key: SigningKey,
    pub(crate) sandbox: Sandbox,
    pub(crate) modules: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// Attempts in flight here, with the flag that stops each.
    pub(crate) running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Set when the registry says this node is revoked.
    pub(crate) revoked: AtomicBool,
    pub(crate) slots: Arc<Semaphore>,
    /// Guest memory, in MiB, that running tasks may still take (`memory_budget_mib`).
    pub(crate) memory: Arc<Semaphore>,
    pub(crate) memory_budget_mib: u32,
    pub(crate) metrics: WorkerMetrics,
    pub(crate) config: WorkerConfig,
    /// Proving keys in memory, by hash.
    pub(crate) keys: tokio::sync::Mutex<HashMap<String, Arc<zkmesh_prover::groth::Pk>>>,
}
