//! The node agent: makes its own keys, enrolls with a join token, waits for approval, then
//! pulls tasks from the scheduler over the `Work` stream, runs them in the wasmtime sandbox,
//! signs a receipt for every result and reports it.
//!
//! Its state lives in one data directory: `node.json` (node id and enrollment secret),
//! `tls.key`/`tls.crt` (its mesh certificate) and `receipt.key` (its Ed25519 receipt key).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_kit::identity::{generate_csr, read_file, write_file};
use zkmesh_kit::{CancellationToken, now_ms, sha256_hex};
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;
use zkmesh_runtime::{Exit, Limits, LogSink, Sandbox, SandboxConfig};

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
    pub operator: String,
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

mod defaults {
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
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    node_id: String,
    enrollment_secret: String,
}

struct Keys {
    node_id: String,
    receipt: SigningKey,
}

fn setup_err(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Setup(e.to_string())
}

fn load_or_create_receipt_key(path: &Path) -> Result<SigningKey, WorkerError> {
    if path.exists() {
        let pem = read_file(path).map_err(setup_err)?;
        return SigningKey::from_pkcs8_pem(&pem).map_err(setup_err);
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key.to_pkcs8_pem(Default::default()).map_err(setup_err)?;
    write_file(path, pem.as_bytes(), true).map_err(setup_err)?;
    Ok(key)
}

/// Enrolls if needed and waits until the registry hands out this node's certificate.
async fn ensure_identity(
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<Keys, WorkerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(setup_err)?;
    let ca = read_file(&config.ca_cert).map_err(setup_err)?;
    let receipt = load_or_create_receipt_key(&dir.join("receipt.key"))?;
    let node_path = dir.join("node.json");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    let anonymous = ClientTls {
        ca: ca.clone(),
        identity: None,
    };
    let mut registry = RegistryServiceClient::new(
        channel(&config.registry_endpoint, &anonymous).map_err(setup_err)?,
    );
    let node: NodeFile = if node_path.exists() {
        serde_json::from_str(&read_file(&node_path).map_err(setup_err)?).map_err(setup_err)?
    } else {
        let token = config.join_token.clone().ok_or_else(|| {
            WorkerError::Enroll("this node is not enrolled yet: give it a join token (join_token / ZKMESH_WORKER_JOIN_TOKEN)".into())
        })?;
        let (tls_key, csr) = generate_csr(&config.name).map_err(setup_err)?;
        write_file(&key_path, tls_key.as_bytes(), true).map_err(setup_err)?;
        let secret: [u8; 32] = rand::random();
        let response = registry
            .enroll(EnrollRequest {
                join_token: token,
                csr_pem: csr,
                receipt_public_key: receipt.verifying_key().to_bytes().to_vec(),
                name: config.name.clone(),
                operator: config.operator.clone(),
                enrollment_secret_sha256: sha2_digest(&secret),
                slots: config.slots,
            })
            .await
            .map_err(|s| WorkerError::Enroll(s.message().to_string()))?
            .into_inner();
        let node = NodeFile {
            node_id: response.node_id,
            enrollment_secret: hex::encode(secret),
        };
        write_file(
            &node_path,
            serde_json::to_string_pretty(&node)
                .map_err(setup_err)?
                .as_bytes(),
            true,
        )
        .map_err(setup_err)?;
        tracing::info!(node_id = %node.node_id, "enrolled");
        node
    };
    if !cert_path.exists() {
        let started = std::time::Instant::now();
        let mut said = false;
        loop {
            let r = registry
                .fetch_certificate(FetchCertificateRequest {
                    node_id: node.node_id.clone(),
                    enrollment_secret: hex::decode(&node.enrollment_secret).map_err(setup_err)?,
                })
                .await
                .map_err(|s| WorkerError::Enroll(s.message().to_string()))?
                .into_inner();
            match r.status() {
                NodeStatus::Denied => return Err(WorkerError::Denied(node.node_id)),
                NodeStatus::Revoked => return Err(WorkerError::Revoked(node.node_id)),
                _ if !r.certificate_pem.is_empty() => {
                    write_file(&cert_path, r.certificate_pem.as_bytes(), false)
                        .map_err(setup_err)?;
                    tracing::info!(node_id = %node.node_id, "approved; certificate received");
                    break;
                }
                _ => {}
            }
            if !said {
                tracing::info!(node_id = %node.node_id, "waiting for an admin to approve this node (zkmesh node approve {})", node.node_id);
                said = true;
            }
            if config.approval_timeout_secs > 0
                && started.elapsed().as_secs() >= config.approval_timeout_secs
            {
                return Err(WorkerError::ApprovalTimeout(node.node_id));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(WorkerError::Setup("shut down while waiting for approval".into())),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    Ok(Keys {
        node_id: node.node_id,
        receipt,
    })
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    hex::decode(sha256_hex(bytes)).expect("hex of a digest")
}

/// Maps the sandbox's outcome to the wire's exit kind.
pub fn exit_kind(exit: &Exit) -> ExitKind {
    match exit {
        Exit::Ok => ExitKind::Ok,
        Exit::Trap(_) => ExitKind::Trap,
        Exit::OutOfFuel => ExitKind::OutOfFuel,
        Exit::OutOfMemory => ExitKind::OutOfMemory,
        Exit::StackExhausted => ExitKind::StackExhausted,
        Exit::Timeout => ExitKind::Timeout,
        Exit::OutputTooLarge => ExitKind::OutputTooLarge,
        Exit::ExitCode(_) => ExitKind::ExitCode,
        Exit::InvalidModule(_) => ExitKind::InvalidModule,
        Exit::ForbiddenImport(_) => ExitKind::ForbiddenImport,
    }
}

/// The worker's Prometheus metrics: tasks by exit, fuel and CPU time, and the sandbox's
/// compile-cache counters (a cache hit never shows as a compile).
struct WorkerMetrics {
    registry: zkmesh_kit::telemetry::Metrics,
    tasks: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
    fuel: prometheus_client::metrics::counter::Counter,
    cpu_us: prometheus_client::metrics::counter::Counter,
    sandbox: [prometheus_client::metrics::gauge::Gauge; 6],
}

impl WorkerMetrics {
    fn new() -> WorkerMetrics {
        let registry = zkmesh_kit::telemetry::Metrics::new("worker");
        let tasks = registry.counter_family("worker_tasks", "Guests run, by terminal state");
        let fuel = registry.counter("worker_fuel_used", "Fuel used by the guests run here");
        let cpu_us = registry.counter(
            "worker_guest_cpu_microseconds",
            "CPU time of the threads that ran guests",
        );
        let sandbox = [
            (
                "sandbox_compiles",
                "Modules compiled by wasmtime since start",
            ),
            (
                "sandbox_cache_memory_hits",
                "Compiled modules found in memory",
            ),
            (
                "sandbox_cache_disk_hits",
                "Compiled modules loaded from the disk cache",
            ),
            (
                "sandbox_cache_rejected",
                "Disk cache files that failed their check and were rebuilt",
            ),
            (
                "sandbox_compile_timeouts",
                "Compiles abandoned after the compile timeout",
            ),
            ("sandbox_runs", "Guests instantiated"),
        ]
        .map(|(name, help)| registry.gauge(name, help));
        WorkerMetrics {
            registry,
            tasks,
            fuel,
            cpu_us,
            sandbox,
        }
    }

    fn record(&self, outcome: &zkmesh_runtime::Outcome, stats: zkmesh_runtime::Stats) {
        self.tasks
            .get_or_create(&vec![("exit".into(), outcome.exit.kind().into())])
            .inc();
        self.fuel.inc_by(outcome.fuel_used);
        self.cpu_us.inc_by(outcome.cpu_time.as_micros() as u64);
        let values = [
            stats.compiles,
            stats.memory_hits,
            stats.disk_hits,
            stats.disk_rejected,
            stats.compile_timeouts,
            stats.runs,
        ];
        for (gauge, v) in self.sandbox.iter().zip(values) {
            gauge.set(v as i64);
        }
    }
}

/// State shared by one worker's tasks.
struct Shared {
    node_id: String,
    receipt_key: SigningKey,
    sandbox: Sandbox,
    modules: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// Attempts in flight here, with the flag that stops each.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Set when the registry says this node is revoked.
    revoked: AtomicBool,
    slots: Arc<Semaphore>,
    /// Guest memory, in MiB, that running tasks may still take (`memory_budget_mib`).
    memory: Arc<Semaphore>,
    memory_budget_mib: u32,
    metrics: WorkerMetrics,
    config: WorkerConfig,
    /// Proving keys in memory, by hash.
    keys: tokio::sync::Mutex<HashMap<String, Arc<zkmesh_prover::groth::Pk>>>,
}

/// A running worker, as started by [`start`].
pub struct WorkerHandle {
    pub node_id: String,
    /// Where its Prometheus metrics are served, if `metrics_addr` was configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

/// Enrolls (or loads) this node's identity, then serves tasks until `shutdown`.
pub async fn start(
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<WorkerHandle, WorkerError> {
    let keys = ensure_identity(&config, &shutdown).await?;
    let node_id = keys.node_id.clone();
    let metrics = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| WorkerError::Setup(format!("metrics address {addr}: {e}")))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics {
        Some(l) => Some(l.local_addr().map_err(setup_err)?),
        None => None,
    };
    let task = tokio::spawn(run(config, keys, metrics, shutdown));
    Ok(WorkerHandle {
        node_id,
        metrics_addr,
        task,
    })
}

async fn run(
    config: WorkerConfig,
    keys: Keys,
    metrics: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let sandbox = Sandbox::new(SandboxConfig {
        slots: config.slots.max(1),
        cache_dir: Some(
            config
                .compile_cache_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("compiled")),
        ),
        cache_max_bytes: config.compile_cache_max_mib << 20,
        compile_timeout: Duration::from_secs(config.compile_timeout_secs.max(1)),
        ..SandboxConfig::default()
    })
    .map_err(setup_err)?;
    let memory_budget_mib = match config.memory_budget_mib {
        0 => machine_memory_mib() / 4 * 3,
        mib => mib,
    }
    .clamp(1, u32::MAX as u64) as u32;
    tracing::info!(memory_budget_mib, "guest memory budget");
    let shared = Arc::new(Shared {
        node_id: keys.node_id.clone(),
        receipt_key: keys.receipt,
        sandbox,
        modules: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        revoked: AtomicBool::new(false),
        slots: Arc::new(Semaphore::new(config.slots.max(1) as usize)),
        memory: Arc::new(Semaphore::new(memory_budget_mib as usize)),
        memory_budget_mib,
        metrics: WorkerMetrics::new(),
        config: config.clone(),
        keys: tokio::sync::Mutex::new(HashMap::new()),
    });
    if let Some(listener) = metrics {
        tracing::info!(addr = %listener.local_addr().map_err(setup_err)?, "serving metrics");
        tokio::spawn(zkmesh_kit::telemetry::serve_metrics(
            listener,
            shared.metrics.registry.clone(),
            shutdown.child_token(),
        ));
    }

    // Reports and heartbeats go through one outbox that outlives any single Work stream, so a
    // result finished during a reconnect is still delivered.
    let (outbox, inbox) = mpsc::channel::<WorkerMessage>(1024);
    let inbox = Arc::new(tokio::sync::Mutex::new(inbox));
    let stop = shutdown.child_token();
    let (renewed_tx, mut renewed) = tokio::sync::watch::channel(0u64);
    spawn_heartbeats(
        config.clone(),
        shared.clone(),
        outbox.clone(),
        renewed_tx,
        stop.clone(),
    );

    let mut backoff = Duration::from_millis(200);
    loop {
        if stop.is_cancelled() {
            break;
        }
        // Read the certificate afresh on every connection: it may have been renewed.
        let tls = node_tls(&config)?;
        let scheduler = SchedulerServiceClient::new(
            channel(&config.scheduler_endpoint, &tls).map_err(setup_err)?,
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
        renewed.borrow_and_update();
        let hello = WorkerMessage {
            kind: Some(worker_message::Kind::Hello(WorkerHello {
                slots: config.slots,
                version: env!("CARGO_PKG_VERSION").into(),
            })),
        };
        // One forwarder per connection moves messages from the outbox onto this stream; a
        // message it could not deliver goes back into the outbox for the next connection.
        let (conn_tx, conn_rx) = mpsc::channel::<WorkerMessage>(64);
        let _ = conn_tx.send(hello).await;
        let forwarder = tokio::spawn({
            let inbox = inbox.clone();
            let outbox = outbox.clone();
            async move {
                let mut inbox = inbox.lock().await;
                while let Some(m) = inbox.recv().await {
                    if let Err(mpsc::error::SendError(m)) = conn_tx.send(m).await {
                        let _ = outbox.try_send(m);
                        return;
                    }
                }
            }
        });
        let upstream = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
        match scheduler.clone().work(upstream).await {
            Ok(response) => {
                backoff = Duration::from_millis(200);
                tracing::info!(node_id = %shared.node_id, "connected to the scheduler");
                let mut downstream = response.into_inner();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = renewed.changed() => {
                            tracing::info!("certificate renewed; reconnecting with it");
                            backoff = Duration::ZERO;
                            break;
                        }
                        m = downstream.message() => m,
                    };
                    match msg {
                        Ok(Some(SchedulerMessage { kind: Some(kind) })) => {
                            handle(kind, &shared, &scheduler, &outbox);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            tracing::warn!("scheduler closed the Work stream");
                            break;
                        }
                        Err(e) => {
                            // Even a refusal is not final here: the registry, asked by the
                            // heartbeat loop, is the authority on whether this node is revoked.
                            tracing::warn!(error = %e.message(), "Work stream broken");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "cannot open the Work stream; retrying");
            }
        }
        forwarder.abort();
        let _ = forwarder.await;
        // The scheduler expires the leases of a broken stream and runs them elsewhere: stop
        // working on them here.
        for flag in shared.running.lock().unwrap().values() {
            flag.store(true, Ordering::Relaxed);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
    }
    tracing::info!(node_id = %shared.node_id, "worker stopped");
    if shared.revoked.load(Ordering::Relaxed) {
        return Err(WorkerError::Revoked(shared.node_id.clone()));
    }
    Ok(())
}

/// This node's mesh certificate and key, from its data directory.
fn node_tls(config: &WorkerConfig) -> Result<ClientTls, WorkerError> {
    let dir = &config.data_dir;
    // A renewal interrupted between its two renames (key first, certificate last) is finished
    // here, so the key and certificate on disk always belong together.
    if dir.join("tls.crt.new").exists() {
        if dir.join("tls.key.new").exists() {
            std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).map_err(setup_err)?;
        }
        std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).map_err(setup_err)?;
    }
    Ok(ClientTls {
        ca: read_file(&config.ca_cert).map_err(setup_err)?,
        identity: Some((
            read_file(&dir.join("tls.crt")).map_err(setup_err)?,
            read_file(&dir.join("tls.key")).map_err(setup_err)?,
        )),
    })
}

/// Whether a certificate is into the last third of its lifetime.
fn due_for_renewal(cert_pem: &str) -> bool {
    let Some((not_before, not_after)) = zkmesh_kit::identity::validity_ms(cert_pem) else {
        return false;
    };
    let lifetime = not_after - not_before - zkmesh_kit::identity::BACKDATE_MS;
    not_after - now_ms() < lifetime / 3
}

/// A new key and certificate from the registry, written over the old ones.
async fn renew(
    config: &WorkerConfig,
    registry: &mut RegistryServiceClient<Channel>,
) -> Result<(), String> {
    let (key, csr) = generate_csr(&config.name).map_err(|e| e.to_string())?;
    let r = registry
        .renew_certificate(RenewCertificateRequest { csr_pem: csr })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let dir = &config.data_dir;
    // Write both beside the old ones, then swap them in.
    write_file(&dir.join("tls.key.new"), key.as_bytes(), true).map_err(|e| e.to_string())?;
    write_file(
        &dir.join("tls.crt.new"),
        r.certificate_pem.as_bytes(),
        false,
    )
    .map_err(|e| e.to_string())?;
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).map_err(|e| e.to_string())?;
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).map_err(|e| e.to_string())?;
    Ok(())
}

/// Heartbeats to the registry (and, through the outbox, to the scheduler to keep leases), and
/// renews the certificate in the last third of its lifetime.
fn spawn_heartbeats(
    config: WorkerConfig,
    shared: Arc<Shared>,
    outbox: mpsc::Sender<WorkerMessage>,
    renewed: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let connect =
            |config: &WorkerConfig| -> Result<RegistryServiceClient<Channel>, WorkerError> {
                Ok(RegistryServiceClient::new(
                    channel(&config.registry_endpoint, &node_tls(config)?).map_err(setup_err)?,
                ))
            };
        let mut registry = match connect(&config) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the registry; stopping");
                stop.cancel();
                return;
            }
        };
        loop {
            let running: Vec<String> = shared.running.lock().unwrap().keys().cloned().collect();
            let beat = registry.heartbeat(HeartbeatRequest {
                running_tasks: running.len() as u32,
            });
            let answer = tokio::time::timeout(Duration::from_secs(5), beat)
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded("registry did not answer"))
                });
            match answer {
                Ok(r) if r.get_ref().status() == NodeStatus::Revoked => {
                    tracing::error!("this node has been revoked; stopping");
                    shared.revoked.store(true, Ordering::Relaxed);
                    stop.cancel();
                    return;
                }
                Ok(_) => {
                    let cert = read_file(&config.data_dir.join("tls.crt")).unwrap_or_default();
                    if due_for_renewal(&cert) {
                        match renew(&config, &mut registry).await {
                            Ok(()) => {
                                tracing::info!(node_id = %shared.node_id, "certificate renewed");
                                if let Ok(r) = connect(&config) {
                                    registry = r;
                                }
                                renewed.send_modify(|n| *n += 1);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "certificate renewal failed; will retry")
                            }
                        }
                    }
                }
                Err(e) if e.code() == tonic::Code::PermissionDenied => {
                    tracing::error!(error = %e.message(), "refused by the registry; stopping");
                    shared.revoked.store(true, Ordering::Relaxed);
                    stop.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e.message(), "heartbeat failed"),
            }
            // Renews the scheduler's leases on everything running here.
            let _ = outbox.try_send(WorkerMessage {
                kind: Some(worker_message::Kind::Heartbeat(WorkerHeartbeat {
                    running_attempt_ids: running,
                })),
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(config.heartbeat_secs.max(1))) => {}
            }
        }
    });
}

