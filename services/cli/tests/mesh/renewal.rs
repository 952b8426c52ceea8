//! Workers renew their short-lived certificates before they expire and keep working.

use std::time::Duration;

use zkmesh_client::mesh::{LocalMesh, MeshOptions};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_renew_certificates_and_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = MeshOptions::new(dir.path());
    options.workers = 1;
    options.heartbeat_secs = 1;
    options.node_certificate_lifetime_secs = 6;
    let mesh = LocalMesh::start(options).await.unwrap();
    mesh.wait_for_workers(1, Duration::from_secs(20))
        .await
        .unwrap();
    let api = zkmesh_client::MeshClient::connect(&mesh.client).unwrap();
    let cert_path = dir.path().join("workers/worker-1/tls.crt");
    let first = std::fs::read_to_string(&cert_path).unwrap();
    let first_expiry = zkmesh_kit::identity::not_after_ms(&first).unwrap();

    // Past the first certificate's expiry, the worker holds a newer one and still serves.
    let wait_ms = (first_expiry - zkmesh_kit::now_ms() + 1500).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    let current = std::fs::read_to_string(&cert_path).unwrap();
    assert_ne!(current, first, "the certificate was not renewed");
    assert!(zkmesh_kit::identity::not_after_ms(&current).unwrap() > zkmesh_kit::now_ms());
    mesh.wait_for_workers(1, Duration::from_secs(10))
        .await
        .unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let (_, result) = run(&api, &Job::new(sha.wasm, b"renewed")).await.unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"renewed").unwrap(),
    );
    mesh.stop().await;
}

/// When the registry's record of a node's certificate changes under it (an admin re-approved
/// the node, which signs its last request anew; a registry restored from a backup), the node
/// is told its certificate is not the one on record, fetches that one (it fits its key) and
/// carries on, instead of stopping as if revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fetches_the_certificate_the_registry_has_on_record() {
    let sb = start(1).await;
    let node_id = sb.mesh.workers[0].0.node_id.clone();
    let db = format!("sqlite://{}", sb.mesh.dir.join("registry.db").display());
    let pool = zkmesh_kit::db::connect(&db).await.unwrap();
    let csr: String = sqlx::query_scalar("SELECT csr_pem FROM nodes WHERE node_id = $1")
        .bind(&node_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let issuer = zkmesh_kit::ca::MeshCa::load(&sb.mesh.dir.join("registry-ca")).unwrap();
    let identity = zkmesh_kit::identity::Identity::new(
        &issuer.mesh,
        zkmesh_kit::identity::Role::Node,
        &node_id,
    );
    let resigned = issuer
        .sign_csr(&csr, &identity, Duration::from_secs(3600))
        .unwrap();
    let fingerprint = zkmesh_kit::identity::fingerprint_of_pem(&resigned).unwrap();
    sqlx::query(
        "UPDATE nodes SET certificate_pem = $1, certificate_sha256 = $2, previous_certificate_sha256 = '' WHERE node_id = $3",
    )
    .bind(&resigned)
    .bind(&fingerprint)
    .bind(&node_id)
    .execute(&pool)
    .await
    .unwrap();
    let cert_path = sb.mesh.dir.join("workers/worker-1/tls.crt");
    let mut fetched = false;
    for _ in 0..100 {
        if std::fs::read_to_string(&cert_path).unwrap() == resigned {
            fetched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fetched, "the worker took the certificate on record");
    sb.mesh
        .wait_for_workers(1, Duration::from_secs(20))
        .await
        .unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let (_, result) = run(&sb.api, &Job::new(sha.wasm, b"on record"))
        .await
        .unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"on record").unwrap(),
    );
    assert_eq!(result.receipts[0].node_id, node_id);
}
