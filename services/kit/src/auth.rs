//! The authorization layer: the caller's identity from its verified client certificate,
//! checked against the service's [`Acl`] before any handler runs.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::acl::{Acl, Allow, check};
use crate::identity::Identity;
use crate::revocation::RevocationList;
use crate::tls::{MeshTls, PeerInfo};

/// Tower layer: resolves the caller from its certificate and applies the [`Acl`] before any
/// handler runs; the handler finds the caller's [`Identity`] in the request's extensions.
#[derive(Clone)]
pub struct AuthLayer {
    acl: &'static Acl,
    tls: MeshTls,
    revoked: RevocationList,
    /// Past this age of the revocation list, every call but the anonymous ones is refused.
    max_revocation_age: Duration,
}

impl AuthLayer {
    /// A layer that checks callers against `acl`, with certificates judged by `tls` and
    /// refused when `revoked` names them, failing closed when `revoked` is older than
    /// `max_revocation_age`.
    pub fn new(
        acl: &'static Acl,
        tls: MeshTls,
        revoked: RevocationList,
        max_revocation_age: Duration,
    ) -> Self {
        AuthLayer {
            acl,
            tls,
            revoked,
            max_revocation_age,
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

/// The service [`AuthLayer`] wraps around the inner one.
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

/// The serial numbers of the certificates the caller presented (read once per connection): its
/// own, then any intermediate (a revoked node issuer revokes every node certificate it signed).
/// A certificate whose serial cannot be read is refused, never passed unchecked.
fn peer_serials<B>(req: &http::Request<B>) -> Result<Arc<[String]>, tonic::Status> {
    match req.extensions().get::<PeerInfo>() {
        Some(peer) => peer.serials.clone().map_err(tonic::Status::unauthenticated),
        None => Ok(Arc::from([])),
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
        let path = req.uri().path().to_string();
        let (identity, verdict) = match peer_identity(&req, &self.layer.tls) {
            Err(why) => (None, Err(tonic::Status::unauthenticated(why))),
            Ok(identity) => {
                let age = self.layer.revoked.age();
                let verdict = match self.layer.acl.allowed(&path) {
                    None => Err(tonic::Status::unimplemented(format!(
                        "unknown method {:?}",
                        shortened(&path)
                    ))),
                    // Fail closed: a certificate revoked since the last refresh would pass.
                    Some(allow)
                        if age > self.layer.max_revocation_age
                            && !allow.contains(&Allow::Anonymous) =>
                    {
                        let how_old = if age == Duration::MAX {
                            "has not been fetched from the registry yet".to_string()
                        } else {
                            format!("is {} s old", age.as_secs())
                        };
                        Err(tonic::Status::unavailable(format!(
                            "this service's revocation list {how_old} (at most {} s is \
                             trusted): refusing calls until it refreshes from the registry",
                            self.layer.max_revocation_age.as_secs()
                        )))
                    }
                    Some(allow) => peer_serials(&req).and_then(|serials| {
                        check(allow, identity.as_ref(), &serials, &self.layer.revoked)
                    }),
                };
                (identity, verdict)
            }
        };
        match verdict {
            Err(status) => {
                tracing::warn!(path = ?shortened(&path), caller = ?identity.as_ref().map(|i| i.to_string()), code = ?status.code(), "refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(()) => {
                if let Some(id) = identity {
                    req.extensions_mut().insert(id);
                    let leaf = req
                        .extensions()
                        .get::<PeerInfo>()
                        .and_then(|p| p.leaf_sha256.clone());
                    if let Some(leaf) = leaf {
                        req.extensions_mut()
                            .insert(crate::acl::CallerCertificate(leaf.to_string()));
                    }
                }
                // Take the instance that was driven to readiness, leave a fresh clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
        }
    }
}

/// A caller's path, cut to a length fit for a log line or an error message (it is the
/// caller's bytes: quoted with `{:?}` wherever it is shown).
fn shortened(path: &str) -> &str {
    match path.char_indices().nth(120) {
        Some((end, _)) => &path[..end],
        None => path,
    }
}
