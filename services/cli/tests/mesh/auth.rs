//! Callers with no certificate, a certificate from another CA, the wrong role, or a revoked
//! node certificate are refused with UNAUTHENTICATED or PERMISSION_DENIED, and nothing changes
//! in any database.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use zkmesh_kit::ca::MeshCa;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_kit::identity::{Identity, Role};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::scheduler_service_client::SchedulerServiceClient;
use zkmesh_proto::*;

use crate::support::*;

struct As {
    registry: RegistryServiceClient<Channel>,
    scheduler: SchedulerServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
}

fn as_caller(sb: &Sandbox, tls: &ClientTls) -> As {
    let c = &sb.mesh.client;
    As {
        registry: RegistryServiceClient::new(channel(&c.registry, tls, "registry").unwrap()),
        scheduler: SchedulerServiceClient::new(channel(&c.scheduler, tls, "scheduler").unwrap()),
        ledger: LedgerServiceClient::new(channel(&c.ledger, tls, "ledger").unwrap()),
    }
}

/// Every row of every service's database, minus heartbeat times.
async fn snapshot(sb: &Sandbox) -> Vec<String> {
    let mut all = Vec::new();
    for name in ["registry", "scheduler", "ledger", "verifier"] {
        let url = format!(
            "sqlite://{}",
            sb.mesh.dir.join(format!("{name}.db")).display()
        );
        let pool = zkmesh_kit::db::connect(&url).await.unwrap();
        let rows = zkmesh_kit::db::snapshot(&pool, &["last_heartbeat_at_ms"])
            .await
            .unwrap();
        all.extend(rows.into_iter().map(|r| format!("{name}.{r}")));
        pool.close().await;
    }
    all
}

