//! A worker's session with the mesh: the Work stream to the scheduler, heartbeats to the
//! registry, assignments dispatched to tasks, and leaving on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;
use zkmesh_kit::CancellationToken;
use zkmesh_kit::client::channel;
use zkmesh_kit::identity::read_file;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;
use zkmesh_runtime::{Sandbox, SandboxConfig};

use crate::config::{WorkerConfig, machine_memory_mib};
use crate::enrollment::{
    Keys, NOT_ISSUED, due_for_renewal, ensure_identity, node_tls, refetch_certificate, renew,
};
use crate::execution::execute;
use crate::metrics::WorkerMetrics;
use crate::shared::Shared;
use crate::{WorkerError, setup_err};

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
    config.check()?;
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

pub(crate) async fn run(
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
    let (outbox, inbox) = mpsc::channel::<WorkRequest>(1024);
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
            channel(&config.scheduler_endpoint, &tls, "scheduler").map_err(setup_err)?,
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
        renewed.borrow_and_update();
        let hello = WorkRequest {
            kind: Some(work_request::Kind::Hello(WorkerHello {
                slots: config.slots,
                version: env!("CARGO_PKG_VERSION").into(),
            })),
        };
        // One forwarder per connection moves messages from the outbox onto this stream; a
        // message it could not deliver goes back into the outbox for the next connection.
        let (conn_tx, conn_rx) = mpsc::channel::<WorkRequest>(64);
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
                        Ok(Some(WorkResponse { kind: Some(kind) })) => {
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

/// Heartbeats to the registry (and, through the outbox, to the scheduler to keep leases), and
/// renews the certificate in the last third of its lifetime.
pub(crate) fn spawn_heartbeats(
    config: WorkerConfig,
    shared: Arc<Shared>,
    outbox: mpsc::Sender<WorkRequest>,
    renewed: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let connect =
            |config: &WorkerConfig| -> Result<RegistryServiceClient<Channel>, WorkerError> {
                Ok(RegistryServiceClient::new(
                    channel(&config.registry_endpoint, &node_tls(config)?, "registry")
                        .map_err(setup_err)?,
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
                Err(e)
                    if e.code() == tonic::Code::FailedPrecondition
                        && e.message().contains(NOT_ISSUED) =>
                {
                    // Not the certificate the registry has on record for this node: fetch that
                    // one (it fits this node's key) and reconnect with it.
                    match refetch_certificate(&config).await {
                        Ok(true) => {
                            if let Ok(r) = connect(&config) {
                                registry = r;
                            }
                            renewed.send_modify(|n| *n += 1);
                        }
                        Ok(false) => {
                            tracing::warn!(error = %e.message(), "the registry refuses this node's certificate and has no other for it")
                        }
                        Err(why) => {
                            tracing::warn!(error = %e.message(), %why, "fetching this node's certificate again failed")
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
            let _ = outbox.try_send(WorkRequest {
                kind: Some(work_request::Kind::Heartbeat(WorkerHeartbeat {
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

pub(crate) fn handle(
    kind: work_response::Kind,
    shared: &Arc<Shared>,
    scheduler: &SchedulerServiceClient<Channel>,
    outbox: &mpsc::Sender<WorkRequest>,
) {
    match kind {
        work_response::Kind::Cancel(c) => {
            tracing::info!(attempt_id = %c.attempt_id, reason = %c.reason, "attempt cancelled");
            if let Some(flag) = shared.running.lock().unwrap().get(&c.attempt_id) {
                flag.store(true, Ordering::Relaxed);
            }
        }
        work_response::Kind::Assignment(a) => {
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
