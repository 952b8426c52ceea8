//! Revocations: revoked nodes (by node id) and revoked certificates of any role (by serial
//! number). The registry keeps the list; the other services follow it and fail closed when
//! their copy is older than a bound.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Lists {
    nodes: HashSet<String>,
    serials: HashSet<String>,
}

/// What to refuse. The registry's own list is the authority (never stale); the other services
/// refresh theirs from the registry every second or so and know how old their copy is.
#[derive(Clone, Debug)]
pub struct RevocationList {
    lists: Arc<RwLock<Lists>>,
    /// When the last complete refresh began (None inside: never); None: the authority
    /// (always current).
    refreshed: Option<Arc<RwLock<Option<Instant>>>>,
}

impl Default for RevocationList {
    /// A follower's list, never refreshed yet: it is stale until its first complete refresh,
    /// so a service that cannot reach the registry at start refuses rather than trusts.
    fn default() -> Self {
        RevocationList {
            lists: Arc::default(),
            refreshed: Some(Arc::new(RwLock::new(None))),
        }
    }
}

impl RevocationList {
    /// The registry's list: the authority, current by definition.
    pub fn authority() -> RevocationList {
        RevocationList {
            lists: Arc::default(),
            refreshed: None,
        }
    }

    /// Whether `node_id` is revoked (also when the list cannot be read).
    pub fn contains(&self, node_id: &str) -> bool {
        self.lists
            .read()
            .map(|s| s.nodes.contains(node_id))
            .unwrap_or(true)
    }

    /// Whether the certificate with `serial` (lowercase hex) is revoked (also when the list
    /// cannot be read).
    pub fn contains_serial(&self, serial: &str) -> bool {
        self.lists
            .read()
            .map(|s| s.serials.contains(serial))
            .unwrap_or(true)
    }

    /// Revokes `node_id`.
    pub fn insert(&self, node_id: &str) {
        if let Ok(mut s) = self.lists.write() {
            s.nodes.insert(node_id.to_string());
        }
    }

    /// Revokes the certificate with `serial`.
    pub fn insert_serial(&self, serial: &str) {
        if let Ok(mut s) = self.lists.write() {
            s.serials.insert(serial.to_string());
        }
    }

    /// Replaces the node list.
    pub fn replace(&self, ids: impl IntoIterator<Item = String>) {
        if let Ok(mut s) = self.lists.write() {
            s.nodes = ids.into_iter().collect();
        }
    }

    /// Replaces both lists with a complete copy fetched from the authority, current as of
    /// `began` (when its fetch started: anything revoked later may be missing from it).
    pub fn refresh(
        &self,
        node_ids: impl IntoIterator<Item = String>,
        serials: impl IntoIterator<Item = String>,
        began: Instant,
    ) {
        if let Ok(mut s) = self.lists.write() {
            s.nodes = node_ids.into_iter().collect();
            s.serials = serials.into_iter().collect();
        }
        if let Some(at) = &self.refreshed
            && let Ok(mut at) = at.write()
        {
            *at = Some(began);
        }
    }

    /// How old this copy is: zero for the authority, `Duration::MAX` before the first refresh.
    pub fn age(&self) -> Duration {
        match &self.refreshed {
            None => Duration::ZERO,
            Some(at) => at
                .read()
                .ok()
                .and_then(|t| t.map(|t| t.elapsed()))
                .unwrap_or(Duration::MAX),
        }
    }

    /// Pretends the last refresh began `ago` earlier (tests of the fail-closed bound).
    #[doc(hidden)]
    pub fn backdate(&self, ago: Duration) {
        if let Some(at) = &self.refreshed
            && let Ok(mut at) = at.write()
        {
            *at = at.and_then(|t| t.checked_sub(ago));
        }
    }
}

/// How long one refresh may take before it is given up.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps `revoked` in step with the registry, polling every `every` until `shutdown`. Other
/// services run this so a revoked node or certificate is refused everywhere within seconds; a
/// refresh counts only when both lists were fetched whole.
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
            let began = Instant::now();
            let fetched = async {
                let nodes = crate::lists::all_revoked(&client).await?;
                let serials = crate::lists::all_revoked_certificates(&client).await?;
                Ok::<_, tonic::Status>((nodes, serials))
            };
            // A registry that hangs must not hold the loop: the next try starts afresh.
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetched)
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")));
            match fetched {
                Ok((nodes, serials)) => {
                    revoked.refresh(nodes, serials, began);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_age_and_the_authority_does_not() {
        let follower = RevocationList::default();
        assert_eq!(
            follower.age(),
            Duration::MAX,
            "stale until its first refresh"
        );
        follower.refresh(["n-1".to_string()], ["0a".to_string()], Instant::now());
        assert!(follower.age() < Duration::from_secs(5));
        follower.backdate(Duration::from_secs(100));
        assert!(follower.age() >= Duration::from_secs(100));
        assert!(follower.contains("n-1") && follower.contains_serial("0a"));
        assert!(!follower.contains_serial("0b"));
        let authority = RevocationList::authority();
        authority.backdate(Duration::from_secs(100));
        assert_eq!(authority.age(), Duration::ZERO);
    }
}
