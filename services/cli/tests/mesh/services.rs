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
        let ch = channel(endpoint, &tls).unwrap();
        let status = HealthClient::new(ch.clone())
            .check(HealthCheckRequest {
                service: name.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{name}");

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("{name}: unexpected reflection answer");
        };
        assert!(
            list.service.iter().any(|s| s.name == name),
            "{name}: {list:?}"
        );

        let metrics = zkmesh_cli::client::http_get(serving.metrics_addr.unwrap(), "/metrics")
            .await
            .unwrap();
        assert!(
            metrics.contains("zkmesh_rpc_requests_total"),
            "{name}: {metrics}"
        );
        assert!(metrics.contains("service=\""), "{name}");
    }

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
