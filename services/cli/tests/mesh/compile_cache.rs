//! A worker's compile cache, seen through its Prometheus metrics: a module is compiled once, a
//! second task hits the in-memory cache, and a restarted worker loads it from disk, never
//! compiling it again.

use crate::support::*;
use std::time::Duration;

/// The value of metric `name` in the worker's exposition.
async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let text = http_get(addr, "/metrics").await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_compiles_a_module_once_and_loads_it_from_disk_after_a_restart() {
    let mut sb = start(1).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let expected = zkmesh_guests::reference_output("sha256", b"cached").unwrap();
    let addr = sb.mesh.workers[0].0.metrics_addr.expect("worker metrics");
    for _ in 0..2 {
        let (_, result) = run(&sb.api, &Job::new(sha.wasm, b"cached")).await.unwrap();
        assert_verified(&result, &expected);
    }
    assert_eq!(metric(addr, "zkmesh_sandbox_compiles").await, 1);
    assert!(metric(addr, "zkmesh_sandbox_cache_memory_hits").await >= 1);
    assert_eq!(metric(addr, "zkmesh_sandbox_cache_disk_hits").await, 0);
    assert_eq!(metric(addr, "zkmesh_sandbox_runs").await, 2);
    assert!(metric(addr, "zkmesh_worker_guest_cpu_microseconds_total").await > 0);

    // Restart the worker with the same data directory: the compiled module is on disk.
    let (handle, stop) = sb.mesh.workers.remove(0);
    stop.cancel();
    handle.task.await.unwrap().unwrap();
    sb.mesh.add_worker("worker-1", "operator-1").await.unwrap();
    sb.mesh
        .wait_for_workers(1, Duration::from_secs(30))
        .await
        .unwrap();
    let addr = sb.mesh.workers[0].0.metrics_addr.unwrap();
    let (_, result) = run(&sb.api, &Job::new(sha.wasm, b"cached")).await.unwrap();
    assert_verified(&result, &expected);
    assert_eq!(metric(addr, "zkmesh_sandbox_compiles").await, 0);
    assert_eq!(metric(addr, "zkmesh_sandbox_cache_disk_hits").await, 1);
    assert_eq!(metric(addr, "zkmesh_sandbox_cache_rejected").await, 0);
    sb.mesh.stop().await;
}
