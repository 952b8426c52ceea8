//! Revocation for every role, by serial number, and services that fail closed when their
//! revocation list is too old.

use std::time::Duration;

use tonic::Code;
use zkmesh_kit::ca::MeshCa;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_kit::identity::{Identity, Role};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

use crate::support::*;

fn outcome(r: Result<(), tonic::Status>) -> (Code, String) {
    r.map_or_else(
        |e| (e.code(), e.message().to_string()),
        |()| (Code::Ok, String::new()),
    )
}

/// Revocation is for every role, by serial number: a user's certificate and a service's (the
/// scheduler's, as a thief holding its key would use it) are revoked with `zkmesh ca revoke`,
/// and within the services' refresh every service refuses them, whatever they call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_of_any_role_is_refused_everywhere() {
    let sb = start(0).await;
    let c = sb.mesh.client.clone();
    let ca = MeshCa::load(&sb.mesh.dir.join("ca")).unwrap();
    let bob = ca
        .issue(
            &Identity::new(&ca.mesh, Role::User, "bob"),
            &[],
            Duration::from_secs(86400),
        )
        .unwrap();
    bob.write(&sb.mesh.dir, "bob").unwrap();
    let bob_tls = ClientTls {
        ca: ca.cert_pem.clone(),
        identity: Some((bob.cert_pem.clone(), bob.key_pem.clone())),
    };
    let read = |p: &str| std::fs::read_to_string(sb.mesh.dir.join(p)).unwrap();
    let thief = ClientTls {
        ca: ca.cert_pem.clone(),
        identity: Some((read("certs/scheduler.crt"), read("certs/scheduler.key"))),
    };
    let calls = |tls: ClientTls| {
        let c = c.clone();
        async move {
            let mut codes = Vec::new();
            let ledger = LedgerServiceClient::new(channel(&c.ledger, &tls, "ledger").unwrap())
                .get_balance(GetBalanceRequest {
                    account: "user/bob".into(),
                })
                .await;
            codes.push(outcome(ledger.map(|_| ())));
            let verifier = zkmesh_proto::verifier_service_client::VerifierServiceClient::new(
                channel(&c.verifier, &tls, "verifier").unwrap(),
            )
            .get_verifier_key(GetVerifierKeyRequest {})
            .await;
            codes.push(outcome(verifier.map(|_| ())));
            let scheduler =
                SchedulerServiceClient::new(channel(&c.scheduler, &tls, "scheduler").unwrap())
                    .get_task(GetTaskRequest {
                        task_id: "t-none".into(),
                    })
                    .await;
            codes.push(outcome(scheduler.map(|_| ())));
            let registry =
                RegistryServiceClient::new(channel(&c.registry, &tls, "registry").unwrap())
                    .get_node(GetNodeRequest {
                        node_id: "n-none".into(),
                    })
                    .await;
            codes.push(outcome(registry.map(|_| ())));
            codes
        }
    };
    // Before: served (or refused for the call's own reasons, never as revoked).
    for tls in [bob_tls.clone(), thief.clone()] {
        let codes = calls(tls).await;
        assert_eq!(codes[0].0, Code::Ok, "{codes:?}");
        assert!(!codes.iter().any(|c| c.1.contains("revoked")), "{codes:?}");
    }
    let config = sb.mesh.dir.join("client.toml");
    c.save(&config).unwrap();
    let revoke = |cert: std::path::PathBuf| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zkmesh"))
            .args(["--mesh", config.to_str().unwrap(), "ca", "revoke"])
            .arg(&cert)
            .args(["--reason", "key stolen"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("revoked certificate"));
    };
    // Bob first: refused by all four services. Then the scheduler's certificate: refused by
    // the others (the scheduler itself can no longer refresh its list with it, and fails
    // closed once the list is too old).
    let steps = [
        (sb.mesh.dir.join("bob.crt"), bob_tls, vec![0, 1, 2, 3]),
        (
            sb.mesh.dir.join("certs/scheduler.crt"),
            thief,
            vec![0, 1, 3],
        ),
    ];
    for (cert, tls, services) in steps {
        revoke(cert);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let codes = calls(tls.clone()).await;
            if services
                .iter()
                .all(|&i| codes[i].0 == Code::PermissionDenied && codes[i].1.contains("is revoked"))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still served: {codes:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The admin's own certificate still works.
    sb.api
        .admin_ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap();
}

/// A service that cannot refresh its revocation list fails closed: this ledger's registry is
/// unreachable, so its list was never fetched, and it refuses every call that needs a
/// certificate, saying why, while health checks still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_a_stale_revocation_list_fails_closed() {
    let sb = start(0).await;
    let dir = &sb.mesh.dir;
    let shutdown = zkmesh_kit::CancellationToken::new();
    let cut_off = another_ledger(
        &dir.join("cut-off"),
        zkmesh_kit::config::TlsFiles {
            ca: dir.join("ca/ca.crt"),
            cert: dir.join("certs/ledger.crt"),
            key: dir.join("certs/ledger.key"),
        },
        "https://127.0.0.1:1".into(),
        sb.mesh.client.verifier_public_key.clone().unwrap(),
        3,
        &shutdown,
    )
    .await;
    let endpoint = format!("https://127.0.0.1:{}", cut_off.addr.port());
    let admin = zkmesh_client::MeshClient::connect(&zkmesh_client::ClientConfig {
        ledger: endpoint.clone(),
        ..sb.mesh.client.clone()
    })
    .unwrap();
    // Never refreshed: refused from the start (a service that cannot reach the registry at
    // start does not trust an empty list).
    let refused = admin
        .admin_ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("revocation list"), "{refused:?}");
    let health = tonic_health::pb::health_client::HealthClient::new(
        channel(
            &endpoint,
            &ClientTls {
                ca: std::fs::read_to_string(dir.join("ca/ca.crt")).unwrap(),
                identity: None,
            },
            "ledger",
        )
        .unwrap(),
    )
    .check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // The mesh's own ledger, which reaches its registry, still serves.
    sb.api
        .admin_ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap();
    shutdown.cancel();
}