/// Each state-changing call a caller might try; returns the status codes it got.
async fn attempt_everything(
    who: &mut As,
    node_id: &str,
    module_hash: &str,
) -> Vec<(&'static str, Code)> {
    let mut codes = Vec::new();
    let submit = SubmitTaskRequest {
        module_hash: module_hash.to_string(),
        input: b"x".to_vec(),
        policy: Some(policy("receipt")),
        ..Default::default()
    };
    let code =
        |r: Result<_, tonic::Status>| r.err().map(|e: tonic::Status| e.code()).unwrap_or(Code::Ok);
    codes.push((
        "submit",
        code(who.scheduler.submit_task(submit).await.map(|_| ())),
    ));
    codes.push((
        "upload",
        code(
            zkmesh_client::upload(
                &mut who.scheduler,
                "x",
                zkmesh_guests::get("sha256").unwrap().wasm,
            )
            .await
            .map(|_| ()),
        ),
    ));
    codes.push((
        "mint",
        code(
            who.ledger
                .mint(MintRequest {
                    request_id: String::new(),
                    account: "user/mallory".into(),
                    amount: 5,
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "capture",
        code(
            who.ledger
                .capture(CaptureRequest {
                    task_id: "t-x".into(),
                    settlement: None,
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "approve",
        code(
            who.registry
                .approve_node(ApproveNodeRequest {
                    node_id: node_id.into(),
                    slots: 0,
                    operator: String::new(),
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "revoke",
        code(
            who.registry
                .revoke_node(RevokeNodeRequest {
                    node_id: node_id.into(),
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes.push((
        "token",
        code(
            who.registry
                .create_join_token(CreateJoinTokenRequest {
                    pre_approved: true,
                    ttl_secs: 60,
                    max_uses: 1,
                    operator: "operator-x".into(),
                    slots: 0,
                })
                .await
                .map(|_| ()),
        ),
    ));
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_callers_change_nothing() {
    let sb = start(1).await;
    let ca_pem = std::fs::read_to_string(&sb.mesh.client.ca).unwrap();
    let node_id = sb.mesh.workers[0].0.node_id.clone();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let module = zkmesh_client::upload(&mut sb.api.scheduler().unwrap(), "sha", sha.wasm)
        .await
        .unwrap();
    let before = snapshot(&sb).await;

    // No client certificate at all.
    let anonymous = ClientTls {
        ca: ca_pem.clone(),
        identity: None,
    };
    for (call, code) in attempt_everything(
        &mut as_caller(&sb, &anonymous),
        &node_id,
        &module.module_hash,
    )
    .await
    {
        assert_eq!(code, Code::Unauthenticated, "anonymous {call}");
    }

    // A certificate for the same mesh name, from another CA.
    let foreign_ca = MeshCa::generate("local").unwrap();
    let forged = foreign_ca
        .issue(
            &Identity::new("local", Role::Admin, "admin"),
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    let foreign = ClientTls {
        ca: ca_pem.clone(),
        identity: Some((forged.cert_pem, forged.key_pem)),
    };
    for (call, code) in
        attempt_everything(&mut as_caller(&sb, &foreign), &node_id, &module.module_hash).await
    {
        assert_eq!(code, Code::Unauthenticated, "foreign CA {call}");
    }

    // The wrong role: a node may not submit, mint or approve; a user may not mint or approve.
    let node_dir = sb.mesh.dir.join("workers/worker-1");
    let node_tls = ClientTls {
        ca: ca_pem.clone(),
        identity: Some((
            std::fs::read_to_string(node_dir.join("tls.crt")).unwrap(),
            std::fs::read_to_string(node_dir.join("tls.key")).unwrap(),
        )),
    };
    for (call, code) in attempt_everything(
        &mut as_caller(&sb, &node_tls),
        &node_id,
        &module.module_hash,
    )
    .await
    {
        assert_eq!(code, Code::PermissionDenied, "node {call}");
    }
    let user_tls = ClientTls {
        ca: ca_pem.clone(),
        identity: Some((
            std::fs::read_to_string(&sb.mesh.client.cert).unwrap(),
            std::fs::read_to_string(&sb.mesh.client.key).unwrap(),
        )),
    };
    // (The user may upload and submit: an already-present module and a missing one leave
    // nothing to change.)
    let missing = "00".repeat(32);
    for (call, code) in attempt_everything(&mut as_caller(&sb, &user_tls), &node_id, &missing).await
    {
        let expected = match call {
            "upload" => Code::Ok,
            "submit" => Code::NotFound,
            _ => Code::PermissionDenied,
        };
        assert_eq!(code, expected, "user {call}");
    }
    // A user cannot read another account either.
    let err = as_caller(&sb, &user_tls)
        .ledger
        .get_balance(GetBalanceRequest {
            account: "operator/operator-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        snapshot(&sb).await,
        before,
        "a refused call changed a database"
    );

    // A revoked node is refused everywhere within seconds.
    sb.api
        .admin_registry()
        .unwrap()
        .revoke_node(RevokeNodeRequest {
            node_id: node_id.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let revoked_snapshot = snapshot(&sb).await;
    let mut node = as_caller(&sb, &node_tls);
    let heartbeat = node
        .registry
        .heartbeat(HeartbeatRequest { running_tasks: 0 })
        .await
        .unwrap_err();
    assert_eq!(heartbeat.code(), Code::PermissionDenied);
    let key = node
        .ledger
        .get_ledger_key(GetLedgerKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(key.code(), Code::PermissionDenied);
    let fetch = node
        .scheduler
        .fetch_module(FetchModuleRequest {
            module_hash: module.module_hash.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(fetch.code(), Code::PermissionDenied);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WorkRequest {
        kind: Some(work_request::Kind::Hello(WorkerHello {
            slots: 1,
            version: "t".into(),
        })),
    })
    .await
    .unwrap();
    let work = node
        .scheduler
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(work.code(), Code::PermissionDenied);
    assert_eq!(
        snapshot(&sb).await,
        revoked_snapshot,
        "a revoked node changed a database"
    );
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

/// The CLI tells a refusal (exit 2: here a user's certificate where an admin's is needed) from
/// a mesh it cannot reach (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_2_when_refused_and_3_when_the_mesh_is_unreachable() {
    let sb = start(0).await;
    let cli = |config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zkmesh"))
            .args(["--mesh", config.to_str().unwrap()])
            .args(["ledger", "mint", "user/someone", "5"])
            .output()
            .unwrap()
    };
    let mut user_as_admin = sb.mesh.client.clone();
    user_as_admin.admin_cert = Some(user_as_admin.cert.clone());
    user_as_admin.admin_key = Some(user_as_admin.key.clone());
    let config = sb.mesh.dir.join("user-as-admin.toml");
    user_as_admin.save(&config).unwrap();
    let out = cli(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");

    let mut gone = sb.mesh.client.clone();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    gone.ledger = format!("https://127.0.0.1:{port}");
    let config = sb.mesh.dir.join("gone.toml");
    gone.save(&config).unwrap();
    let out = cli(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
}

/// A stolen service key must not pass for another service. Here the client's config sends its
/// ledger calls to the verifier and its scheduler calls to the registry (as a thief holding
/// those services' keys would answer them): the mesh CA signed both certificates, but neither
/// names the service asked for, so the handshake fails, saying whom it found, and no call is
/// sent. The honest config still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_services_certificate_is_refused() {
    let sb = start(0).await;
    let mut swapped = sb.mesh.client.clone();
    swapped.ledger = swapped.verifier.clone();
    swapped.scheduler = swapped.registry.clone();
    let api = zkmesh_client::MeshClient::connect(&swapped).unwrap();
    let refused = api
        .admin_ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let why = format!("{refused:?}");
    assert!(
        why.contains("service/verifier") && why.contains("not spiffe://"),
        "{why}"
    );
    let refused = api
        .scheduler()
        .unwrap()
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        format!("{refused:?}").contains("service/registry"),
        "{refused:?}"
    );
    sb.api
        .admin_ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap();
}

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
    let cut_off = zkmesh_ledger::start(
        zkmesh_ledger::LedgerConfig {
            server: zkmesh_kit::config::ServerConfig {
                listen: Some("127.0.0.1:0".into()),
                metrics_listen: None,
                database_url: format!("sqlite://{}", dir.join("cut-off.db").display()),
                grace_secs: 1,
                tls: zkmesh_kit::config::TlsFiles {
                    ca: dir.join("ca/ca.crt"),
                    cert: dir.join("certs/ledger.crt"),
                    key: dir.join("certs/ledger.key"),
                },
                max_revocation_age_secs: 3,
            },
            key_file: dir.join("cut-off.key"),
            registry_endpoint: "https://127.0.0.1:1".into(),
            verifier_keys: vec![sb.mesh.client.verifier_public_key.clone().unwrap()],
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
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

/// The registry's host holds only the node issuer. A thief with its key signs certificates of
/// its own making, past the checks our CA code makes: a node's works (pending approval, as
/// any node), but an admin's is refused by every service, and a service's cannot answer for a
/// service to a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_node_issuer_mints_nodes_only() {
    let sb = start(0).await;
    let c = sb.mesh.client.clone();
    let dir = sb.mesh.dir.join("registry-ca");
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    let (issuer_pem, issuer_key) = (read("issuer.crt"), read("issuer.key"));
    assert!(
        !std::fs::read_to_string(sb.mesh.dir.join("registry-ca/ca.crt"))
            .unwrap()
            .is_empty()
    );
    assert!(
        !dir.join("ca.key").exists(),
        "the registry's directory holds no root key"
    );
    let key = rcgen::KeyPair::from_pem(&issuer_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, &key).unwrap();
    let forge = |uri: &str, server: bool| {
        let leaf = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            )));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&leaf, &issuer).unwrap();
        (format!("{}{issuer_pem}", cert.pem()), leaf.serialize_pem())
    };
    let ca = std::fs::read_to_string(&c.ca).unwrap();
    let as_tls = |(cert, key): (String, String)| ClientTls {
        ca: ca.clone(),
        identity: Some((cert, key)),
    };
    // An admin certificate from the node issuer: refused, minting nothing.
    let admin = as_tls(forge("spiffe://local/admin/mallory", false));
    let refused = LedgerServiceClient::new(channel(&c.ledger, &admin, "ledger").unwrap())
        .mint(MintRequest {
            account: "user/mallory".into(),
            amount: 1_000_000,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("issued by the mesh CA itself"),
        "{refused:?}"
    );
    let refused = RegistryServiceClient::new(channel(&c.registry, &admin, "registry").unwrap())
        .list_nodes(ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // A node certificate from it is a node's (the role ACLs apply as usual).
    let node = as_tls(forge("spiffe://local/node/n-forged", false));
    let as_node = LedgerServiceClient::new(channel(&c.ledger, &node, "ledger").unwrap())
        .mint(MintRequest {
            account: "user/mallory".into(),
            amount: 1,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(as_node.code(), Code::PermissionDenied, "{as_node:?}");
    // A service certificate from it, served as the ledger: the client refuses the handshake.
    let (cert, key) = forge("spiffe://local/service/ledger", true);
    let dir2 = tempfile::tempdir().unwrap();
    for (name, text) in [("ca.crt", &ca), ("fake.crt", &cert), ("fake.key", &key)] {
        std::fs::write(dir2.path().join(name), text).unwrap();
    }
    let shutdown = zkmesh_kit::CancellationToken::new();
    let fake = zkmesh_ledger::start(
        zkmesh_ledger::LedgerConfig {
            server: zkmesh_kit::config::ServerConfig {
                listen: Some("127.0.0.1:0".into()),
                metrics_listen: None,
                database_url: format!("sqlite://{}", dir2.path().join("fake.db").display()),
                grace_secs: 1,
                tls: zkmesh_kit::config::TlsFiles {
                    ca: dir2.path().join("ca.crt"),
                    cert: dir2.path().join("fake.crt"),
                    key: dir2.path().join("fake.key"),
                },
                max_revocation_age_secs: 30,
            },
            key_file: dir2.path().join("fake-ledger.key"),
            registry_endpoint: c.registry.clone(),
            verifier_keys: vec![c.verifier_public_key.clone().unwrap()],
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let swapped = zkmesh_client::ClientConfig {
        ledger: format!("https://127.0.0.1:{}", fake.addr.port()),
        ..c.clone()
    };
    let refused = zkmesh_client::MeshClient::connect(&swapped)
        .unwrap()
        .admin_ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        format!("{refused:?}").contains("not issued by the mesh CA itself"),
        "{refused:?}"
    );
    shutdown.cancel();
}
