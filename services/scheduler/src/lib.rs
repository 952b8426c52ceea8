//! The scheduler: modules and tasks. It stores uploaded modules by SHA-256 (refusing any that
//! wasmtime cannot compile or that import outside the two guest ABIs), holds credits for each
//! task at the ledger, leases tasks to workers over the bidirectional `Work` stream, takes a
//! task back when a lease expires, asks the verifier for a verdict on every report, and has the
//! ledger pay for verified results.
//!
//! # Core concepts
//! - A *task* is what a submitter asked for; an *attempt* is one lease of it to one node.
//!   `replicate:k` runs k attempts on nodes of k different operators.
//! - Every state change of a task is an *event*, stored in order and streamed by `WatchTask`.
//! - Leases are renewed by the worker's heartbeats on its `Work` stream. A stream that breaks,
//!   or a lease that runs out, sends the task back to the queue (up to `max_attempts`).

mod api;
mod dispatch;
pub mod peers;
mod store;

use std::sync::Arc;

use serde::Deserialize;
use zkmesh_kit::acl::{Acl, Allow};
use zkmesh_kit::config::ServerConfig;
use zkmesh_kit::identity::Role;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::server::{ServeSpec, Serving, serve};
use zkmesh_kit::telemetry::Metrics;
use zkmesh_kit::tls::TlsPem;
use zkmesh_kit::{CancellationToken, db};
use zkmesh_proto::scheduler_service_server::SchedulerServiceServer;

pub use api::SchedulerService;

/// The scheduler's configuration (`zkmesh scheduler serve --config FILE`, `ZKMESH_SCHEDULER_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `[server]`: listen address, metrics, database, drain time and TLS.
    pub server: ServerConfig,
    pub registry_endpoint: String,
    pub ledger_endpoint: String,
    pub verifier_endpoint: String,
    #[serde(default = "defaults::fuel")]
    pub default_fuel: u64,
    #[serde(default = "defaults::max_fuel")]
    pub max_fuel: u64,
    #[serde(default = "defaults::memory_mib")]
    pub default_memory_mib: u32,
    #[serde(default = "defaults::max_memory_mib")]
    pub max_memory_mib: u32,
    #[serde(default = "defaults::timeout_secs")]
    pub default_timeout_secs: u32,
    #[serde(default = "defaults::max_timeout_secs")]
    pub max_timeout_secs: u32,
    /// How long a lease lasts without a heartbeat from its worker.
    #[serde(default = "defaults::lease_secs")]
    pub lease_secs: u32,
    /// However often its node heartbeats, a lease lives at most the task's timeout plus this
    /// (compiling, waiting for a slot or for memory on the node, reporting).
    #[serde(default = "defaults::lease_slack_secs")]
    pub lease_slack_secs: u32,
    /// And, under the proof policy, plus this for tracing and proving (the longest proof this
    /// mesh expects, over every segment).
    #[serde(default = "defaults::proving_budget_secs")]
    pub proving_budget_secs: u32,
    /// Leases a task may use (per replica) before it fails.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Price of fuel, in micro-credits per million units.
    #[serde(default = "defaults::price")]
    pub micro_credits_per_million_fuel: u64,
    #[serde(default = "defaults::max_module_bytes")]
    pub max_module_bytes: usize,
    /// Upload refuses a module that takes longer than this to compile.
    #[serde(default = "defaults::compile_timeout_secs")]
    pub compile_timeout_secs: u64,
    #[serde(default = "defaults::max_input_bytes")]
    pub max_input_bytes: usize,
    /// Per user: tasks submitted and not yet ended (settled, failed or cancelled).
    #[serde(default = "defaults::max_tasks_in_flight_per_user")]
    pub max_tasks_in_flight_per_user: u64,
    /// Per user: bytes of input of those tasks together.
    #[serde(default = "defaults::max_queued_input_bytes_per_user")]
    pub max_queued_input_bytes_per_user: u64,
    /// Per user: bytes of the modules they uploaded.
    #[serde(default = "defaults::max_module_bytes_per_user")]
    pub max_module_bytes_per_user: u64,
    /// The share of receipt-policy results (0 to 1) re-run on a node of another operator
    /// before they are accepted; a check that disagrees is decided by a third operator.
    #[serde(default = "defaults::spot_check_rate")]
    pub spot_check_rate: f64,
}

impl SchedulerConfig {
    /// Refuses settings that cannot work, saying which.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.spot_check_rate) {
            anyhow::bail!(
                "spot_check_rate must be between 0 and 1 (a share of receipt-policy results), got {}",
                self.spot_check_rate
            );
        }
        Ok(())
    }
}

/// Where the scheduler listens when `[server] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7002";

/// A task's memory limit when its submitter names none (`default_memory_mib`'s default).
pub const DEFAULT_MEMORY_MIB: u32 = 256;

