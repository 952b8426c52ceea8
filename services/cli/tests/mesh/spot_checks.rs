//! Spot checks of receipt-policy results, against real services: a result held back and re-run
//! by a node of another operator; a disagreement decided by a third operator, so a lying node
//! is caught whether it ran the task or checked it, and an honest one is never rejected for a
//! liar's word; one run paid either way; every verdict in the nodes' records
//! (`ListNodeRecords`, `zkmesh node list --json`).

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use zkmesh_proto::*;

use crate::support::*;

/// A node of `operator` that answers every assignment with a made-up output, correctly signed.
/// With a `gate`, it holds each report until the gate opens (heartbeating its lease meanwhile);
/// each assignment's task id goes to `assigned`.
async fn start_liar(
    sb: &Sandbox,
    operator: &str,
    gate: Option<watch::Receiver<bool>>,
    assigned: mpsc::UnboundedSender<String>,
) -> String {
    start_fake(sb, operator, gate, assigned, false).await
}

/// [`start_liar`], or with `time_out` a node that says every run timed out (correctly signed).
async fn start_fake(
    sb: &Sandbox,
    operator: &str,
    gate: Option<watch::Receiver<bool>>,
    assigned: mpsc::UnboundedSender<String>,
    time_out: bool,
) -> String {
    let fake = crate::fake_node::enroll(sb, operator, 1).await;
    let (tx, mut down, key) = (fake.up, fake.down, fake.receipt_key);
    let node_id = fake.node_id.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = down.message().await {
            let Some(work_response::Kind::Assignment(a)) = msg.kind else {
                continue;
            };
            let _ = assigned.send(a.task_id.clone());
            let (tx, key, node_id, gate) = (tx.clone(), key.clone(), node_id.clone(), gate.clone());
            tokio::spawn(async move {
                if let Some(mut gate) = gate {
                    while !*gate.borrow() {
                        let beat = WorkRequest {
                            kind: Some(work_request::Kind::Heartbeat(WorkerHeartbeat {
                                running_attempt_ids: vec![a.attempt_id.clone()],
                            })),
                        };
                        let _ = tx.send(beat).await;
                        let _ =
                            tokio::time::timeout(Duration::from_millis(500), gate.changed()).await;
                    }
                }
                let mut report =
                    crate::fake_node::signed_report(&a, &node_id, &key, b"not the hash".to_vec());
                if time_out {
                    report = crate::fake_node::signed_report(&a, &node_id, &key, Vec::new());
                    let receipt = report.receipt.as_mut().unwrap();
                    receipt.exit = ExitKind::Timeout as i32;
                    zkmesh_kit::receipt::sign(receipt, &key).unwrap();
                    report.exit = ExitKind::Timeout as i32;
                    report.exit_message = "timed out".into();
                }
                let _ = tx
                    .send(WorkRequest {
                        kind: Some(work_request::Kind::Report(report)),
                    })
                    .await;
            });
        }
    });
    fake.node_id
}

