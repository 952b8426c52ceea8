//! Who may certify whom, and whom a client reaches: a server must be the service asked for,
//! and the registry's node issuer certifies nodes only.

use tonic::Code;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::*;

use crate::support::*;

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

/// The registry's host holds only the node issuer. A thief with its key signs certificates of
/// its own making, past the checks our CA code makes: a node's works (pending approval, as
/// any node), but an admin's is refused by every service, and a service's cannot answer for a
/// service to a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_node_issuer_mints_nodes_only() {
    let sb = start(1).await;
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
    let forge_as = |uri: &str, server: bool, serial: Option<Vec<u8>>| {
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
        params.serial_number = serial.map(|s| rcgen::SerialNumber::from_slice(&s));
        let cert = params.signed_by(&leaf, &issuer).unwrap();
        (format!("{}{issuer_pem}", cert.pem()), leaf.serialize_pem())
    };
    let forge = |uri: &str, server: bool| forge_as(uri, server, None);
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
    // A certificate it mints for an approved node's id is not that node: the registry and the
    // scheduler serve a node only under a certificate the registry issued it. No heartbeat, no
    // renewal into a registered certificate, no Work stream (so none of the node's tasks).
    // It even carries the node's own serial number (an issuer picks serials as it likes).
    let victim = sb.mesh.workers[0].0.node_id.clone();
    let victim_cert =
        std::fs::read_to_string(sb.mesh.dir.join("workers/worker-1/tls.crt")).unwrap();
    let serial = hex::decode(zkmesh_kit::identity::serial_of_pem(&victim_cert).unwrap()).unwrap();
    let twin_cert = forge_as(
        &format!("spiffe://local/node/{victim}"),
        false,
        Some(serial.clone()),
    );
    assert_eq!(
        zkmesh_kit::identity::serial_of_pem(&twin_cert.0),
        Some(hex::encode(&serial))
    );
    let twin = as_tls(twin_cert);
    let mut registry = RegistryServiceClient::new(channel(&c.registry, &twin, "registry").unwrap());
    let not_it = "not one the registry issued to node";
    let refused = registry
        .heartbeat(HeartbeatRequest { running_tasks: 0 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(not_it), "{refused:?}");
    let (_, csr) = zkmesh_kit::ca::generate_csr("twin").unwrap();
    let refused = registry
        .renew_certificate(RenewCertificateRequest { csr_pem: csr })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(not_it), "{refused:?}");
    let (up, rx) = tokio::sync::mpsc::channel(4);
    up.send(WorkRequest {
        kind: Some(work_request::Kind::Hello(WorkerHello {
            slots: 1,
            version: "twin".into(),
        })),
    })
    .await
    .unwrap();
    let mut scheduler = zkmesh_proto::scheduler_service_client::SchedulerServiceClient::new(
        channel(&c.scheduler, &twin, "scheduler").unwrap(),
    );
    let refused = match scheduler
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(not_it), "{refused:?}");
    // The node itself is still served: it runs a task.
    let sha = zkmesh_guests::get("sha256").unwrap();
    let (_, result) = run(&sb.api, &Job::new(sha.wasm, b"still me"))
        .await
        .unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"still me").unwrap(),
    );
    assert_eq!(result.receipts[0].node_id, victim);
    // A service certificate from it, served as the ledger: the client refuses the handshake.
    let (cert, key) = forge("spiffe://local/service/ledger", true);
    let dir2 = tempfile::tempdir().unwrap();
    for (name, text) in [("ca.crt", &ca), ("fake.crt", &cert), ("fake.key", &key)] {
        std::fs::write(dir2.path().join(name), text).unwrap();
    }
    let shutdown = zkmesh_kit::CancellationToken::new();
    let fake = another_ledger(
        &dir2.path().join("fake"),
        zkmesh_kit::config::TlsFiles {
            ca: dir2.path().join("ca.crt"),
            cert: dir2.path().join("fake.crt"),
            key: dir2.path().join("fake.key"),
        },
        c.registry.clone(),
        c.verifier_public_key.clone().unwrap(),
        30,
        &shutdown,
    )
    .await;
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

/// A node reads a module's bytes only while it holds a lease on a task of that module: an
/// approved node cannot download user code it was not given to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_only_modules_it_was_given_to_run() {
    let sb = start(0).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let module = zkmesh_client::upload(&mut s, "sha256", sha.wasm)
        .await
        .unwrap()
        .module_hash;
    let mut fake = crate::fake_node::enroll(&sb, "op-curious", 1).await;
    let refused = fake
        .scheduler
        .fetch_module(FetchModuleRequest {
            module_hash: module.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("holds no lease"), "{refused:?}");
    // Given a task of it, the node reads it.
    let task = submit(&mut s, &Job::new(sha.wasm, b"yours to run"))
        .await
        .unwrap();
    let assigned = loop {
        match fake.down.message().await.unwrap().unwrap().kind {
            Some(work_response::Kind::Assignment(a)) => break a,
            _ => continue,
        }
    };
    assert_eq!(assigned.task_id, task.task_id);
    let mut chunks = fake
        .scheduler
        .fetch_module(FetchModuleRequest {
            module_hash: module,
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(c) = chunks.message().await.unwrap() {
        bytes.extend(c.chunk);
    }
    assert_eq!(bytes, sha.wasm);
}
