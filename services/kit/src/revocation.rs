//! Revoked nodes: the registry's list, and how the other services keep theirs in step.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Node ids whose certificates are refused. The registry fills its own; the other services
/// refresh theirs from the registry every second or so.
#[derive(Clone, Default, Debug)]
pub struct RevocationList(Arc<RwLock<HashSet<String>>>);

impl RevocationList {
    /// Whether `node_id` is revoked (also when the list cannot be read).
    pub fn contains(&self, node_id: &str) -> bool {
        self.0.read().map(|s| s.contains(node_id)).unwrap_or(true)
    }

    /// Revokes `node_id`.
    pub fn insert(&self, node_id: &str) {
        if let Ok(mut s) = self.0.write() {
            s.insert(node_id.to_string());
        }
    }

    /// Replaces the whole list.
    pub fn replace(&self, ids: impl IntoIterator<Item = String>) {
        if let Ok(mut s) = self.0.write() {
            *s = ids.into_iter().collect();
        }
    }
}

/// Keeps `revoked` in step with the registry, polling every `every` until `shutdown`. Other
/// services run this so a revoked node is refused everywhere within seconds.
pub fn follow_revocations(
    channel: tonic::transport::Channel,
    revoked: RevocationList,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let client = zkmesh_proto::registry_service_client::RegistryServiceClient::new(channel);
        let mut warned = false;
        loop {
            match crate::lists::all_revoked(&client).await {
                Ok(ids) => {
                    revoked.replace(ids);
                    warned = false;
                }
                Err(e) if !warned => {
                    tracing::warn!(error = %e.message(), "cannot refresh the revocation list");
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}
