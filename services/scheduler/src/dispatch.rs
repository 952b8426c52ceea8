//! The scheduler's engine: connected workers, placement, leases, verdicts and settlement.
//!
//! Every change to a task's state goes through [`Core`] while holding `transitions`, so the
//! steps of a task (lease, report, verdict, settlement, expiry, cancellation) never interleave.
//!
//! This file holds [`Core`] and its events; the rest is one concept per file in `dispatch/`:
//! `workers` (connected workers and their slots), `placement` (leasing queued tasks),
//! `reports` (what nodes send on the Work stream), `settlement` (verdicts, the ledger, ending
//! and cancelling tasks) and `sweeps` (lapsed leases, requeueing, the background loops).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, Notify, broadcast, mpsc};
use tonic::Status;
use zkmesh_kit::CancellationToken;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::telemetry::Metrics;
use zkmesh_proto::*;

use crate::SchedulerConfig;
use crate::peers::{Ledger, Peers, Registry, Verifier};
use crate::store::{Change, Store};

pub(crate) use transition::{Count, Transition};

mod placement;
mod reports;
mod settlement;
mod spot_checks;
mod sweeps;
#[cfg(test)]
mod tests;
mod transition;
mod workers;

pub use sweeps::spawn_background;

pub type Outbound = mpsc::Sender<Result<WorkResponse, Status>>;

struct WorkerConn {
    conn_id: u64,
    operator: String,
    slots: u32,
    running: BTreeSet<String>,
    tx: Outbound,
    /// The node's record, kept current as verdicts add to it (placement prefers clean ones).
    record: NodeRecord,
}

struct SchedMetrics {
    submitted: Counter,
    settled: Counter,
    failed: Counter,
    expired: Counter,
    rejected: Counter,
    workers: Gauge,
}

pub struct Core {
    pub config: SchedulerConfig,
    pub store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    pub ledger: Arc<dyn Ledger>,
    pub verifier: Arc<dyn Verifier>,
    revoked: RevocationList,
    pub events: broadcast::Sender<TaskEvent>,
    workers: Mutex<HashMap<String, WorkerConn>>,
    nodes: RwLock<HashMap<String, Node>>,
    transitions: Mutex<()>,
    wake: Notify,
    wake_sweep: Notify,
    next_conn: std::sync::atomic::AtomicU64,
    pub shutdown: CancellationToken,
    metrics: SchedMetrics,
}

pub(crate) type Result<T, E = Status> = std::result::Result<T, E>;

/// A database error, as the caller sees it (logged once, in [`zkmesh_kit::error::status`]).
pub fn db_error(e: sqlx::Error) -> Status {
    zkmesh_kit::error::status("scheduler", &e)
}

/// An internal failure that is not the database's (logged, hidden from the caller).
pub fn internal(message: impl Into<String>) -> Status {
    zkmesh_kit::error::status("scheduler", &zkmesh_kit::error::Failure::internal(message))
}

impl Core {
    pub fn new(
        config: SchedulerConfig,
        store: Arc<dyn Store>,
        peers: Peers,
        revoked: RevocationList,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Core {
        Core {
            config,
            store,
            registry: peers.registry,
            ledger: peers.ledger,
            verifier: peers.verifier,
            revoked,
            events: broadcast::channel(4096).0,
            workers: Mutex::new(HashMap::new()),
            nodes: RwLock::new(HashMap::new()),
            transitions: Mutex::new(()),
            wake: Notify::new(),
            wake_sweep: Notify::new(),
            next_conn: Default::default(),
            shutdown,
            metrics: SchedMetrics {
                submitted: metrics.counter("tasks_submitted", "Tasks accepted for scheduling"),
                settled: metrics.counter("tasks_settled", "Tasks verified and paid for"),
                failed: metrics.counter("tasks_failed", "Tasks that ran out of attempts"),
                expired: metrics.counter("leases_expired", "Leases that expired"),
                rejected: metrics.counter("results_rejected", "Reports the verifier rejected"),
                workers: metrics.gauge("workers_connected", "Workers with an open Work stream"),
            },
        }
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn submitted(&self) {
        self.metrics.submitted.inc();
    }

    /// Records an event, moves the task to `state` and tells the watchers.
    pub async fn emit(
        &self,
        task_id: &str,
        state: TaskState,
        message: &str,
        node_id: &str,
    ) -> Result<()> {
        self.emit_log(task_id, state, message, node_id, "").await
    }

    /// Like [`Core::emit`], for an event that carries guest log output.
    pub async fn emit_log(
        &self,
        task_id: &str,
        state: TaskState,
        message: &str,
        node_id: &str,
        log: &str,
    ) -> Result<()> {
        self.finish(Transition::of(Change::Event {
            task_id: task_id.to_string(),
            state,
            message: message.to_string(),
            node_id: node_id.to_string(),
            log: log.to_string(),
        }))
        .await
    }

    /// Node facts from the registry, with a direct look-up for nodes not yet in the cache.
    /// The registry's current view of a node (never the cache: a node that was just approved
    /// must not be refused because of a stale copy), remembered for placement.
    pub async fn node(&self, node_id: &str) -> Result<Node> {
        let node = self.registry.get_node(node_id).await?;
        self.nodes
            .write()
            .unwrap()
            .insert(node_id.to_string(), node.clone());
        Ok(node)
    }
}
