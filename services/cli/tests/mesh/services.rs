//! Every service answers grpc.health.v1 and server reflection, exposes Prometheus metrics, and
//! shuts down gracefully.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use zkmesh_kit::client::{ClientTls, channel};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_metrics_and_shutdown() {
    let sb = start(1).await;
    let c = sb.mesh.client.clone();
    let tls = ClientTls {
        ca: std::fs::read_to_string(&c.ca).unwrap(),
        identity: Some((
            std::fs::read_to_string(&c.cert).unwrap(),
            std::fs::read_to_string(&c.key).unwrap(),
        )),
    };
    let services = [
        (&c.registry, "zkmesh.v1.RegistryService", &sb.mesh.registry),
        (
            &c.scheduler,
            "zkmesh.v1.SchedulerService",
            &sb.mesh.scheduler,
        ),
        (&c.ledger, "zkmesh.v1.LedgerService", &sb.mesh.ledger),
        (&c.verifier, "zkmesh.v1.VerifierService", &sb.mesh.verifier),
    ];
    for (endpoint, name, serving) in services {
        let short = name
            .trim_start_matches("zkmesh.v1.")
            .trim_end_matches("Service")
            .to_lowercase();
        let ch = channel(endpoint, &tls, &short).unwrap();
        let status = HealthClient::new(ch.clone())
            .check(HealthCheckRequest {
                service: name.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{name}");

        let request = || ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter(vec![request()]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("{name}: unexpected reflection answer");
        };
        // The port's own service, and none of the other three.
        let mut listed: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                name,
            ],
            "{name}"
        );
        // Without a certificate: health answers, reflection does not.
        let anonymous = ClientTls {
            ca: tls.ca.clone(),
            identity: None,
        };
        let ch = channel(endpoint, &anonymous, &short).unwrap();
        let status = HealthClient::new(ch.clone())
            .check(HealthCheckRequest {
                service: name.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{name}, anonymous");
        let refused = async {
            ServerReflectionClient::new(ch)
                .server_reflection_info(tokio_stream::iter(vec![request()]))
                .await?
                .into_inner()
                .message()
                .await
        }
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{name}");

        let metrics = http_get(serving.metrics_addr.unwrap(), "/metrics")
            .await
            .unwrap();
        assert!(
            metrics.contains("zkmesh_rpc_requests_total"),
            "{name}: {metrics}"
        );
        assert!(metrics.contains("service=\""), "{name}");
    }

    // RPC metrics are recorded when a response ends: a call to a method the service does not
    // serve is counted under `unknown`, the workers' `Work` streams (open all along) not yet,
    // and a `WatchTask` stream once it has ended, with its whole length as its latency.
    let scheduler_metrics = || async {
        http_get(sb.mesh.scheduler.metrics_addr.unwrap(), "/metrics")
            .await
            .unwrap()
    };
    let ch = channel(&c.scheduler, &tls, "scheduler").unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let made_up = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/zkmesh.v1.SchedulerService/MadeUp"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(made_up.code(), tonic::Code::Unimplemented);
    // Made-up methods under the open health service, one with a quote that would break the
    // exposition format if it reached a label: refused, and counted under `unknown` too.
    for path in [
        "/grpc.health.v1.Health/MadeUp",
        "/grpc.health.v1.Health/Made\"Up",
        "/grpc.reflection.v1.Made/Up",
    ] {
        grpc.ready().await.unwrap();
        let refused = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{path}");
    }
    let sha = zkmesh_guests::get("sha256").unwrap();
    let started = std::time::Instant::now();
    let (_, result) = run(&sb.api, &Job::new(sha.wasm, b"metrics")).await.unwrap();
    let watched = started.elapsed();
    assert_eq!(result.state(), zkmesh_proto::TaskState::Settled);
    let text = scheduler_metrics().await;
    let series = |method: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("zkmesh_rpc_requests_total{"))
            .filter(|l| l.contains(&format!("method=\"{method}\"")))
            .map(str::to_string)
            .collect()
    };
    assert!(!series("unknown").is_empty(), "{text}");
    assert!(series("MadeUp").is_empty(), "{text}");
    assert!(
        !text.contains("Made"),
        "a caller's bytes reached /metrics: {text}"
    );
    // Every method label comes from the scheduler's table or the open services.
    for line in text.lines().filter(|l| l.starts_with("zkmesh_rpc_")) {
        let label = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no method label: {line}"));
        let known = ["unknown", "Check", "Watch", "ServerReflectionInfo"].contains(&label)
            || zkmesh_scheduler::ACL
                .allowed(&format!("/zkmesh.v1.SchedulerService/{label}"))
                .is_some();
        assert!(known, "label {label:?} in {line}");
    }
    assert!(series("Work").is_empty(), "open streams counted: {text}");
    assert_eq!(series("WatchTask").len(), 1, "{text}");
    let watch_seconds: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("zkmesh_rpc_latency_seconds_sum{") && l.contains("method=\"WatchTask\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("a WatchTask latency");
    // The stream lasted until the task settled (the verdict and the ledger's capture take
    // milliseconds), not the few microseconds to its headers.
    assert!(
        watch_seconds > 0.002 && watch_seconds <= watched.as_secs_f64(),
        "WatchTask latency {watch_seconds} s, the run took {watched:?}: {text}"
    );

    assert_audit_passes(&sb.api).await;
    let addr = sb.mesh.scheduler.addr;
    let started = std::time::Instant::now();
    sb.mesh.stop().await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "scheduler still listening"
    );
}

