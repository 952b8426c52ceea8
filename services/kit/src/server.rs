//! Runs one zkmesh service the same way every time: mutual TLS, the role table, health,
//! reflection, metrics, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::Server;

use crate::acl::Acl;
use crate::auth::AuthLayer;
use crate::identity::mesh_of_ca;
use crate::revocation::RevocationList;
use crate::rpc_metrics::{RpcMetrics, RpcMetricsLayer};
use crate::telemetry::{Metrics, serve_metrics};
use crate::tls::{MeshTls, TlsError, TlsPem};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Other(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
}

/// Binds a TCP listener; `addr` like `127.0.0.1:0`.
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Everything [`serve`] needs besides the service itself.
pub struct ServeSpec {
    /// Short service name: `registry`, `scheduler`, `ledger`, `verifier`.
    pub name: &'static str,
    pub acl: &'static Acl,
    /// The service's certificate, key and the mesh CA; the mesh's name comes from the CA.
    pub tls: TlsPem,
    /// `host:port` to serve gRPC on (`127.0.0.1:0` picks a port).
    pub listen: String,
    /// `host:port` for plain-HTTP Prometheus metrics, if any.
    pub metrics_listen: Option<String>,
    pub metrics: Metrics,
    pub revoked: RevocationList,
    /// Past this age of `revoked`, calls that need a certificate are refused (UNAVAILABLE).
    pub max_revocation_age: Duration,
    pub shutdown: CancellationToken,
    /// How long in-flight calls may take to finish after shutdown begins.
    pub grace: Duration,
    /// Caps on connections, handshakes, streams, call time and headers.
    pub limits: crate::admission::Limits,
    /// Methods whose request messages may be larger than
    /// [`crate::message_limits::DEFAULT_MAX_MESSAGE`], with their caps in bytes.
    pub message_caps: Vec<(&'static str, usize)>,
}

/// The least `max_revocation_age` a service accepts.
pub const MIN_REVOCATION_AGE: Duration = Duration::from_secs(3);

/// A running service.
pub struct Serving {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub task: JoinHandle<Result<(), ServeError>>,
}

/// Serves `service` until `spec.shutdown` is cancelled, then reports NOT_SERVING, stops
/// accepting, and gives in-flight calls `spec.grace` to finish.
pub async fn serve<S>(service: S, spec: ServeSpec) -> Result<Serving, ServeError>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // The list is refreshed every second; a bound much nearer than that flaps.
    if spec.max_revocation_age < MIN_REVOCATION_AGE {
        return Err(ServeError::Other(format!(
            "max_revocation_age_secs must be at least {} (the revocation list is refreshed every second)",
            MIN_REVOCATION_AGE.as_secs()
        )));
    }
    spec.limits.check().map_err(ServeError::Other)?;
    let listener = bind(&spec.listen).await?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: spec.listen.clone(),
        source,
    })?;
    let mesh = mesh_of_ca(&spec.tls.ca).ok_or_else(|| {
        ServeError::Tls(TlsError(
            "the CA certificate carries no mesh name (spiffe://<mesh> URI)".into(),
        ))
    })?;
    let tls = MeshTls::new(&spec.tls, &mesh)?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    // Reflection lists what this port serves: its service, health and reflection itself.
    let reflection = || {
        [
            S::NAME,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into_iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, name| {
            b.with_service_name(name)
        })
        .register_encoded_file_descriptor_set(zkmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let metrics_listener = match &spec.metrics_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let a = listener.local_addr().ok();
            tokio::spawn(serve_metrics(
                listener,
                spec.metrics.clone(),
                spec.shutdown.clone(),
            ));
            a
        }
        None => None,
    };

    let auth = AuthLayer::new(
        spec.acl,
        tls.clone(),
        spec.revoked.clone(),
        spec.max_revocation_age,
    );
    let rpc_metrics = RpcMetricsLayer::new(spec.acl, RpcMetrics::register(&spec.metrics));
    let drain = CancellationToken::new();
    let admission = crate::admission::Admission::new(spec.limits.clone(), &spec.metrics);
    let incoming = crate::tls::incoming(listener, &tls, admission, drain.clone());
    let limits = &spec.limits;
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .timeout(Duration::from_secs(limits.request_timeout_secs))
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .layer(rpc_metrics)
        .layer(auth)
        .layer(crate::message_limits::MessageLimitLayer::new(
            spec.acl,
            &spec.message_caps,
        ))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let drain_signal = drain.clone();
    let mut server = tokio::spawn(
        router
            .serve_with_incoming_shutdown(incoming, async move { drain_signal.cancelled().await }),
    );
    tracing::info!(service = spec.name, %addr, metrics = ?metrics_addr, "listening");

    let name = spec.name;
    let shutdown = spec.shutdown;
    let grace = spec.grace;
    let task = tokio::spawn(async move {
        tokio::select! {
            result = &mut server => return flatten(result),
            _ = shutdown.cancelled() => {}
        }
        reporter.set_not_serving::<S>().await;
        drain.cancel();
        tracing::info!(service = name, "draining");
        match tokio::time::timeout(grace, &mut server).await {
            Ok(result) => flatten(result),
            Err(_) => {
                tracing::warn!(service = name, "grace period over; closing remaining calls");
                server.abort();
                Ok(())
            }
        }
    });
    Ok(Serving {
        addr,
        metrics_addr,
        task,
    })
}

fn flatten(
    r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match r {
        Ok(inner) => inner.map_err(ServeError::from),
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(ServeError::Other(format!("server task failed: {e}"))),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