async fn balance(sb: &Sandbox, operator: &str) -> u64 {
    sb.api
        .admin_ledger()
        .unwrap()
        .get_balance(GetBalanceRequest {
            account: format!("operator/{operator}"),
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .map_or(0, |a| a.balance)
}

/// Each node's record, from the scheduler.
async fn records(sb: &Sandbox) -> std::collections::HashMap<String, NodeRecord> {
    zkmesh_kit::lists::all_node_records(&sb.api.admin_scheduler().unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.node_id.clone(), r))
        .collect()
}

fn record(
    verified: u64,
    rejected: u64,
    spot_checks: u64,
    spot_failures: u64,
) -> (u64, u64, u64, u64) {
    (verified, rejected, spot_checks, spot_failures)
}

fn counts(r: Option<&NodeRecord>) -> (u64, u64, u64, u64) {
    let r = r.cloned().unwrap_or_default();
    (r.verified, r.rejected, r.spot_checks, r.spot_failures)
}

/// Waits (at most two minutes) for the task's end.
async fn finish(sb: &Sandbox, task_id: &str) -> TaskResult {
    let mut s = sb.api.scheduler().unwrap();
    tokio::time::timeout(
        Duration::from_secs(120),
        zkmesh_client::wait(&mut s, task_id, |_| {}),
    )
    .await
    .expect("the task ends within two minutes")
    .unwrap()
}

/// Honest results checked by a liar: the two disagree, a third operator's node decides, and
/// the honest result stands and is paid (one run, to the node that ran it); the liar is
/// rejected, unpaid, and its record says so. Which node checks is drawn at random (two honest
/// operators and the liar), so tasks run until the liar has been drawn once; until then two
/// honest operators agree at once. Caught, the liar's record is no longer clean and clean
/// nodes check before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_checker_cannot_get_an_honest_result_rejected() {
    let mut sb = start_with(0, |o| o.spot_check_rate = Some(1.0)).await;
    let honest_a = sb.mesh.add_worker("honest-a", "op-a").await.unwrap();
    let honest_b = sb.mesh.add_worker("honest-b", "op-b").await.unwrap();
    let (assigned, mut liar_tasks) = mpsc::unbounded_channel();
    // One slot against the honest nodes' two: the liar never runs a task first, only checks.
    let liar = start_liar(&sb, "op-liar", None, assigned).await;
    sb.mesh
        .wait_for_workers(3, Duration::from_secs(20))
        .await
        .unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let mut tasks = 0;
    let mut caught = false;
    while !caught && tasks < 24 {
        let input = format!("checked {tasks}");
        let before = (balance(&sb, "op-a").await, balance(&sb, "op-b").await);
        let task = submit(&mut s, &Job::new(sha.wasm, input.as_bytes()))
            .await
            .unwrap();
        let result = finish(&sb, &task.task_id).await;
        tasks += 1;
        assert_verified(
            &result,
            &zkmesh_guests::reference_output("sha256", input.as_bytes()).unwrap(),
        );
        let signers: Vec<&str> = result.receipts.iter().map(|r| r.node_id.as_str()).collect();
        assert_eq!(signers.len(), 2, "{signers:?}");
        assert!(signers.contains(&honest_a.as_str()) && signers.contains(&honest_b.as_str()));
        // One run is paid, to one honest operator: the node that ran it.
        let one_run = zkmesh_kit::settlement::cost(result.fuel_used, 1000);
        assert_eq!(result.credits_charged, one_run);
        let after = (balance(&sb, "op-a").await, balance(&sb, "op-b").await);
        let gained = (after.0 - before.0, after.1 - before.1);
        assert!(
            gained == (one_run, 0) || gained == (0, one_run),
            "{gained:?}"
        );
        caught = liar_tasks.try_recv().is_ok();
        let agreed = if caught {
            "spot-checked: 2 of 3"
        } else {
            "spot-checked: 2 of 2"
        };
        assert!(
            result.verdict_reason.contains(agreed),
            "{}",
            result.verdict_reason
        );
    }
    assert!(caught, "the liar was never drawn to check in {tasks} tasks");
    assert_eq!(balance(&sb, "op-liar").await, 0);

    // Its record no longer clean, the liar is not drawn while a clean node can check.
    let task = submit(&mut s, &Job::new(sha.wasm, b"after")).await.unwrap();
    let result = finish(&sb, &task.task_id).await;
    tasks += 1;
    assert!(
        result.verdict_reason.contains("spot-checked: 2 of 2"),
        "{}",
        result.verdict_reason
    );
    assert!(liar_tasks.try_recv().is_err(), "the liar got no more work");

    let records = records(&sb).await;
    assert_eq!(counts(records.get(&liar)), record(0, 1, 1, 1));
    assert_eq!(counts(records.get(&honest_a)), record(tasks, 0, tasks, 0));
    assert_eq!(counts(records.get(&honest_b)), record(tasks, 0, tasks, 0));
    // The same, as `zkmesh node list --json` shows it.
    let config = sb.mesh.dir.join("client.toml");
    sb.mesh.client.save(&config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args(["--mesh", config.to_str().unwrap(), "node", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let liar_row = nodes
        .iter()
        .find(|n| n["node_id"] == liar.as_str())
        .expect("the liar is listed");
    assert_eq!(liar_row["operator"], "op-liar");
    assert_eq!(liar_row["verified"], 0);
    assert_eq!(liar_row["rejected"], 1);
    assert_eq!(liar_row["spot_checks"], 1);
    assert_eq!(liar_row["spot_failures"], 1);
    let a_row = nodes
        .iter()
        .find(|n| n["node_id"] == honest_a.as_str())
        .unwrap();
    assert_eq!(
        (
            &a_row["verified"],
            &a_row["spot_checks"],
            &a_row["spot_failures"]
        ),
        (
            &serde_json::json!(tasks),
            &serde_json::json!(tasks),
            &serde_json::json!(0)
        )
    );
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

/// A liar runs the task (it is the only node when the task comes), and its result is checked
/// by an honest node: they disagree, a third operator sides with the check, and the honest
/// output is the result. The liar is rejected and unpaid; one run is paid, to a checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_node_is_caught_by_a_spot_check() {
    let mut sb = start_with(0, |o| o.spot_check_rate = Some(1.0)).await;
    let (open, gate) = watch::channel(false);
    let (assigned, mut liar_tasks) = mpsc::unbounded_channel();
    let liar = start_liar(&sb, "op-liar", Some(gate), assigned).await;
    sb.mesh
        .wait_for_workers(1, Duration::from_secs(20))
        .await
        .unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let input = b"run by a liar";
    let task = submit(&mut s, &Job::new(sha.wasm, input)).await.unwrap();
    let ran = tokio::time::timeout(Duration::from_secs(20), liar_tasks.recv())
        .await
        .expect("the liar runs the task")
        .unwrap();
    assert_eq!(ran, task.task_id);
    // Honest operators come before the liar reports: its result will be checked.
    let a = sb.mesh.add_worker("honest-a", "op-a").await.unwrap();
    let b = sb.mesh.add_worker("honest-b", "op-b").await.unwrap();
    sb.mesh
        .wait_for_workers(3, Duration::from_secs(20))
        .await
        .unwrap();
    open.send(true).unwrap();
    let result = finish(&sb, &task.task_id).await;
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", input).unwrap(),
    );
    assert!(
        result.verdict_reason.contains("spot-checked: 2 of 3"),
        "{}",
        result.verdict_reason
    );
    assert!(result.receipts.iter().all(|r| r.node_id != liar));
    let events = history(&mut s, &task.task_id).await;
    assert!(
        events.iter().any(|e| e.message.contains("spot check:")),
        "{events:?}"
    );
    assert_eq!(balance(&sb, "op-liar").await, 0);
    let one_run = zkmesh_kit::settlement::cost(result.fuel_used, 1000);
    assert_eq!(result.credits_charged, one_run);
    let (paid_a, paid_b) = (balance(&sb, "op-a").await, balance(&sb, "op-b").await);
    assert_eq!(paid_a + paid_b, one_run, "one run is paid, to one checker");
    assert!(paid_a == 0 || paid_b == 0);
    let records = records(&sb).await;
    assert_eq!(counts(records.get(&liar)), record(0, 1, 1, 1));
    assert_eq!(counts(records.get(&a)), record(1, 0, 1, 0));
    assert_eq!(counts(records.get(&b)), record(1, 0, 1, 0));
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

/// A run that timed out says nothing against one that completed (a slower machine, not another
/// answer): both checks of an honest result time out, and the result is judged as an unchecked
/// one would be and paid; the checkers are not paid, nor marked as having lost a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_time_out_do_not_outvote_a_completed_run() {
    let mut sb = start_with(0, |o| o.spot_check_rate = Some(1.0)).await;
    let honest = sb.mesh.add_worker("honest", "op-honest").await.unwrap();
    let (assigned, mut slow_tasks) = mpsc::unbounded_channel();
    let slow_a = start_fake(&sb, "op-slow-a", None, assigned.clone(), true).await;
    let slow_b = start_fake(&sb, "op-slow-b", None, assigned, true).await;
    sb.mesh
        .wait_for_workers(3, Duration::from_secs(20))
        .await
        .unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let task = submit(&mut s, &Job::new(sha.wasm, b"slow checkers"))
        .await
        .unwrap();
    let result = finish(&sb, &task.task_id).await;
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"slow checkers").unwrap(),
    );
    assert!(
        result.verdict_reason.contains("judged unchecked"),
        "{}",
        result.verdict_reason
    );
    assert_eq!(result.receipts.len(), 1);
    assert_eq!(result.receipts[0].node_id, honest);
    assert_eq!(
        slow_tasks.try_recv().is_ok() as u8 + slow_tasks.try_recv().is_ok() as u8,
        2
    );
    assert_eq!(balance(&sb, "op-honest").await, result.credits_charged);
    assert_eq!(
        balance(&sb, "op-slow-a").await + balance(&sb, "op-slow-b").await,
        0
    );
    let records = records(&sb).await;
    assert_eq!(counts(records.get(&honest)), record(1, 0, 1, 0));
    assert_eq!(counts(records.get(&slow_a)), record(0, 1, 1, 0));
    assert_eq!(counts(records.get(&slow_b)), record(0, 1, 1, 0));
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}