fn handle(
    kind: scheduler_message::Kind,
    shared: &Arc<Shared>,
    scheduler: &SchedulerServiceClient<Channel>,
    outbox: &mpsc::Sender<WorkerMessage>,
) {
    match kind {
        scheduler_message::Kind::Cancel(c) => {
            tracing::info!(attempt_id = %c.attempt_id, reason = %c.reason, "attempt cancelled");
            if let Some(flag) = shared.running.lock().unwrap().get(&c.attempt_id) {
                flag.store(true, Ordering::Relaxed);
            }
        }
        scheduler_message::Kind::Assignment(a) => {
            let flag = Arc::new(AtomicBool::new(false));
            shared
                .running
                .lock()
                .unwrap()
                .insert(a.attempt_id.clone(), flag);
            let (shared, scheduler, outbox) = (shared.clone(), scheduler.clone(), outbox.clone());
            tokio::spawn(async move {
                let attempt_id = a.attempt_id.clone();
                if let Err(e) = execute(a, &shared, scheduler, &outbox).await {
                    tracing::warn!(%attempt_id, error = %e, "task could not be run");
                }
                shared.running.lock().unwrap().remove(&attempt_id);
            });
        }
    }
}

async fn module(
    shared: &Shared,
    mut scheduler: SchedulerServiceClient<Channel>,
    hash: &str,
) -> Result<Arc<Vec<u8>>, String> {
    if let Some(m) = shared.modules.lock().unwrap().get(hash) {
        return Ok(m.clone());
    }
    let mut stream = scheduler
        .fetch_module(ModuleRef {
            module_hash: hash.to_string(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|e| e.message().to_string())?
    {
        bytes.extend_from_slice(&chunk.chunk);
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(format!(
                "module {hash} is over {} MiB: not a module this node runs",
                MAX_MODULE_BYTES >> 20
            ));
        }
    }
    // Content addressing: run exactly the module the task names, whatever the scheduler sent.
    if sha256_hex(&bytes) != hash {
        return Err(format!("module download does not hash to {hash}"));
    }
    let bytes = Arc::new(bytes);
    let mut modules = shared.modules.lock().unwrap();
    // Downloaded modules are kept (for the next task and for proving) up to a bound; past it
    // the map starts afresh, and a module needed again is fetched again.
    let held: usize = modules.values().map(|m| m.len()).sum();
    if held + bytes.len() > MODULES_HELD_BYTES {
        modules.clear();
    }
    modules.insert(hash.to_string(), bytes.clone());
    Ok(bytes)
}

/// The largest module a worker downloads (the scheduler's upload limit, and the sandbox's).
const MAX_MODULE_BYTES: usize = 64 << 20;
/// Bytes of downloaded modules a worker keeps in memory.
const MODULES_HELD_BYTES: usize = 256 << 20;

/// Sends a running guest's stderr as `Progress` log events, at most one every
/// [`LOG_INTERVAL`], each cut at a UTF-8 character boundary; ends when the sandbox drops its
/// sink, after sending what is left.
async fn forward_logs(
    mut chunks: mpsc::UnboundedReceiver<Vec<u8>>,
    attempt_id: String,
    outbox: mpsc::Sender<WorkerMessage>,
) {
    let mut pending = Vec::new();
    let mut open = true;
    loop {
        // Wait for something to send (or the end), then gather whatever else has arrived.
        if pending.is_empty() && open {
            match chunks.recv().await {
                Some(chunk) => pending.extend_from_slice(&chunk),
                None => open = false,
            }
        }
        while open {
            match chunks.try_recv() {
                Ok(chunk) => pending.extend_from_slice(&chunk),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // A character split across writes waits for its other half, unless this is the end.
        let cut = match (open, std::str::from_utf8(&pending)) {
            (_, Ok(_)) | (false, _) => pending.len(),
            (true, Err(e)) if e.error_len().is_none() => e.valid_up_to(),
            (true, Err(_)) => pending.len(),
        };
        if cut > 0 {
            let log = String::from_utf8_lossy(&pending[..cut]).into_owned();
            pending.drain(..cut);
            let message = WorkerMessage {
                kind: Some(worker_message::Kind::Progress(TaskProgress {
                    attempt_id: attempt_id.clone(),
                    message: format!("guest log: {} bytes of stderr", log.len()),
                    log,
                })),
            };
            if outbox.send(message).await.is_err() {
                return;
            }
        }
        if !open {
            return;
        }
        // At most one event per interval, but no waiting once the guest has ended: its
        // result waits for this task, and holds its slot meanwhile.
        let until = tokio::time::Instant::now() + LOG_INTERVAL;
        while open {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                chunk = chunks.recv() => match chunk {
                    Some(chunk) => pending.extend_from_slice(&chunk),
                    None => open = false,
                },
            }
        }
    }
}

/// Gives back an attempt this node cannot run, with the reason: the scheduler puts the task
/// back in the queue at once, for another node (and says why on the task's events).
async fn leave(
    outbox: &mpsc::Sender<WorkerMessage>,
    attempt_id: &str,
    note: String,
) -> Result<(), String> {
    let _ = outbox
        .send(WorkerMessage {
            kind: Some(worker_message::Kind::Declined(TaskDeclined {
                attempt_id: attempt_id.to_string(),
                reason: note.clone(),
            })),
        })
        .await;
    Err(note)
}

/// Returns once `flag` is set (polled: the flag is a plain atomic).
async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The machine's RAM in MiB (`MemTotal` in /proc/meminfo), or 8 GiB where that is unknown.
fn machine_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib >> 10)
        })
        .unwrap_or(8 << 10)
}

