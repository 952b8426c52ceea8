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