/// Every example config parses into its service's config, and the shared `[server]` table
/// takes `ZKMESH_<SERVICE>_SERVER__<KEY>` overrides, nested ones included.
#[test]
fn the_example_configs_parse_and_the_server_table_takes_overrides() {
    use std::collections::HashMap;
    use zkmesh_kit::config::load;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config");
    let env: HashMap<String, String> = [
        ("ZKMESH_SCHEDULER_SERVER__LISTEN", "127.0.0.1:1"),
        ("ZKMESH_SCHEDULER_SERVER__GRACE_SECS", "3"),
        (
            "ZKMESH_SCHEDULER_SERVER__TLS__CERT",
            "/elsewhere/scheduler.crt",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let file = |name: &str| dir.join(format!("{name}.toml"));
    let s: zkmesh_scheduler::SchedulerConfig =
        load(Some(&file("scheduler")), "scheduler", &env).unwrap();
    assert_eq!(s.server.listen.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(s.server.grace_secs, 3);
    assert_eq!(
        s.server.tls.cert,
        std::path::PathBuf::from("/elsewhere/scheduler.crt")
    );
    assert_eq!(
        s.server.tls.key,
        std::path::PathBuf::from("mesh/certs/scheduler.key")
    );
    assert_eq!(s.server.database_url, "sqlite://mesh/scheduler.db");
    let r: zkmesh_registry::RegistryConfig =
        load(Some(&file("registry")), "registry", &env).unwrap();
    assert_eq!(r.server.listen.as_deref(), Some("127.0.0.1:7001"));
    let l: zkmesh_ledger::LedgerConfig = load(Some(&file("ledger")), "ledger", &env).unwrap();
    assert_eq!(l.server.metrics_listen.as_deref(), Some("127.0.0.1:9103"));
    let v: zkmesh_verifier::VerifierConfig =
        load(Some(&file("verifier")), "verifier", &env).unwrap();
    assert_eq!(v.server.tls.ca, std::path::PathBuf::from("mesh/ca/ca.crt"));
    load::<zkmesh_worker::WorkerConfig>(Some(&file("worker")), "worker", &env).unwrap();
    zkmesh_client::ClientConfig::load(&file("client")).unwrap();
    // The old top-level keys are refused, naming the key.
    let old: HashMap<String, String> = [(
        "ZKMESH_LEDGER_DATABASE_URL".to_string(),
        "sqlite://x.db".to_string(),
    )]
    .into();
    let err = load::<zkmesh_ledger::LedgerConfig>(Some(&file("ledger")), "ledger", &old)
        .unwrap_err()
        .to_string();
    assert!(err.contains("database_url"), "{err}");
}

/// `wait_for_workers` asks the scheduler which workers are connected: a worker that stopped is
/// still active at the registry until its heartbeats lapse, but is not ready, with or without
/// a metrics endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_workers_asks_the_scheduler_not_its_metrics() {
    let mut sb = start_with(1, |o| o.metrics = false).await;
    assert!(sb.mesh.scheduler.metrics_addr.is_none());
    let workers = sb
        .api
        .admin_scheduler()
        .unwrap()
        .list_workers(zkmesh_proto::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0].node_id, sb.mesh.workers[0].0.node_id);
    let (handle, stop) = sb.mesh.workers.pop().unwrap();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle.task)
        .await
        .expect("the worker stops")
        .ok();
    let err = sb
        .mesh
        .wait_for_workers(1, Duration::from_millis(800))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 connected to the scheduler"), "{err}");
    // A user may not list the workers.
    let refused = sb
        .api
        .scheduler()
        .unwrap()
        .list_workers(zkmesh_proto::ListWorkersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

/// Every RPC in `proto/` says who may call it ("Roles: ..." first in its comment), and says
/// what the service's ACL enforces: the same set, for every method of every service.
#[test]
fn every_rpc_documents_the_roles_its_acl_enforces() {
    use std::collections::{BTreeMap, BTreeSet};
    let acls = [
        ("ledger", &zkmesh_ledger::ACL),
        ("registry", &zkmesh_registry::ACL),
        ("scheduler", &zkmesh_scheduler::ACL),
        ("verifier", &zkmesh_verifier::ACL),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/zkmesh/v1");
    for (file, acl) in acls {
        let text = std::fs::read_to_string(root.join(format!("{file}.proto"))).unwrap();
        let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut comment = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(c) = line.strip_prefix("//") {
                comment.push_str(c.trim());
                comment.push(' ');
                continue;
            }
            if let Some(rpc) = line.strip_prefix("rpc ") {
                let name = rpc.split('(').next().unwrap().to_string();
                let roles = comment
                    .strip_prefix("Roles: ")
                    .unwrap_or_else(|| panic!("{file}: rpc {name} has no Roles: line"));
                let roles = roles.split(['.', '(']).next().unwrap();
                documented.insert(
                    name,
                    roles.split(',').map(|r| r.trim().to_string()).collect(),
                );
            }
            comment.clear();
        }
        let enforced: BTreeMap<String, BTreeSet<String>> = acl
            .methods
            .iter()
            .map(|(name, allow)| (name.to_string(), allow.iter().map(|a| a.name()).collect()))
            .collect();
        assert_eq!(documented, enforced, "{file}.proto against {}", acl.service);
    }
}