/// How often a running guest's stderr is sent on.
const LOG_INTERVAL: Duration = Duration::from_millis(200);

async fn execute(
    a: Assignment,
    shared: &Arc<Shared>,
    scheduler: SchedulerServiceClient<Channel>,
    outbox: &mpsc::Sender<WorkerMessage>,
) -> Result<(), String> {
    let wasm = module(shared, scheduler, &a.module_hash).await?;
    let _permit = shared
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    let cancel = shared
        .running
        .lock()
        .unwrap()
        .get(&a.attempt_id)
        .cloned()
        .unwrap_or_default();
    if cancel.load(Ordering::Relaxed) {
        return Ok(());
    }
    let _ = outbox
        .send(WorkerMessage {
            kind: Some(worker_message::Kind::Started(TaskStarted {
                attempt_id: a.attempt_id.clone(),
            })),
        })
        .await;
    // `module` checked that the bytes hash to the task's module hash.
    let sha256: [u8; 32] = hex::decode(&a.module_hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| format!("module hash {} is not a SHA-256", a.module_hash))?;
    // Compile first: a module this node cannot compile now (its compilers busy, or too slow
    // for it under its load) is no result of the task. Leave it to another node, whose lease
    // the scheduler gives once this one's runs out, rather than settle it as invalid.
    let (runner, module_bytes) = (shared.clone(), wasm.clone());
    let prepared =
        tokio::task::spawn_blocking(move || runner.sandbox.prepare_hashed(sha256, &module_bytes))
            .await
            .map_err(|e| format!("sandbox crashed: {e}"))?;
    if let Err(e) = &prepared
        && e.is_node_condition()
    {
        let note = format!("{e}; this node leaves the task to another");
        return leave(outbox, &a.attempt_id, note).await;
    }
    // Guests' memory limits share the node's budget: a task waits for its own to be free, so
    // that tasks which all touch their whole limit cannot together exhaust the machine. (A
    // module that did not compile is reported at once, without waiting.)
    let mut memory = None;
    if prepared.is_ok() {
        let wanted = a.memory_limit_mib.max(1);
        if wanted > shared.memory_budget_mib {
            let note = format!(
                "the task may use {wanted} MiB of memory; this node's guest memory budget is {} MiB, so it leaves the task to another",
                shared.memory_budget_mib
            );
            return leave(outbox, &a.attempt_id, note).await;
        }
        if shared.memory.available_permits() < wanted as usize {
            tracing::info!(attempt_id = %a.attempt_id, mib = wanted, "waiting for guest memory");
        }
        let permit = tokio::select! {
            permit = shared.memory.clone().acquire_many_owned(wanted) => {
                permit.map_err(|e| e.to_string())?
            }
            () = cancelled(&cancel) => return Ok(()),
        };
        memory = Some(permit);
    }
    // The guest's stderr reaches the submitter while it runs, as log events on WatchTask.
    let (log_tx, log_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let forwarder = tokio::spawn(forward_logs(log_rx, a.attempt_id.clone(), outbox.clone()));
    let limits = Limits {
        fuel: a.fuel_limit,
        memory_bytes: (a.memory_limit_mib as u64) << 20,
        timeout: Duration::from_secs(a.timeout_secs.max(1) as u64),
        cancel: Some(cancel.clone()),
        // Bounded by the sandbox's stderr cap: the channel never holds more than that.
        log: Some(LogSink(Arc::new(move |bytes: &[u8]| {
            let _ = log_tx.send(bytes.to_vec());
        }))),
    };
    let started = now_ms();
    let runner = shared.clone();
    let wasm_for_proof = wasm.clone();
    let (task_id, input) = (a.task_id.clone(), a.input.clone());
    // Guests run on the blocking pool, never on the async runtime's threads. The module is the
    // one just prepared: it is not looked up (and cannot be compiled) again.
    let outcome = tokio::task::spawn_blocking(move || match prepared {
        Ok(module) => runner
            .sandbox
            .run_prepared(&module, &input, &limits, task_id.as_bytes()),
        Err(e) => runner.sandbox.refused(&e, &limits),
    })
    .await
    .map_err(|e| format!("sandbox crashed: {e}"))?;
    // The guest is done with its memory (proving, if any, is not counted against it).
    drop(memory);
    // The sink went with the guest's store: the forwarder sends what is left and ends.
    let _ = forwarder.await;
    if cancel.load(Ordering::Relaxed) {
        return Ok(());
    }
    tracing::info!(
        attempt_id = %a.attempt_id, task_id = %a.task_id, exit = outcome.exit.kind(),
        fuel = outcome.fuel_used, cpu_us = outcome.cpu_time.as_micros() as u64,
        ms = now_ms() - started, "task finished"
    );
    shared.metrics.record(&outcome, shared.sandbox.stats());
    if outcome.stderr_dropped > 0 {
        let _ = outbox
            .send(WorkerMessage {
                kind: Some(worker_message::Kind::Progress(TaskProgress {
                    attempt_id: a.attempt_id.clone(),
                    message: format!(
                        "guest log truncated: {} bytes of stderr kept, {} more dropped",
                        outcome.stderr.len(),
                        outcome.stderr_dropped
                    ),
                    log: String::new(),
                })),
            })
            .await;
    }
    let exit = exit_kind(&outcome.exit);
    let mut receipt = Receipt {
        task_id: a.task_id.clone(),
        module_hash: a.module_hash.clone(),
        input_hash: sha256_hex(&a.input),
        output_hash: sha256_hex(&outcome.output),
        fuel_used: outcome.fuel_used,
        exit: exit as i32,
        node_id: shared.node_id.clone(),
        signature: Vec::new(),
    };
    zkmesh_kit::receipt::sign(&mut receipt, &shared.receipt_key).map_err(|e| e.to_string())?;
    let message = outcome.message.clone();
    let mut proof = None;
    if a.policy.unwrap_or_default().kind() == PolicyKind::Proof {
        let attempt_id = a.attempt_id.clone();
        let progress = move |message: String| WorkerMessage {
            kind: Some(worker_message::Kind::Progress(TaskProgress {
                attempt_id: attempt_id.clone(),
                message,
                log: String::new(),
            })),
        };
        let _ = outbox
            .send(progress("ran in wasmtime; tracing in the zkVM".into()))
            .await;
        let sender = outbox.clone();
        let report = move |m: String| {
            let _ = sender.try_send(progress(m));
        };
        match prove(
            shared,
            &a.task_id,
            wasm_for_proof,
            a.input.clone(),
            a.memory_limit_mib,
            &outcome.output,
            exit,
            report,
        )
        .await
        {
            Ok(p) => {
                tracing::info!(attempt_id = %a.attempt_id, class = %p.circuit_class, steps = p.steps, ms = p.prove_time_ms, "proved");
                proof = Some(p);
            }
            Err(e) => {
                // Not a dishonest result: this node cannot prove the run (no key for a class
                // large enough, a run too long, a prover failure). It gives the task back
                // rather than report a result the verifier would have to reject.
                tracing::warn!(attempt_id = %a.attempt_id, error = %e, "cannot prove; giving the task back");
                if cancel.load(Ordering::Relaxed) {
                    return Ok(());
                }
                return leave(outbox, &a.attempt_id, format!("cannot prove the run: {e}")).await;
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
    outbox
        .send(WorkerMessage {
            kind: Some(worker_message::Kind::Report(TaskReport {
                attempt_id: a.attempt_id,
                output: outcome.output,
                exit: exit as i32,
                exit_message: message,
                fuel_used: outcome.fuel_used,
                receipt: Some(receipt),
                run_time_us: outcome.run_time.as_micros() as u64,
                cpu_time_us: outcome.cpu_time.as_micros() as u64,
                proof,
                proof_error: String::new(),
            })),
        })
        .await
        .map_err(|_| "worker is shutting down".to_string())
}

/// Traces the run in the zkVM, checks it agrees with wasmtime, and proves it in the smallest
/// ready class that holds it.
async fn prove(
    shared: &Arc<Shared>,
    task_id: &str,
    wasm: Arc<Vec<u8>>,
    input: Vec<u8>,
    memory_limit_mib: u32,
    output: &[u8],
    exit: ExitKind,
    progress: impl Fn(String) + Send + Sync + 'static,
) -> Result<ZkProof, String> {
    use zkmesh_prover::zkvm;
    let endpoint = shared.config.verifier_endpoint.clone().ok_or(
        "this node has no verifier_endpoint in its configuration, so it has no proving keys",
    )?;
    let tls = node_tls(&shared.config).map_err(|e| e.to_string())?;
    let mut verifier = zkmesh_proto::verifier_service_client::VerifierServiceClient::new(
        channel(&endpoint, &tls).map_err(|e| e.to_string())?,
    )
    .max_decoding_message_size(64 << 20);
    let circuits_info = verifier
        .list_circuits(Empty {})
        .await
        .map_err(|e| format!("verifier: {}", e.message()))?
        .into_inner()
        .circuits;
    let ready: Vec<_> = zkvm::CLASSES
        .iter()
        .filter(|c| {
            circuits_info
                .iter()
                .any(|i| i.circuit_class == c.name && i.state == "ready")
        })
        .copied()
        .collect();
    if ready.is_empty() {
        return Err("the verifier has no circuit class ready yet".into());
    }
    let (circuits, traced) = tokio::task::spawn_blocking(move || {
        let program =
            zkvm::program(&wasm, (memory_limit_mib as u64) << 20).map_err(|e| e.to_string())?;
        let largest = ready.last().expect("checked above");
        let trace = zkvm::trace(&program, &input, largest);
        let traced = (trace.output.clone(), trace.exit.clone());
        zkvm::fit(&program, &input, &trace, &ready)
            .map(|c| (c, traced))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("tracing crashed: {e}"))??;
    // The zkVM must have computed what wasmtime did; a difference is a bug to report, not a
    // result to prove.
    let zk_ending = match traced.1 {
        zkmesh_prover::trace::Exit::Halted(status) => Some(zkvm::ending(status)),
        _ => None,
    };
    if traced.0 != output || zk_ending.is_none() || zk_ending != zkvm::ending_of_exit(exit as i32) {
        return Err(format!(
            "the zkVM and wasmtime disagree on this run (zkVM: {:?}, {} output bytes; wasmtime: \
             {exit:?}, {} output bytes)",
            traced.1,
            traced.0.len(),
            output.len()
        ));
    }
    let class = circuits[0].class.name;
    let info = circuits_info
        .iter()
        .find(|i| i.circuit_class == class)
        .cloned()
        .expect("ready classes come from the list");
    let steps = circuits
        .last()
        .map_or(0, |c| c.statement.step_start + c.statement.steps);
    let segments = circuits.len();
    if segments == 1 {
        progress(format!(
            "traced: {steps} zkVM steps; proving in circuit class {class} ({} constraints)",
            info.constraints
        ));
    } else {
        progress(format!(
            "traced: {steps} zkVM steps, more than class {class} holds: proving {segments} \
             segments of {} steps ({} constraints each)",
            circuits[0].class.steps, info.constraints
        ));
    }
    let pk = proving_key(shared, &mut verifier, &info).await?;
    let started = std::time::Instant::now();
    let progress = Arc::new(progress);
    let report = progress.clone();
    let binding = zkvm::Binding::new(task_id, &shared.node_id);
    let (mut proofs, claim) = tokio::task::spawn_blocking(move || {
        zkvm::prove(&pk, circuits, &binding, |done, of| {
            if of > 1 {
                report(format!(
                    "proved segment {done} of {of} ({} s)",
                    started.elapsed().as_secs()
                ))
            }
        })
    })
    .await
    .map_err(|e| format!("prover crashed: {e}"))?
    .map_err(|e| e.to_string())?;
    let last = proofs.pop().expect("one proof per segment");
    Ok(ZkProof {
        circuit_class: claim.class,
        proof: last,
        steps: claim.steps,
        status: claim.status,
        state_out: claim.state_out.to_string(),
        verifying_key_sha256: info.verifying_key_sha256,
        prove_time_ms: started.elapsed().as_millis() as u64,
        links: claim
            .links
            .iter()
            .zip(proofs)
            .map(|(l, proof)| ZkLink {
                steps: l.steps,
                state_out: l.state_out.to_string(),
                memory_out: zkvm::digest_to_hex(&l.memory_out),
                proof,
            })
            .collect(),
    })
}

/// The proving key of a class: from memory, from the keys directory (checked against its
/// hash), or downloaded from the verifier (checked, then kept).
async fn proving_key(
    shared: &Arc<Shared>,
    verifier: &mut zkmesh_proto::verifier_service_client::VerifierServiceClient<Channel>,
    info: &CircuitInfo,
) -> Result<Arc<zkmesh_prover::groth::Pk>, String> {
    use zkmesh_prover::zkvm;
    let hash = info.proving_key_sha256.clone();
    let mut keys = shared.keys.lock().await;
    if let Some(pk) = keys.get(&hash) {
        return Ok(pk.clone());
    }
    let dir = shared
        .config
        .keys_dir
        .clone()
        .unwrap_or_else(|| shared.config.data_dir.join("keys"));
    let path = dir.join(format!("{hash}.pk"));
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) if zkvm::sha256_hex(&b) == hash => b,
        _ => {
            tracing::info!(class = %info.circuit_class, size = info.proving_key_size, "downloading proving key");
            let mut stream = verifier
                .fetch_proving_key(CircuitRef {
                    circuit_class: info.circuit_class.clone(),
                })
                .await
                .map_err(|e| format!("proving key: {}", e.message()))?
                .into_inner();
            let mut bytes = Vec::with_capacity(info.proving_key_size as usize);
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| format!("proving key: {}", e.message()))?
            {
                bytes.extend_from_slice(&chunk.chunk);
            }
            if zkvm::sha256_hex(&bytes) != hash {
                return Err("the proving key downloaded does not match its hash".into());
            }
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let tmp = dir.join(format!("{hash}.{}.tmp", shared.node_id));
            tokio::fs::write(&tmp, &bytes)
                .await
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            bytes
        }
    };
    let pk = tokio::task::spawn_blocking(move || zkvm::pk_from_checked(&bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let pk = Arc::new(pk);
    keys.insert(hash, pk.clone());
    Ok(pk)
}
