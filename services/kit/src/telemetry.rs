//! Structured logs (tracing) and Prometheus metrics, served over plain HTTP at `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Starts logging to stderr. `ZKMESH_LOG` (or `RUST_LOG`) sets the filter, `default` applies
/// otherwise; `ZKMESH_LOG_FORMAT=json` writes one JSON object per line. Safe to call twice.
pub fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ZKMESH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("ZKMESH_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Label pairs of a metric family.
pub type Labels = Vec<(String, String)>;

/// One service's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// A registry whose metrics are named `zkmesh_*` and labelled `service="<service>"`.
    pub fn new(service: &str) -> Metrics {
        let registry = Registry::with_prefix_and_labels(
            "zkmesh",
            [("service".into(), service.to_string().into())].into_iter(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.registry
            .lock()
            .unwrap()
            .register(name, help, c.clone());
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.registry
            .lock()
            .unwrap()
            .register(name, help, g.clone());
        g
    }

    pub fn counter_family(&self, name: &str, help: &str) -> Family<Labels, Counter> {
        let f = Family::<Labels, Counter>::default();
        self.registry
            .lock()
            .unwrap()
            .register(name, help, f.clone());
        f
    }

    pub fn histogram(&self, name: &str, help: &str) -> Histogram {
        let h = Histogram::new(exponential_buckets(0.0001, 2.0, 20));
        self.registry
            .lock()
            .unwrap()
            .register(name, help, h.clone());
        h
    }

    /// Registers `metric` under `name` (prefixed `zkmesh_`).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().unwrap().register(name, help, metric);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().unwrap());
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
/// Connections the metrics port serves at once.
const METRICS_CONNECTIONS: usize = 64;

pub async fn serve_metrics(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioIo, TokioTimer};
    // The same care as the gRPC port: a bounded number of connections at once (the rest are
    // closed at once), headers within 5 s and 16 KiB, a connection done within 30 s.
    let open = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let Ok(place) = open.clone().try_acquire_owned() else {
            tracing::debug!("metrics connection refused: too many open");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _place = place;
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("static response"))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(16 << 10)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
    }
}
