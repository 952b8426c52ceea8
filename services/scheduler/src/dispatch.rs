//! The scheduler's engine: connected workers, placement, leases, verdicts and settlement.
//!
//! Every change to a task's state goes through [`Core`] while holding `transitions`, so the
//! steps of a task (lease, report, verdict, settlement, expiry, cancellation) never interleave.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, Notify, broadcast, mpsc};
use tonic::Status;
use tonic::transport::Channel;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::telemetry::Metrics;

/// Bytes of guest log a node may send for one task, over all its events, whatever it runs: a
/// worker's sandbox keeps 64 KiB of a task's stderr, which is at most three times that once
/// invalid UTF-8 has become U+FFFD.
const MAX_LOG_BYTES: u64 = 3 * (64 << 10);
/// Progress events a node may send for one task: an honest worker sends guest logs at most
/// every 200 ms, so this is 55 minutes of a guest that writes to stderr all the time.
const MAX_PROGRESS_EVENTS: u64 = 16_384;
/// How the event that reaches a node's log budget for a task begins.
const LOG_CUT_NOTE: &str = "guest log reached";
use zkmesh_kit::{CancellationToken, now_ms, random_id, sha256_hex};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::verifier_service_client::VerifierServiceClient;
use zkmesh_proto::*;

use crate::SchedulerConfig;
use crate::store::{AttemptRow, Store, TaskRow, attempt_state, is_terminal};

pub type Outbound = mpsc::Sender<Result<SchedulerMessage, Status>>;

struct WorkerConn {
    conn_id: u64,
    operator: String,
    slots: u32,
    running: BTreeSet<String>,
    tx: Outbound,
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
    pub store: Store,
    registry: RegistryServiceClient<Channel>,
    pub ledger: LedgerServiceClient<Channel>,
    pub verifier: VerifierServiceClient<Channel>,
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

type Result<T, E = Status> = std::result::Result<T, E>;

/// Deadline for calls to the other services, so a hung one cannot hold a task forever.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A call to another service, with [`RPC_TIMEOUT`].
pub async fn call<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(RPC_TIMEOUT, f).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::unavailable("a mesh service did not answer in time")),
    }
}

