//! Who may call what: the caller's identity from its verified client certificate, checked
//! against one table per service before any handler runs.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::identity::{Identity, Role};
use crate::telemetry::RpcMetrics;
use crate::tls::{MeshTls, PeerInfo};

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allow {
    /// Anyone who completed the TLS handshake, even without a client certificate (only the
    /// registry accepts such connections, for enrollment).
    Anonymous,
    /// Any verified certificate of this mesh.
    AnyRole,
    Role(Role),
    /// One named service.
    Service(&'static str),
}

/// One service's table: `(method name, who may call it)`. A method missing from the table is
/// refused for everyone.
#[derive(Debug)]
pub struct Acl {
    /// gRPC service path, e.g. `zkmesh.v1.SchedulerService`.
    pub service: &'static str,
    pub methods: &'static [(&'static str, &'static [Allow])],
}

impl Acl {
    fn allowed(&self, path: &str) -> Option<&'static [Allow]> {
        let path = path.strip_prefix('/')?;
        let (service, method) = path.split_once('/')?;
        // Health and reflection are open to every caller that reached us over TLS.
        if service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.") {
            return Some(&[Allow::Anonymous]);
        }
        if service != self.service {
            return None;
        }
        self.methods
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, allow)| *allow)
    }
}

/// Node ids whose certificates are refused. The registry fills its own; the other services
/// refresh theirs from the registry every second or so.
#[derive(Clone, Default, Debug)]
pub struct RevocationList(Arc<RwLock<HashSet<String>>>);

impl RevocationList {
    pub fn contains(&self, node_id: &str) -> bool {
        self.0.read().map(|s| s.contains(node_id)).unwrap_or(true)
    }

    pub fn insert(&self, node_id: &str) {
        if let Ok(mut s) = self.0.write() {
            s.insert(node_id.to_string());
        }
    }

    pub fn replace(&self, ids: impl IntoIterator<Item = String>) {
        if let Ok(mut s) = self.0.write() {
            *s = ids.into_iter().collect();
        }
    }
}

/// Checks an identity against a method's allow list. `None` is an anonymous caller.
pub fn check(
    allow: &[Allow],
    identity: Option<&Identity>,
    revoked: &RevocationList,
) -> Result<(), tonic::Status> {
    if allow.contains(&Allow::Anonymous) {
        if let Some(id) = identity
            && id.role == Role::Node
            && revoked.contains(&id.name)
        {
            return Err(tonic::Status::permission_denied(format!(
                "node {} is revoked",
                id.name
            )));
        }
        return Ok(());
    }
    let Some(id) = identity else {
        return Err(tonic::Status::unauthenticated(
            "a client certificate from this mesh's CA is required",
        ));
    };
    if id.role == Role::Node && revoked.contains(&id.name) {
        return Err(tonic::Status::permission_denied(format!(
            "node {} is revoked",
            id.name
        )));
    }
    let ok = allow.iter().any(|a| match a {
        Allow::Anonymous | Allow::AnyRole => true,
        Allow::Role(r) => *r == id.role,
        Allow::Service(name) => id.role == Role::Service && id.name == *name,
    });
    if ok {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "{id} may not call this method"
        )))
    }
}

/// The caller's identity as the [`AuthLayer`] found it; handlers read it from the request.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no verified client certificate"))
}

/// Tower layer: resolves the caller, applies the [`Acl`], records RPC metrics and a span.
#[derive(Clone)]
pub struct AuthLayer {
    acl: &'static Acl,
    tls: MeshTls,
    revoked: RevocationList,
    metrics: RpcMetrics,
}

impl AuthLayer {
    pub fn new(
        acl: &'static Acl,
        tls: MeshTls,
        revoked: RevocationList,
        metrics: RpcMetrics,
    ) -> Self {
        AuthLayer {
            acl,
            tls,
            revoked,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

/// The caller behind a request: `Ok(None)` when it presented no certificate.
fn peer_identity<B>(req: &http::Request<B>, tls: &MeshTls) -> Result<Option<Identity>, String> {
    match req.extensions().get::<PeerInfo>() {
        Some(peer) => tls.verify_peer(peer),
        None => Ok(None),
    }
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let method = path.rsplit('/').next().unwrap_or("").to_string();
        let (identity, verdict) = match peer_identity(&req, &self.layer.tls) {
            Err(why) => (None, Err(tonic::Status::unauthenticated(why))),
            Ok(identity) => {
                let verdict = match self.layer.acl.allowed(&path) {
                    None => Err(tonic::Status::unimplemented(format!(
                        "unknown method {path}"
                    ))),
                    Some(allow) => check(allow, identity.as_ref(), &self.layer.revoked),
                };
                (identity, verdict)
            }
        };
        let metrics = self.layer.metrics.clone();
        match verdict {
            Err(status) => {
                tracing::warn!(%path, caller = ?identity.as_ref().map(|i| i.to_string()), code = ?status.code(), "refused");
                metrics.record(&method, status.code() as i32, started.elapsed());
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(()) => {
                if let Some(id) = identity {
                    req.extensions_mut().insert(id);
                }
                // Take the instance that was driven to readiness, leave a fresh clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let response = inner.call(req).await?;
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0);
                    metrics.record(&method, code, started.elapsed());
                    Ok(response)
                })
            }
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
        let mut client = zkmesh_proto::registry_service_client::RegistryServiceClient::new(channel);
        let mut warned = false;
        loop {
            match client
                .list_revoked(zkmesh_proto::ListRevokedRequest {})
                .await
            {
                Ok(r) => {
                    revoked.replace(r.into_inner().node_ids);
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

    static ACL: Acl = Acl {
        service: "zkmesh.v1.Test",
        methods: &[
            ("Open", &[Allow::Anonymous]),
            ("Users", &[Allow::Role(Role::User)]),
            ("Sched", &[Allow::Service("scheduler")]),
        ],
    };

    #[test]
    fn table_decides() {
        let revoked = RevocationList::default();
        let user = Identity::new("m", Role::User, "u");
        let node = Identity::new("m", Role::Node, "n1");
        let sched = Identity::new("m", Role::Service, "scheduler");
        let ledger = Identity::new("m", Role::Service, "ledger");
        let users = ACL.allowed("/zkmesh.v1.Test/Users").unwrap();
        assert!(check(users, Some(&user), &revoked).is_ok());
        assert_eq!(
            check(users, Some(&node), &revoked).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            check(users, None, &revoked).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let sched_only = ACL.allowed("/zkmesh.v1.Test/Sched").unwrap();
        assert!(check(sched_only, Some(&sched), &revoked).is_ok());
        assert!(check(sched_only, Some(&ledger), &revoked).is_err());
        assert!(ACL.allowed("/zkmesh.v1.Test/Missing").is_none());
        assert!(ACL.allowed("/zkmesh.v1.Other/Users").is_none());
        let open = ACL.allowed("/zkmesh.v1.Test/Open").unwrap();
        assert!(check(open, None, &revoked).is_ok());
        revoked.insert("n1");
        assert_eq!(
            check(open, Some(&node), &revoked).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}
