//! The worker's configuration ([`WorkerConfig`]) and its defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The worker's configuration (`zkmesh worker --config FILE`, `ZKMESH_WORKER_*`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Keys, certificate and node id live here.
    pub data_dir: PathBuf,
    pub registry_endpoint: String,
    pub scheduler_endpoint: String,
    /// The mesh CA certificate, to verify the services.
    pub ca_cert: PathBuf,
    /// Needed only for the first start, to enroll.
    pub join_token: Option<String>,
    #[serde(default = "defaults::name")]
    pub name: String,
    /// Refused: the operator is the admin's word, named in the join token
    /// (`zkmesh node token --operator NAME`). Kept only to say so to configs that still set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Tasks to run at once: at most what the registry granted the node (`zkmesh node approve
    /// ID --slots N`, or the token's); asking for more gets the grant.
    #[serde(default = "defaults::slots")]
    pub slots: u32,
    #[serde(default = "defaults::heartbeat")]
    pub heartbeat_secs: u64,
    /// Give up waiting for an admin's approval after this long (0: wait forever).
    #[serde(default)]
    pub approval_timeout_secs: u64,
    /// Guest memory the node's running tasks may hold together, in MiB: a task waits for its
    /// memory limit to be free before it starts (0: three quarters of the machine's RAM). The
    /// output cap is not configurable: it is the same 16 MiB on every node, so that replicas
    /// agree on what is too large.
    #[serde(default)]
    pub memory_budget_mib: u64,
    /// The verifier, for proving keys (needed only to take tasks under the proof policy).
    #[serde(default)]
    pub verifier_endpoint: Option<String>,
    /// Where proving keys are cached, by hash (default: `data_dir/keys`; nodes may share one).
    #[serde(default)]
    pub keys_dir: Option<PathBuf>,
    /// Where compiled modules are cached across restarts (default: `data_dir/compiled`). Only
    /// artifacts this node compiled, authenticated by the cache's own key, are ever loaded.
    #[serde(default)]
    pub compile_cache_dir: Option<PathBuf>,
    /// The most MiB of compiled modules kept there; the least recently used are deleted first.
    #[serde(default = "defaults::compile_cache_max_mib")]
    pub compile_cache_max_mib: u64,
    /// A module that takes longer than this to compile here is abandoned, and the task left to
    /// another node.
    #[serde(default = "defaults::compile_timeout")]
    pub compile_timeout_secs: u64,
    /// Serve Prometheus metrics (`GET /metrics`) here, e.g. `127.0.0.1:9464`.
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub(crate) mod defaults {
    pub fn name() -> String {
        "worker".into()
    }
    pub fn slots() -> u32 {
        2
    }
    pub fn heartbeat() -> u64 {
        3
    }
    pub fn compile_cache_max_mib() -> u64 {
        1024
    }
    pub fn compile_timeout() -> u64 {
        20
    }
}

impl WorkerConfig {
    /// Refuses what a worker may no longer choose for itself.
    pub fn check(&self) -> Result<(), zkmesh_kit::config::ConfigError> {
        if let Some(operator) = &self.operator {
            return Err(zkmesh_kit::config::ConfigError::Invalid(format!(
                "operator = {operator:?}: a node no longer names its operator; the admin names it in the join token (`zkmesh node token --operator NAME`). Remove `operator` from the worker config (or ZKMESH_WORKER_OPERATOR)"
            )));
        }
        Ok(())
    }
}

/// The machine's RAM in MiB (`MemTotal` in /proc/meminfo), or 8 GiB where that is unknown.
pub(crate) fn machine_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib >> 10)
        })
        .unwrap_or(8 << 10)
}