pub fn db_error(e: sqlx::Error) -> Status {
    tracing::error!(error = %e, "scheduler database error");
    Status::internal("internal scheduler error")
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: SchedulerConfig,
        store: Store,
        registry: Channel,
        ledger: Channel,
        verifier: Channel,
        revoked: RevocationList,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Core {
        Core {
            config,
            store,
            registry: RegistryServiceClient::new(registry),
            ledger: LedgerServiceClient::new(ledger),
            verifier: VerifierServiceClient::new(verifier),
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
        let event = self
            .store
            .event(task_id, state, message, node_id, log)
            .await
            .map_err(db_error)?;
        tracing::debug!(task_id, state = ?state, message, "task event");
        let _ = self.events.send(event);
        Ok(())
    }

    /// Node facts from the registry, with a direct look-up for nodes not yet in the cache.
    /// The registry's current view of a node (never the cache: a node that was just approved
    /// must not be refused because of a stale copy), remembered for placement.
    pub async fn node(&self, node_id: &str) -> Result<Node> {
        let node = call(self.registry.clone().get_node(NodeRef {
            node_id: node_id.to_string(),
        }))
        .await?;
        self.nodes
            .write()
            .unwrap()
            .insert(node_id.to_string(), node.clone());
        Ok(node)
    }

    /// Distinct operators with a connected worker.
    pub async fn connected_operators(&self) -> usize {
        let workers = self.workers.lock().await;
        workers
            .values()
            .map(|w| w.operator.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The workers with an open Work stream, by node id.
    pub async fn connected_workers(&self) -> Vec<ConnectedWorker> {
        self.workers
            .lock()
            .await
            .iter()
            .map(|(node_id, w)| ConnectedWorker {
                node_id: node_id.clone(),
                operator: w.operator.clone(),
                slots: w.slots,
                running: w.running.len() as u32,
            })
            .collect()
    }

    pub async fn register(&self, node_id: &str, operator: &str, slots: u32, tx: Outbound) -> u64 {
        let conn_id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut workers = self.workers.lock().await;
        workers.insert(
            node_id.to_string(),
            WorkerConn {
                conn_id,
                operator: operator.to_string(),
                slots: slots.clamp(1, 256),
                running: BTreeSet::new(),
                tx,
            },
        );
        self.metrics.workers.set(workers.len() as i64);
        drop(workers);
        tracing::info!(node_id, operator, slots, "worker connected");
        self.wake();
        conn_id
    }

    /// A worker's stream ended. Its leases expire at once unless the scheduler itself is
    /// shutting down (then the worker may come back to a restarted scheduler and report).
    pub async fn unregister(&self, node_id: &str, conn_id: u64, reason: &str) {
        {
            let mut workers = self.workers.lock().await;
            if workers.get(node_id).map(|w| w.conn_id) != Some(conn_id) {
                return;
            }
            workers.remove(node_id);
            self.metrics.workers.set(workers.len() as i64);
        }
        tracing::info!(node_id, reason, "worker disconnected");
        if self.shutdown.is_cancelled() {
            return;
        }
        match self.store.lapsed_attempts(Some(node_id)).await {
            Ok(attempts) => {
                for a in attempts {
                    let why = format!("lease on node {node_id} ended: {reason}");
                    if let Err(e) = self.expire(&a, &why).await {
                        tracing::warn!(error = %e.message(), "expiring attempt failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "listing a node's attempts failed"),
        }
    }

    async fn has_free_slot(&self) -> bool {
        let workers = self.workers.lock().await;
        workers.values().any(|w| (w.running.len() as u32) < w.slots)
    }

    async fn free_slot(&self, node_id: &str, attempt_id: &str) {
        if let Some(w) = self.workers.lock().await.get_mut(node_id) {
            w.running.remove(attempt_id);
        }
        self.wake();
    }

    /// Best effort, never waiting: a node that does not read its stream must not stall the
    /// scheduler (its leases run out instead).
    async fn send_to(&self, node_id: &str, message: scheduler_message::Kind) {
        let tx = self.workers.lock().await.get(node_id).map(|w| w.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send(Ok(SchedulerMessage {
                kind: Some(message),
            }));
        }
    }

    /// Leases queued tasks to workers with free slots.
    pub async fn dispatch_once(&self) -> Result<()> {
        if !self.has_free_slot().await {
            return Ok(());
        }
        let queued = self.store.queued(128).await.map_err(db_error)?;
        for task_id in queued {
            // The lock is taken per task, so reports and starts interleave with a long queue.
            let _t = self.transitions.lock().await;
            let Some(task) = self.store.task(&task_id).await.map_err(db_error)? else {
                continue;
            };
            if task.task.state() != TaskState::Queued {
                continue;
            }
            let mut workers = self.workers.lock().await;
            if !workers.values().any(|w| (w.running.len() as u32) < w.slots) {
                return Ok(());
            }
            let attempts = self
                .store
                .attempts(&task.task.task_id)
                .await
                .map_err(db_error)?;
            let active: Vec<&AttemptRow> = attempts
                .iter()
                .filter(|a| {
                    matches!(
                        a.state.as_str(),
                        attempt_state::LEASED | attempt_state::RUNNING | attempt_state::REPORTED
                    )
                })
                .collect();
            let replicas = replicas(&task);
            let mut busy_operators: BTreeSet<String> =
                active.iter().map(|a| a.operator.clone()).collect();
            let mut busy_nodes: BTreeSet<String> =
                active.iter().map(|a| a.node_id.clone()).collect();
            // A node whose result was rejected for this task never gets it again.
            busy_nodes.extend(
                attempts
                    .iter()
                    .filter(|a| a.state == attempt_state::REJECTED)
                    .map(|a| a.node_id.clone()),
            );
            let eligible_exists = workers.keys().any(|n| !busy_nodes.contains(n));
            if !eligible_exists && active.is_empty() && !workers.is_empty() {
                drop(workers);
                self.fail(
                    &task,
                    "no connected node is left that has not been rejected for this task",
                )
                .await?;
                continue;
            }
            // Nodes whose lease on this task lapsed are tried again only when no other will do.
            let lapsed: BTreeSet<String> = attempts
                .iter()
                .filter(|a| a.state == attempt_state::EXPIRED)
                .map(|a| a.node_id.clone())
                .collect();
            let mut leased = active.len();
            while leased < replicas {
                let nodes = self.nodes.read().unwrap().clone();
                let candidate = workers
                    .iter()
                    .filter(|(id, w)| {
                        (w.running.len() as u32) < w.slots
                            && !busy_nodes.contains(*id)
                            && (replicas == 1 || !busy_operators.contains(&w.operator))
                            && nodes
                                .get(*id)
                                .is_none_or(|n| n.status() == NodeStatus::Active)
                    })
                    .max_by_key(|(id, w)| {
                        (
                            !lapsed.contains(*id),
                            w.slots - w.running.len() as u32,
                            std::cmp::Reverse((*id).clone()),
                        )
                    })
                    .map(|(id, _)| id.clone());
                let Some(node_id) = candidate else { break };
                let attempt_id = random_id("a-");
                let lease_ms = self.config.lease_secs as i64 * 1000;
                let w = workers.get_mut(&node_id).expect("candidate is connected");
                self.store
                    .insert_attempt(
                        &attempt_id,
                        &task.task.task_id,
                        &node_id,
                        &w.operator,
                        now_ms() + lease_ms,
                    )
                    .await
                    .map_err(db_error)?;
                let assignment = Assignment {
                    attempt_id: attempt_id.clone(),
                    task_id: task.task.task_id.clone(),
                    module_hash: task.task.module_hash.clone(),
                    input: task.input.clone(),
                    fuel_limit: task.task.fuel_limit,
                    memory_limit_mib: task.task.memory_limit_mib,
                    timeout_secs: task.task.timeout_secs,
                    lease_secs: self.config.lease_secs,
                    policy: task.task.policy,
                };
                let message = SchedulerMessage {
                    kind: Some(scheduler_message::Kind::Assignment(assignment)),
                };
                if w.tx.try_send(Ok(message)).is_err() {
                    // The stream is gone or hopelessly behind: this lease never reached the node.
                    self.store
                        .set_attempt_state(&attempt_id, attempt_state::EXPIRED)
                        .await
                        .map_err(db_error)?;
                    busy_nodes.insert(node_id);
                    continue;
                }
                w.running.insert(attempt_id.clone());
                busy_operators.insert(w.operator.clone());
                busy_nodes.insert(node_id.clone());
                leased += 1;
                let (state, msg) = if leased >= replicas {
                    (TaskState::Assigned, format!("leased to node {node_id}"))
                } else {
                    (
                        TaskState::Queued,
                        format!("replica {leased} of {replicas} leased to node {node_id}"),
                    )
                };
                self.emit(&task.task.task_id, state, &msg, &node_id).await?;
            }
        }
        Ok(())
    }

    pub async fn on_started(&self, node_id: &str, attempt_id: &str) -> Result<()> {
        let _t = self.transitions.lock().await;
        let Some(a) = self.store.attempt(attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if a.node_id != node_id || a.state != attempt_state::LEASED {
            return Ok(());
        }
        self.store
            .set_attempt_state(attempt_id, attempt_state::RUNNING)
            .await
            .map_err(db_error)?;
        let Some(task) = self.store.task(&a.task_id).await.map_err(db_error)? else {
            return Ok(());
        };
        // A task stays QUEUED while any replica still needs a node (dispatch looks only at
        // QUEUED tasks); it runs once every replica is leased.
        if task.task.state() == TaskState::Assigned {
            self.emit(
                &a.task_id,
                TaskState::Running,
                &format!("running on node {node_id}"),
                node_id,
            )
            .await?;
        }
        Ok(())
    }

    /// A running attempt's progress, as an event of its task (state unchanged).
    pub async fn on_progress(
        &self,
        node_id: &str,
        attempt_id: &str,
        message: &str,
        log: &str,
    ) -> Result<()> {
        let _t = self.transitions.lock().await;
        let Some(a) = self.store.attempt(attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if a.node_id != node_id || a.state != attempt_state::RUNNING {
            return Ok(());
        }
        let Some(task) = self.store.task(&a.task_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if task.task.state() != TaskState::Running {
            return Ok(());
        }
        // Bounded per node and task, over all its events, whatever the node is running: a node
        // could otherwise fill the database one capped event at a time.
        let (events, log_used, cut) = self
            .store
            .progress_used(&a.task_id, node_id, LOG_CUT_NOTE)
            .await
            .map_err(db_error)?;
        if events >= MAX_PROGRESS_EVENTS {
            tracing::debug!(
                node_id,
                attempt_id,
                "progress past the event budget dropped"
            );
            return Ok(());
        }
        let mut message: String = message.chars().take(300).collect();
        let mut log = log;
        if !log.is_empty() {
            if cut {
                // Past the budget, and said so then.
                return Ok(());
            }
            let budget = MAX_LOG_BYTES.saturating_sub(log_used) as usize;
            if log.len() >= budget {
                // This event reaches the budget: keep what fits and say that the rest goes.
                let mut end = budget;
                while !log.is_char_boundary(end) {
                    end -= 1;
                }
                log = &log[..end];
                message = format!(
                    "{LOG_CUT_NOTE} {} KiB: the rest from this node is dropped",
                    MAX_LOG_BYTES >> 10
                );
            }
        }
        self.emit_log(&a.task_id, TaskState::Running, &message, node_id, log)
            .await?;
        Ok(())
    }

    /// A node gives an attempt back unrun: as a lapsed lease, at once, with the node's reason.
    pub async fn on_declined(&self, node_id: &str, attempt_id: &str, reason: &str) -> Result<()> {
        let Some(a) = self.store.attempt(attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if a.node_id != node_id {
            return Ok(());
        }
        let reason: String = reason.chars().take(600).collect();
        tracing::info!(node_id, attempt_id, %reason, "attempt declined");
        self.expire(&a, &format!("node {node_id} gave the task back: {reason}"))
            .await
    }

    pub async fn on_heartbeat(&self, node_id: &str, running: &[String]) -> Result<()> {
        let until = now_ms() + self.config.lease_secs as i64 * 1000;
        self.store
            .renew_leases(node_id, running, until)
            .await
            .map_err(db_error)
    }

    /// Records a report; once every replica has reported, asks for a verdict and settles.
    pub async fn on_report(&self, node_id: &str, report: TaskReport) -> Result<()> {
        let task_id = {
            let _t = self.transitions.lock().await;
            let Some(a) = self
                .store
                .attempt(&report.attempt_id)
                .await
                .map_err(db_error)?
            else {
                tracing::warn!(node_id, attempt_id = %report.attempt_id, "report for an unknown attempt");
                return Ok(());
            };
            if a.node_id != node_id {
                tracing::warn!(node_id, attempt_id = %a.attempt_id, "report for another node's attempt ignored");
                return Ok(());
            }
            self.free_slot(node_id, &a.attempt_id).await;
            if !matches!(
                a.state.as_str(),
                attempt_state::LEASED | attempt_state::RUNNING
            ) {
                tracing::info!(node_id, attempt_id = %a.attempt_id, state = %a.state, "late report ignored");
                return Ok(());
            }
            let Some(task) = self.store.task(&a.task_id).await.map_err(db_error)? else {
                return Ok(());
            };
            let receipt = report.receipt.clone().unwrap_or_default();
            self.store
                .record_report(&report, &receipt)
                .await
                .map_err(db_error)?;
            if is_terminal(task.task.state()) || task.task.state() == TaskState::Verified {
                return Ok(());
            }
            // What is paid for is what the node signed: the unsigned fields must agree with the
            // receipt, and nobody uses more fuel than the task allowed.
            if report.fuel_used != receipt.fuel_used
                || report.exit != receipt.exit
                || receipt.fuel_used > task.task.fuel_limit
            {
                self.store
                    .set_attempt_state(&a.attempt_id, attempt_state::REJECTED)
                    .await
                    .map_err(db_error)?;
                self.metrics.rejected.inc();
                let reason =
                    format!("node {node_id} reported fuel or exit that its receipt does not sign");
                return self.requeue(&task, TaskState::Rejected, &reason).await;
            }
            let attempts = self.store.attempts(&a.task_id).await.map_err(db_error)?;
            let reported = attempts
                .iter()
                .filter(|x| x.state == attempt_state::REPORTED)
                .count();
            let replicas = replicas(&task);
            if reported < replicas {
                let state = match task.task.state() {
                    TaskState::Queued => TaskState::Queued,
                    _ => TaskState::Running,
                };
                let msg = format!("{reported} of {replicas} replicas reported");
                return self.emit(&a.task_id, state, &msg, node_id).await;
            }
            self.emit(
                &a.task_id,
                TaskState::Reported,
                &format!("result reported by node {node_id}"),
                node_id,
            )
            .await?;
            a.task_id
        };
        self.verify_and_settle(&task_id).await
    }

    /// The task, if it is (still) in `state`. Call with `transitions` held.
    async fn task_in(&self, task_id: &str, state: TaskState) -> Result<Option<TaskRow>> {
        let task = self.store.task(task_id).await.map_err(db_error)?;
        Ok(task.filter(|t| t.task.state() == state))
    }

    /// REPORTED -> verdict -> VERIFIED -> SETTLED (or back to the queue). The verifier and the
    /// ledger are called without holding `transitions`; the state is re-checked after each call,
    /// so a concurrent cancel or sweep is never overwritten.
    async fn verify_and_settle(&self, task_id: &str) -> Result<()> {
        let request = {
            let _t = self.transitions.lock().await;
            let Some(task) = self.task_in(task_id, TaskState::Reported).await? else {
                return Ok(());
            };
            let attempts = self.store.attempts(task_id).await.map_err(db_error)?;
            // A proof is checked against the module, the input and the output themselves.
            let proof = task.task.policy.unwrap_or_default().kind() == PolicyKind::Proof;
            let module = if proof {
                self.store
                    .module_bytes(&task.task.module_hash)
                    .await
                    .map_err(db_error)?
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            VerifyResultRequest {
                task_id: task_id.to_string(),
                module_hash: task.task.module_hash.clone(),
                input_hash: task.task.input_hash.clone(),
                policy: task.task.policy,
                reports: attempts
                    .iter()
                    .filter(|x| x.state == attempt_state::REPORTED)
                    .map(|r| ReportedResult {
                        attempt_id: r.attempt_id.clone(),
                        node_id: r.node_id.clone(),
                        operator: r.operator.clone(),
                        receipt: r.receipt.clone(),
                        observed_output_hash: sha256_hex(&r.output),
                        output: if proof { r.output.clone() } else { Vec::new() },
                        proof: r.proof.clone(),
                        proof_error: r.proof_error.clone(),
                    })
                    .collect(),
                module,
                input: if proof {
                    task.input.clone()
                } else {
                    Vec::new()
                },
                memory_limit_mib: task.task.memory_limit_mib,
            }
        };
        let verdict = match call(self.verifier.clone().verify_result(request)).await {
            Ok(v) => v,
            Err(e) => {
                // The reports stay; the sweep asks again.
                tracing::warn!(task_id, error = %e.message(), "no verdict yet; will retry");
                return Ok(());
            }
        };
        {
            let _t = self.transitions.lock().await;
            let Some(task) = self.task_in(task_id, TaskState::Reported).await? else {
                return Ok(());
            };
            let attempts = self.store.attempts(task_id).await.map_err(db_error)?;
            if !self.apply_verdict(&task, &attempts, verdict).await? {
                return Ok(());
            }
        }
        self.settle(task_id).await
    }

    /// Records a verdict; true when the task is now VERIFIED.
    async fn apply_verdict(
        &self,
        task: &TaskRow,
        attempts: &[AttemptRow],
        verdict: VerifyResultResponse,
    ) -> Result<bool> {
        let task_id = &task.task.task_id;
        for id in &verdict.rejected_attempt_ids {
            self.store
                .set_attempt_state(id, attempt_state::REJECTED)
                .await
                .map_err(db_error)?;
            self.metrics.rejected.inc();
        }
        if verdict.verdict() == Verdict::Verified {
            for id in &verdict.accepted_attempt_ids {
                self.store
                    .set_attempt_state(id, attempt_state::ACCEPTED)
                    .await
                    .map_err(db_error)?;
            }
            let accepted: Vec<&AttemptRow> = attempts
                .iter()
                .filter(|a| verdict.accepted_attempt_ids.contains(&a.attempt_id))
                .collect();
            let Some(first) = accepted.first() else {
                return Err(Status::internal("verifier accepted no attempt"));
            };
            let receipts = accepted.iter().filter_map(|a| a.receipt.clone()).collect();
            self.store
                .set_result(task_id, first, &verdict, receipts)
                .await
                .map_err(db_error)?;
            self.emit(task_id, TaskState::Verified, &verdict.reason, "")
                .await?;
            Ok(true)
        } else {
            self.store
                .set_verdict_only(task_id, verdict.verdict, &verdict.reason)
                .await
                .map_err(db_error)?;
            self.requeue(
                task,
                TaskState::Rejected,
                &format!("rejected: {}", verdict.reason),
            )
            .await?;
            Ok(false)
        }
    }

    /// Pays the nodes whose results were accepted (for the fuel their receipts sign) and refunds
    /// the rest of the hold. Capture is idempotent at the ledger, so a retry is safe.
    async fn settle(&self, task_id: &str) -> Result<()> {
        let attempts = self.store.attempts(task_id).await.map_err(db_error)?;
        let price = self.config.micro_credits_per_million_fuel;
        let payouts: Vec<Payout> = attempts
            .iter()
            .filter(|a| a.state == attempt_state::ACCEPTED)
            .map(|a| Payout {
                account: format!("operator/{}", a.operator),
                amount: crate::cost(
                    a.receipt.as_ref().map_or(a.fuel_used, |r| r.fuel_used),
                    price,
                ),
            })
            .collect();
        let charged = payouts
            .iter()
            .try_fold(0u64, |sum, p| sum.checked_add(p.amount))
            .ok_or_else(|| Status::internal("payouts overflow"))?;
        let capture = CaptureRequest {
            task_id: task_id.to_string(),
            payouts,
        };
        let hold = match call(self.ledger.clone().capture(capture)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(task_id, error = %e.message(), "capture failed; will retry");
                return Ok(());
            }
        };
        let _t = self.transitions.lock().await;
        if self.task_in(task_id, TaskState::Verified).await?.is_none() {
            return Ok(());
        }
        self.store
            .set_charged(task_id, charged)
            .await
            .map_err(db_error)?;
        self.store
            .set_hold_closed(task_id)
            .await
            .map_err(db_error)?;
        self.metrics.settled.inc();
        self.emit(
            task_id,
            TaskState::Settled,
            &format!(
                "paid {} micro-credits to the node operator(s), refunded {}",
                hold.paid, hold.refunded
            ),
            "",
        )
        .await
    }

    async fn expire(&self, a: &AttemptRow, reason: &str) -> Result<()> {
        let _t = self.transitions.lock().await;
        let Some(current) = self.store.attempt(&a.attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if !matches!(
            current.state.as_str(),
            attempt_state::LEASED | attempt_state::RUNNING
        ) {
            return Ok(());
        }
        self.store
            .set_attempt_state(&a.attempt_id, attempt_state::EXPIRED)
            .await
            .map_err(db_error)?;
        self.metrics.expired.inc();
        self.free_slot(&a.node_id, &a.attempt_id).await;
        // Tell a still-connected node to stop working on it.
        self.send_to(
            &a.node_id,
            scheduler_message::Kind::Cancel(CancelAttempt {
                attempt_id: a.attempt_id.clone(),
                reason: reason.to_string(),
            }),
        )
        .await;
        let Some(task) = self.store.task(&a.task_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if is_terminal(task.task.state()) || task.task.state() == TaskState::Verified {
            return Ok(());
        }
        self.requeue(&task, TaskState::Expired, reason).await
    }

    /// After an expiry or a rejection: back to the queue, or failed once the attempts are spent.
    async fn requeue(&self, task: &TaskRow, why_state: TaskState, reason: &str) -> Result<()> {
        let task_id = &task.task.task_id;
        self.emit(task_id, why_state, reason, "").await?;
        let attempts = self.store.attempts(task_id).await.map_err(db_error)?;
        let spent = attempts
            .iter()
            .filter(|a| {
                matches!(
                    a.state.as_str(),
                    attempt_state::EXPIRED | attempt_state::REJECTED
                )
            })
            .count();
        let budget = self.config.max_attempts as usize * replicas(task);
        if spent >= budget {
            return self
                .fail(
                    task,
                    &format!("gave up after {spent} failed attempts; last: {reason}"),
                )
                .await;
        }
        self.emit(task_id, TaskState::Queued, "back in the queue", "")
            .await?;
        self.wake();
        Ok(())
    }

    async fn stop_active(&self, task_id: &str, state: &str, reason: &str) -> Result<()> {
        for a in self.store.attempts(task_id).await.map_err(db_error)? {
            if matches!(
                a.state.as_str(),
                attempt_state::LEASED | attempt_state::RUNNING
            ) {
                self.store
                    .set_attempt_state(&a.attempt_id, state)
                    .await
                    .map_err(db_error)?;
                self.free_slot(&a.node_id, &a.attempt_id).await;
                self.send_to(
                    &a.node_id,
                    scheduler_message::Kind::Cancel(CancelAttempt {
                        attempt_id: a.attempt_id.clone(),
                        reason: reason.to_string(),
                    }),
                )
                .await;
            }
        }
        Ok(())
    }

    /// FAILED; the hold is released by the sweep (outside the lock, retried until it succeeds).
    async fn fail(&self, task: &TaskRow, reason: &str) -> Result<()> {
        let task_id = &task.task.task_id;
        self.stop_active(task_id, attempt_state::CANCELLED, reason)
            .await?;
        self.emit(task_id, TaskState::Failed, reason, "").await?;
        self.metrics.failed.inc();
        self.wake_sweep.notify_one();
        Ok(())
    }

    /// Gives the hold of a failed or cancelled task back. Release is idempotent at the ledger.
    async fn release(&self, task_id: &str, reason: &str) -> Result<()> {
        let release = ReleaseRequest {
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        };
        match call(self.ledger.clone().release(release)).await {
            Ok(_) => self.store.set_hold_closed(task_id).await.map_err(db_error),
            Err(e) => {
                tracing::warn!(task_id, error = %e.message(), "releasing held credits failed; will retry");
                Ok(())
            }
        }
    }

    /// Cancels a task for its submitter.
    pub async fn cancel(&self, task_id: &str) -> Result<()> {
        {
            let _t = self.transitions.lock().await;
            let task = self
                .store
                .task(task_id)
                .await
                .map_err(db_error)?
                .ok_or_else(|| Status::not_found(format!("no task {task_id}")))?;
            let state = task.task.state();
            if is_terminal(state) || state == TaskState::Verified {
                return Err(Status::failed_precondition(format!(
                    "task {task_id} is already {state}"
                )));
            }
            self.stop_active(
                task_id,
                attempt_state::CANCELLED,
                "cancelled by the submitter",
            )
            .await?;
            self.emit(
                task_id,
                TaskState::Cancelled,
                "cancelled by the submitter; held credits released",
                "",
            )
            .await?;
        }
        self.release(task_id, "cancelled").await
    }

    /// Expired leases, reports not judged yet, verified tasks not settled, and holds of failed
    /// or cancelled tasks not released yet. Each step re-checks the state under the lock.
    async fn sweep(&self) -> Result<()> {
        for a in self.store.lapsed_attempts(None).await.map_err(db_error)? {
            let reason = format!("lease on node {} expired (no heartbeat)", a.node_id);
            self.expire(&a, &reason).await?;
        }
        let stale = |t: &TaskRow| now_ms() - t.task.updated_at_ms > 2000;
        for task in self
            .store
            .tasks_in_state(TaskState::Reported)
            .await
            .map_err(db_error)?
        {
            if stale(&task) {
                self.verify_and_settle(&task.task.task_id).await?;
            }
        }
        for task in self
            .store
            .tasks_in_state(TaskState::Verified)
            .await
            .map_err(db_error)?
        {
            if stale(&task) {
                self.settle(&task.task.task_id).await?;
            }
        }
        for task_id in self.store.unreleased_holds().await.map_err(db_error)? {
            self.release(&task_id, "task failed or was cancelled")
                .await?;
        }
        Ok(())
    }

    /// Refreshes node facts from the registry and disconnects nodes that are no longer active.
    async fn refresh_nodes(&self) {
        let Ok(list) = call(
            self.registry
                .clone()
                .list_nodes(ListNodesRequest { status: 0 }),
        )
        .await
        else {
            return;
        };
        let nodes = list.nodes;
        self.revoked.replace(
            nodes
                .iter()
                .filter(|n| n.status() == NodeStatus::Revoked)
                .map(|n| n.node_id.clone()),
        );
        // Revoked nodes are cut off; nodes the registry considers offline (missed heartbeats)
        // lose their leases and their stream, and may reconnect once they heartbeat again.
        let gone: Vec<(String, Outbound, Status)> = {
            let workers = self.workers.lock().await;
            nodes
                .iter()
                .filter_map(|n| {
                    let status = match n.status() {
                        NodeStatus::Revoked | NodeStatus::Denied => {
                            Status::permission_denied(format!("node {} is revoked", n.node_id))
                        }
                        NodeStatus::Offline => Status::unavailable(format!(
                            "node {} missed its registry heartbeats",
                            n.node_id
                        )),
                        _ => return None,
                    };
                    workers
                        .get(&n.node_id)
                        .map(|w| (n.node_id.clone(), w.tx.clone(), status))
                })
                .collect()
        };
        *self.nodes.write().unwrap() = nodes.into_iter().map(|n| (n.node_id.clone(), n)).collect();
        for (node_id, tx, status) in gone {
            let reason = status.message().to_string();
            let _ = tx.try_send(Err(status));
            let conn = self.workers.lock().await.get(&node_id).map(|w| w.conn_id);
            if let Some(conn) = conn {
                self.unregister(&node_id, conn, &reason).await;
            }
        }
    }
}

pub fn replicas(task: &TaskRow) -> usize {
    match task.task.policy.unwrap_or_default().kind() {
        PolicyKind::Replicate => task.task.policy.unwrap_or_default().replicas.max(1) as usize,
        _ => 1,
    }
}

/// The dispatcher, the lease sweeper and the registry follower.
pub fn spawn_background(core: Arc<Core>) {
    let c = core.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return,
                _ = c.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if let Err(e) = c.dispatch_once().await {
                tracing::warn!(error = %e.message(), "dispatch failed");
            }
        }
    });
    let c = core.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return,
                _ = c.wake_sweep.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if let Err(e) = c.sweep().await {
                tracing::warn!(error = %e.message(), "sweep failed");
            }
        }
    });
    tokio::spawn(async move {
        loop {
            core.refresh_nodes().await;
            tokio::select! {
                _ = core.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}
