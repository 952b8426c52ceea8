//! Per-RPC metrics: a request count by method and status code, and a latency histogram,
//! recorded when the response ends (for a streaming RPC, when its stream ends), labelled only
//! by the methods the service serves.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::acl::Acl;
use crate::telemetry::{Labels, Metrics};

/// The label of calls to methods the service does not serve: made-up paths share one series.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The status code recorded for a response whose stream was dropped before it ended (the
/// client went away, or the server shut down).
const CANCELLED: i32 = tonic::Code::Cancelled as i32;

/// `zkmesh_rpc_requests` and `zkmesh_rpc_latency_seconds` of one service.
#[derive(Clone)]
pub struct RpcMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl RpcMetrics {
    /// Registers the two families in `metrics`.
    pub fn register(metrics: &Metrics) -> RpcMetrics {
        let requests = metrics.counter_family(
            "rpc_requests",
            "gRPC requests by method and status code, counted when the response ends",
        );
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 20))
        });
        metrics.register(
            "rpc_latency_seconds",
            "Time from a gRPC request to the end of its response (of its stream, if streaming)",
            latency.clone(),
        );
        RpcMetrics { requests, latency }
    }

    /// Records one finished call.
    pub fn record(&self, method: &str, code: i32, started: Instant) {
        self.requests
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("code".into(), code.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("method".into(), method.into())])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Tower layer that records [`RpcMetrics`] for every call, refused ones included.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    acl: &'static Acl,
    metrics: RpcMetrics,
}

impl RpcMetricsLayer {
    /// Labels calls by the methods `acl` knows (health and reflection included).
    pub fn new(acl: &'static Acl, metrics: RpcMetrics) -> RpcMetricsLayer {
        RpcMetricsLayer { acl, metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the inner one.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

/// The grpc-status in a header map, if any; a value that is not one of gRPC's 17 codes is
/// recorded as UNKNOWN, so the `code` label stays within them.
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok().and_then(|v| v.parse::<i32>().ok());
    Some(
        code.filter(|c| (0..=16).contains(c))
            .unwrap_or(tonic::Code::Unknown as i32),
    )
}

impl<S, B> tower::Service<http::Request<B>> for Metered<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = req.uri().path();
        let method = self
            .layer
            .acl
            .method(path)
            .map_or(UNKNOWN_METHOD, |(name, _)| name);
        let metrics = self.layer.metrics.clone();
        // Take the instance that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            // A trailers-only response (an error before any message) ends here.
            if let Some(code) = grpc_status(response.headers()) {
                metrics.record(method, code, started);
                return Ok(response);
            }
            let pending = Pending {
                metrics,
                method,
                started,
            };
            Ok(response.map(|body| {
                tonic::body::Body::new(MeteredBody {
                    inner: body,
                    pending: Some(pending),
                })
            }))
        })
    }
}

/// A call whose response has not ended yet.
struct Pending {
    metrics: RpcMetrics,
    method: &'static str,
    started: Instant,
}

impl Pending {
    fn finish(self, code: i32) {
        self.metrics.record(self.method, code, self.started);
    }
}

/// A response body that records its call when it ends: with the trailers' grpc-status, with
/// OK if it ends without one, or as cancelled if it is dropped first.
struct MeteredBody {
    inner: tonic::body::Body,
    pending: Option<Pending>,
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            // A body that was already at its end (no trailers) was never polled to it.
            let code = if self.inner.is_end_stream() {
                0
            } else {
                CANCELLED
            };
            pending.finish(code);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(0)),
            Some(Err(status)) => Some(status.code() as i32),
            None => Some(0),
        };
        if let Some(code) = code
            && let Some(pending) = self.pending.take()
        {
            pending.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
