//! Connected workers: their Work streams, slots and the attempts running on each.

use std::collections::BTreeSet;

use zkmesh_proto::*;

use crate::dispatch::{Core, Outbound, WorkerConn};

impl Core {
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

    /// A worker opened its Work stream. One stream per node: a second replaces the first (whose
    /// stream ends) and inherits its leases, so reconnecting never frees a slot while a lease
    /// on it lives; the node's live leases in the store count too (a scheduler that restarted
    /// has no other record of them).
    pub async fn register(&self, node_id: &str, operator: &str, slots: u32, tx: Outbound) -> u64 {
        let conn_id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Under the transitions lock no report frees a slot meanwhile, so a lease read here as
        // live is not already gone from the old stream's set.
        let _t = self.transitions.lock().await;
        let live: BTreeSet<String> = match self.store.lapsed_attempts(Some(node_id)).await {
            Ok(attempts) => attempts.into_iter().map(|a| a.attempt_id).collect(),
            Err(e) => {
                tracing::error!(node_id, error = %e, "listing a node's leases failed");
                BTreeSet::new()
            }
        };
        let record = match self.store.node_record(node_id).await {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(node_id, error = %e, "reading a node's record failed");
                NodeRecord {
                    node_id: node_id.to_string(),
                    ..Default::default()
                }
            }
        };
        let mut workers = self.workers.lock().await;
        let mut running = workers
            .remove(node_id)
            .map(|previous| {
                tracing::info!(node_id, "a second Work stream replaces the first");
                previous.running
            })
            .unwrap_or_default();
        running.extend(live);
        workers.insert(
            node_id.to_string(),
            WorkerConn {
                conn_id,
                operator: operator.to_string(),
                slots: slots.clamp(1, 256),
                running,
                tx,
                record,
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
                    // Unless a new stream of the node's took its leases over: they live on.
                    let why = format!("lease on node {node_id} ended: {reason}");
                    if let Err(e) = self.expire_if(&a, &why, true).await {
                        tracing::warn!(error = %e.message(), "expiring attempt failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "listing a node's attempts failed"),
        }
    }

    pub(in crate::dispatch) async fn has_free_slot(&self) -> bool {
        let workers = self.workers.lock().await;
        workers.values().any(|w| (w.running.len() as u32) < w.slots)
    }

    pub(in crate::dispatch) async fn free_slot(&self, node_id: &str, attempt_id: &str) {
        if let Some(w) = self.workers.lock().await.get_mut(node_id) {
            w.running.remove(attempt_id);
        }
        self.wake();
    }

    /// Best effort, never waiting: a node that does not read its stream must not stall the
    /// scheduler (its leases run out instead).
    pub(in crate::dispatch) async fn send_to(&self, node_id: &str, message: work_response::Kind) {
        let tx = self.workers.lock().await.get(node_id).map(|w| w.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send(Ok(WorkResponse {
                kind: Some(message),
            }));
        }
    }
}
