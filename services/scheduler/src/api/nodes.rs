//! What nodes call: the Work stream (assignments down, reports and heartbeats up) and module
//! downloads, each under the certificate the registry issued the node.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zkmesh_kit::acl::caller;
use zkmesh_kit::identity::Role;
use zkmesh_proto::*;

use super::{BoxStream, SchedulerService, no_module};
use crate::dispatch::db_error;

impl SchedulerService {
    /// `Work`: registers the node's stream and feeds what it sends to the engine.
    pub(super) async fn open_work(
        &self,
        req: Request<Streaming<WorkRequest>>,
    ) -> Result<Response<BoxStream<WorkResponse>>, Status> {
        let me = caller(&req)?;
        let node_id = me.name.clone();
        let node = self.core.node(&node_id).await?;
        if matches!(node.status(), NodeStatus::Revoked | NodeStatus::Denied) {
            return Err(Status::permission_denied(format!(
                "node {node_id} is revoked"
            )));
        }
        if node.status() == NodeStatus::Pending {
            return Err(Status::unavailable(format!(
                "node {node_id} is not approved yet"
            )));
        }
        if node.status() == NodeStatus::Offline {
            return Err(Status::unavailable(format!(
                "node {node_id} is offline at the registry: send a heartbeat first"
            )));
        }
        // A certificate for its id minted elsewhere (a stolen node issuer) takes no tasks.
        issued_to(&node, &req)?;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(WorkRequest {
                kind: Some(work_request::Kind::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the Work stream must open with a hello",
                ));
            }
        };
        let (tx, rx) = mpsc::channel(256);
        let core = self.core.clone();
        // The registry's grant caps the node; it may ask for fewer, never more.
        let slots = hello.slots.clamp(1, node.slots.max(1));
        // Weak: the stream ends when the engine lets it go (a second stream replaced it).
        let why_to = tx.downgrade();
        let conn = core.register(&node_id, &node.operator, slots, tx).await;
        tokio::spawn(async move {
            let reason = loop {
                let msg = tokio::select! {
                    _ = core.shutdown.cancelled() => break "scheduler shutting down".to_string(),
                    m = inbound.message() => m,
                };
                let kind = match msg {
                    Ok(Some(WorkRequest { kind: Some(k) })) => k,
                    Ok(Some(_)) => continue,
                    Ok(None) => break "stream closed by the worker".to_string(),
                    Err(e) => {
                        // Tell the node why (a message over its cap, say), if it still listens.
                        if let Some(tx) = why_to.upgrade() {
                            let _ = tx.try_send(Err(e.clone()));
                        }
                        break format!("stream broken: {}", e.message());
                    }
                };
                let result = match kind {
                    work_request::Kind::Hello(_) => Ok(()),
                    work_request::Kind::Started(s) => {
                        core.on_started(&node_id, &s.attempt_id).await
                    }
                    work_request::Kind::Heartbeat(h) => {
                        core.on_heartbeat(&node_id, &h.running_attempt_ids).await
                    }
                    work_request::Kind::Progress(p) => {
                        core.on_progress(&node_id, &p.attempt_id, &p.message, &p.log)
                            .await
                    }
                    work_request::Kind::Declined(d) => {
                        core.on_declined(&node_id, &d.attempt_id, &d.reason).await
                    }
                    work_request::Kind::Report(r) => {
                        // Judging and settling take calls to the verifier and the ledger: do not
                        // hold up this worker's next messages meanwhile.
                        let (core, node_id) = (core.clone(), node_id.clone());
                        tokio::spawn(async move {
                            if let Err(e) = core.on_report(&node_id, r).await {
                                tracing::warn!(%node_id, error = %e.message(), "report failed");
                            }
                        });
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(%node_id, error = %e.message(), "worker message failed");
                }
            };
            core.unregister(&node_id, conn, &reason).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// `FetchModule`: a module's bytes, in chunks of at most 1 MiB.
    pub(super) async fn send_module(
        &self,
        req: Request<FetchModuleRequest>,
    ) -> Result<Response<BoxStream<FetchModuleResponse>>, Status> {
        // A node reads the module of a task it holds a lease on, under the certificate the
        // registry issued it: no node reads user code it was not given to run.
        let me = caller(&req)?;
        if me.role == Role::Node {
            let node = self.core.node(&me.name).await?;
            issued_to(&node, &req)?;
            let hash = &req.get_ref().module_hash;
            if !self
                .core
                .store
                .leases_module(&me.name, hash)
                .await
                .map_err(db_error)?
            {
                return Err(Status::permission_denied(format!(
                    "node {} holds no lease on a task of module {hash}",
                    me.name
                )));
            }
        }
        let hash = req.into_inner().module_hash;
        let bytes = self
            .core
            .store
            .module_bytes(&hash)
            .await
            .map_err(db_error)?
            .ok_or_else(|| no_module(&hash))?;
        let chunks: Vec<Result<FetchModuleResponse, Status>> = bytes
            .chunks(1 << 20)
            .map(|c| Ok(FetchModuleResponse { chunk: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// Refuses a node's call unless it comes with a certificate the registry issued that node (its
/// fingerprint among the node's): one minted for its id elsewhere, with a stolen node issuer, is
/// not the node.
fn issued_to<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    let presented = zkmesh_kit::acl::caller_certificate(req).unwrap_or_default();
    if presented.is_empty() || !node.certificate_sha256s.contains(&presented) {
        return Err(Status::failed_precondition(format!(
            "this certificate is not one the registry issued to node {} (it was issued elsewhere, or replaced: the node fetches its own with FetchCertificate)",
            node.node_id
        )));
    }
    Ok(())
}
