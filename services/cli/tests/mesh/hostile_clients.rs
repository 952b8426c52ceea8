//! A hostile client beside an honest load: a thousand idle TLS connections without a
//! certificate from another loopback address and ten thousand calls to made-up methods, while
//! honest tasks run. Every honest task completes, the flood is held to its caps, and memory and
//! the metrics stay bounded. (`cargo run --release -p zkmesh-benches --bin loadgen -- --hostile`
//! measures the honest latency beside the same flood.)

use std::time::Duration;

use futures::StreamExt;
use zkmesh_benches::hostile::{idle_connections, made_up_calls};
use zkmesh_kit::client::{ClientTls, channel};

use crate::support::*;

/// This process's resident memory, in KiB (the whole embedded mesh lives in it).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_tasks_complete_beside_a_hostile_client() {
    let sb = start(2).await;
    let ca = std::fs::read_to_string(&sb.mesh.client.ca).unwrap();
    let scheduler = sb.mesh.scheduler.addr;
    let metrics_addr = sb.mesh.scheduler.metrics_addr.unwrap();
    // Warm up (modules compiled, channels open), then measure from here.
    let sha = zkmesh_guests::get("sha256").unwrap();
    run(&sb.api, &Job::new(sha.wasm, b"warm")).await.unwrap();
    let rss_before = rss_kib();

    let flood = {
        let (ca, endpoint) = (ca.clone(), sb.mesh.client.scheduler.clone());
        tokio::spawn(async move {
            let from = "127.0.0.2".parse().unwrap();
            let idle = idle_connections(&ca, from, scheduler, 1000, 64)
                .await
                .unwrap();
            let anonymous = ClientTls { ca, identity: None };
            let ch = channel(&endpoint, &anonymous, "scheduler").unwrap();
            let answered = made_up_calls(ch, "zkmesh.v1.SchedulerService", 10_000, 64).await;
            (idle, answered)
        })
    };
    let honest: Vec<_> = futures::stream::iter(0..40)
        .map(|i| {
            let api = &sb.api;
            async move {
                let input = format!("honest {i}");
                let (_, result) = run(api, &Job::new(sha.wasm, input.as_bytes()))
                    .await
                    .unwrap();
                (input, result)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let (idle, answered) = tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the flood ends within two minutes")
        .unwrap();
    for (input, result) in &honest {
        assert_verified(
            result,
            &zkmesh_guests::reference_output("sha256", input.as_bytes()).unwrap(),
        );
    }
    // The flood was held to the anonymous cap of its address; every made-up call was answered.
    let cap = zkmesh_kit::admission::Limits::default().max_anonymous_connections_per_address;
    assert!(idle.kept.len() <= cap as usize, "{} kept", idle.kept.len());
    assert_eq!(idle.kept.len() + idle.refused, 1000);
    // Every call ended, refused as a call to a method nobody serves. A few may end with a
    // transport error instead: HTTP/2's own guard closes a connection on which the server has
    // reset too many streams (its calls were refused before their bodies were read), and the
    // flooding client reconnects.
    assert_eq!(answered.values().sum::<usize>(), 10_000, "{answered:?}");
    let refused = answered.get("Unimplemented").copied().unwrap_or(0);
    assert!(refused >= 9_800, "{answered:?}");
    assert!(
        answered.keys().all(|k| k == "Unimplemented"
            || k == "Cancelled"
            || k.starts_with("Unknown: transport")),
        "{answered:?}"
    );
    let metrics = http_get(metrics_addr, "/metrics").await.unwrap();
    assert!(
        metrics.len() < 64 << 10,
        "metrics grew to {} bytes",
        metrics.len()
    );
    let open: f64 = metrics
        .lines()
        .find(|l| l.starts_with("zkmesh_connections_open"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("connections_open is exported");
    assert!(open <= 64.0 + cap as f64, "{open} connections open");
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 256,
        "memory grew by {grown_mib} MiB under the flood"
    );
    drop(idle);
    sb.mesh.stop().await;
}