mod defaults {
    pub fn fuel() -> u64 {
        1_000_000_000
    }
    pub fn max_fuel() -> u64 {
        1_000_000_000_000
    }
    pub fn memory_mib() -> u32 {
        super::DEFAULT_MEMORY_MIB
    }
    pub fn max_memory_mib() -> u32 {
        4096
    }
    pub fn timeout_secs() -> u32 {
        60
    }
    pub fn max_timeout_secs() -> u32 {
        3600
    }
    pub fn lease_secs() -> u32 {
        10
    }
    pub fn max_tasks_in_flight_per_user() -> u64 {
        1_000
    }
    pub fn max_queued_input_bytes_per_user() -> u64 {
        1 << 30
    }
    pub fn max_module_bytes_per_user() -> u64 {
        1 << 30
    }
    pub fn spot_check_rate() -> f64 {
        0.05
    }
    pub fn lease_slack_secs() -> u32 {
        60
    }
    pub fn proving_budget_secs() -> u32 {
        3600
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn price() -> u64 {
        1000
    }
    pub fn max_module_bytes() -> usize {
        64 << 20
    }
    pub fn compile_timeout_secs() -> u64 {
        20
    }
    pub fn max_input_bytes() -> usize {
        16 << 20
    }
}

/// Who may call each scheduler RPC.
pub static ACL: Acl = Acl {
    service: "zkmesh.v1.SchedulerService",
    methods: &[
        (
            "UploadModule",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        (
            "GetModule",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        (
            "SubmitTask",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        (
            "GetTask",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        (
            "WatchTask",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        (
            "GetResult",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        (
            "CancelTask",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        (
            "ListTasks",
            &[Allow::Role(Role::User), Allow::Role(Role::Admin)],
        ),
        ("Work", &[Allow::Role(Role::Node)]),
        ("ListWorkers", &[Allow::Role(Role::Admin)]),
        ("ListNodeRecords", &[Allow::Role(Role::Admin)]),
        (
            "FetchModule",
            &[
                Allow::Role(Role::Node),
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
            ],
        ),
    ],
};

/// Starts the scheduler; it runs until `shutdown` is cancelled.
pub async fn start(
    config: SchedulerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Serving> {
    config.check()?;
    let tls = TlsPem::load(&config.server.tls)?;
    let pool = db::connect(&config.server.database_url).await?;
    db::migrate(&pool, "scheduler", &store::MIGRATOR).await?;
    let client_tls = (&tls).into();
    let registry = zkmesh_kit::client::channel(&config.registry_endpoint, &client_tls, "registry")?;
    let ledger = zkmesh_kit::client::channel(&config.ledger_endpoint, &client_tls, "ledger")?;
    let verifier = zkmesh_kit::client::channel(&config.verifier_endpoint, &client_tls, "verifier")?;
    let metrics = Metrics::new("scheduler");
    let revoked = RevocationList::default();
    // Revoked nodes and certificates, kept current (the sweep also cuts off revoked nodes).
    zkmesh_kit::revocation::follow_revocations(
        registry.clone(),
        revoked.clone(),
        std::time::Duration::from_secs(1),
        shutdown.clone(),
    );
    // Upload only compiles and inspects, but with the workers' instance pool: the pool's limits
    // (one memory, a vmctx of at most 4 MiB, tables of at most 2^18 elements) are checked at
    // compile time, and a module no worker can instantiate must be refused here. Two compiler
    // threads; an upload waits at most the compile timeout for one.
    let sandbox = zkmesh_runtime::Sandbox::new(zkmesh_runtime::SandboxConfig {
        max_module_bytes: config.max_module_bytes,
        compile_timeout: std::time::Duration::from_secs(config.compile_timeout_secs.max(1)),
        pooling: true,
        slots: 2,
        ..Default::default()
    })?;
    let core = dispatch::Core::new(
        config.clone(),
        Arc::new(store::SqliteStore::new(pool)),
        peers::Peers::grpc(registry, ledger, verifier),
        revoked.clone(),
        &metrics,
        shutdown.clone(),
    );
    let core = Arc::new(core);
    dispatch::spawn_background(core.clone());
    let service = SchedulerService::new(core, Arc::new(sandbox));
    Ok(serve(
        SchedulerServiceServer::new(service)
            // The largest of the per-method caps below (a report's output, a task's input).
            .max_decoding_message_size(config.max_input_bytes.max(MAX_REPORT_OUTPUT) + (1 << 20))
            .max_encoding_message_size(
                config.max_input_bytes.max(config.max_module_bytes) + (1 << 20),
            ),
        ServeSpec {
            name: "scheduler",
            acl: &ACL,
            tls,
            listen: config.server.listen_or(DEFAULT_LISTEN),
            metrics_listen: config.server.metrics_listen.clone(),
            metrics,
            revoked,
            shutdown,
            grace: config.server.grace(),
            max_revocation_age: config.server.max_revocation_age(),
            limits: config.server.limits.clone(),
            message_caps: vec![
                ("UploadModule", UPLOAD_CHUNK + (64 << 10)),
                ("SubmitTask", config.max_input_bytes + (64 << 10)),
                ("Work", MAX_REPORT_OUTPUT + (1 << 20)),
            ],
        },
    )
    .await?)
}

/// The largest output a worker may report: every worker caps a guest's output at 16 MiB.
pub const MAX_REPORT_OUTPUT: usize = 16 << 20;

/// The most bytes of a module one UploadModule message carries.
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// Micro-credits for `fuel` units at `price` micro-credits per million (rounded up).
pub use zkmesh_kit::settlement::cost;

/// Whether the zkVM can prove runs of a module (policy `proof`), and if not, why: the
/// instruction or feature that keeps it out.
pub fn provability(wasm: &[u8]) -> (bool, String) {
    match zkmesh_prover::lower::lower(wasm) {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    }
}
