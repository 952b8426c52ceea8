//! A worker killed in the middle of a task: the task completes on another worker, and the
//! ledger shows exactly one capture for it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;
use zkmesh_proto::*;

/// Starts `zkmesh worker` as its own process, configured through the environment.
fn spawn_worker(config: &zkmesh_worker::WorkerConfig) -> Child {
    let path = |p: &std::path::Path| p.display().to_string();
    Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .arg("worker")
        .env_clear()
        .env("ZKMESH_WORKER_DATA_DIR", path(&config.data_dir))
        .env("ZKMESH_WORKER_REGISTRY_ENDPOINT", &config.registry_endpoint)
        .env(
            "ZKMESH_WORKER_SCHEDULER_ENDPOINT",
            &config.scheduler_endpoint,
        )
        .env("ZKMESH_WORKER_CA_CERT", path(&config.ca_cert))
        .env(
            "ZKMESH_WORKER_JOIN_TOKEN",
            config.join_token.clone().unwrap(),
        )
        .env("ZKMESH_WORKER_NAME", &config.name)
        .env("ZKMESH_WORKER_SLOTS", "1")
        .env("ZKMESH_WORKER_HEARTBEAT_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zkmesh worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_task_completes_elsewhere_with_one_capture() {
    let mut sb = start(0).await;
    let token = sb.mesh.join_token("operator-victim", 1).await.unwrap();
    let config = sb.mesh.worker_config("victim", Some(token));
    let mut victim = spawn_worker(&config);
    sb.mesh
        .wait_for_workers(1, Duration::from_secs(30))
        .await
        .unwrap();

    // Long enough (seconds) that the kill lands mid-run.
    let collatz = zkmesh_guests::get("collatz").unwrap();
    let input = b"3000000";
    let mut s = sb.api.scheduler().unwrap();
    let job = Job {
        fuel: 500_000_000_000,
        timeout_secs: 120,
        ..Job::new(collatz.wasm, input)
    };
    let task = submit(&mut s, &job).await.unwrap();
    let mut events = watch(&mut s, &task.task_id, 0).await;
    let victim_node = loop {
        let e = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .expect("task starts")
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        if e.state() == TaskState::Running {
            break e.node_id.clone();
        }
    };
    victim.kill().unwrap();
    victim.wait().unwrap();
    let rescuer = sb
        .mesh
        .add_worker("rescuer", "operator-rescuer")
        .await
        .unwrap();

    let result = tokio::time::timeout(
        Duration::from_secs(90),
        zkmesh_client::wait(&mut s, &task.task_id, |_| {}),
    )
    .await
    .expect("task finishes on the rescuer")
    .unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("collatz", input).unwrap(),
    );
    assert_eq!(result.receipts.len(), 1);
    assert_eq!(result.receipts[0].node_id, rescuer);
    assert_ne!(rescuer, victim_node);

    let events = history(&mut s, &task.task_id).await;
    let states: Vec<TaskState> = events.iter().map(|e| e.state()).collect();
    assert!(states.contains(&TaskState::Expired), "{states:?}");
    assert_eq!(states.last(), Some(&TaskState::Settled));
    // A watch resumed after an event gets exactly the events after it, then ends; resumed
    // after the last, nothing.
    let seqs = |events: &[TaskEvent]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let resumed = history_after(&mut s, &task.task_id, events[1].seq).await;
    assert_eq!(seqs(&resumed), seqs(&events[2..]));
    let last = events.last().unwrap().seq;
    assert!(history_after(&mut s, &task.task_id, last).await.is_empty());

    let entries = sb
        .api
        .admin_ledger()
        .unwrap()
        .history(HistoryRequest {
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let kind = |e: &JournalEntry| JournalEntryKind::short_name_of(e.kind);
    let count = |k: &str| entries.iter().filter(|e| kind(e) == k).count();
    assert_eq!(count("hold"), 1, "{entries:?}");
    assert_eq!(count("pay"), 1, "{entries:?}");
    assert_eq!(count("refund"), 1, "{entries:?}");
    let pay = entries.iter().find(|e| kind(e) == "pay").unwrap();
    assert_eq!(pay.account, "operator/operator-rescuer");
    assert_eq!(pay.amount, result.credits_charged);
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}
