//! The proof policy end to end: a worker traces and proves, the verifier checks the Groth16
//! proof against its own statement, a node that lies about the output is rejected and the task
//! runs elsewhere, and a result bundle verifies offline until any byte of it changes.

use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use zkmesh_proto::*;

use crate::support::*;

const CLASS: &str = "c10";

fn zkmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args(args)
        .env("ZKMESH_KEYS_DIR", test_keys_dir())
        .env_remove("ZKMESH_CLIENT_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn run_with_policy_proof_reports_a_verified_proof() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args([
            "run", "bytesum", "--input", "hi", "--policy", "proof", "--json",
        ])
        .env("ZKMESH_HOME", home.path())
        .env("ZKMESH_KEYS_DIR", test_keys_dir())
        .env_remove("ZKMESH_CLIENT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "verified", "{v}");
    assert_eq!(v["output_text"], "209");
    assert_eq!(v["policy"], "proof");
    assert!(
        v["verdict_reason"]
            .as_str()
            .unwrap()
            .contains("Groth16 proof valid"),
        "{v}"
    );
    assert_eq!(v["proof"]["circuit_class"], CLASS);
    assert!(v["proof"]["steps"].as_u64().unwrap() > 100);
}

#[test]
fn run_with_policy_proof_refuses_an_unprovable_module_with_the_reason() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zkmesh"))
        .args(["run", "primes", "--input", "10", "--policy", "proof"])
        .env("ZKMESH_HOME", home.path())
        .env_remove("ZKMESH_CLIENT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wasi_snapshot_preview1"), "{err}");
    assert!(err.contains("replicate"), "{err}");
}

/// A node that answers its first assignment with a made-up output, a receipt it signs
/// correctly, and a proof that is well-formed but proves something else; then it disconnects.
/// It says when it has an assignment, and reports only when `go` is notified.
async fn start_liar(
    sb: &Sandbox,
    assigned: tokio::sync::mpsc::Sender<()>,
    go: std::sync::Arc<tokio::sync::Notify>,
) -> String {
    let fake = crate::fake_node::enroll(sb, "operator-liar", 1).await;
    let (tx, mut down, key) = (fake.up, fake.down, fake.receipt_key);
    let node_id = fake.node_id.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = down.message().await {
            let Some(work_response::Kind::Assignment(a)) = msg.kind else {
                continue;
            };
            let output = b"1000".to_vec();
            let _ = assigned.send(()).await;
            go.notified().await;
            // 128 bytes that decode as a proof: a valid curve point repeated.
            let proof = zkmesh_prover::zkvm::proof_bytes(&Default::default());
            let report = TaskReport {
                proof: Some(ZkProof {
                    circuit_class: CLASS.into(),
                    proof,
                    steps: 167,
                    halt: ZkHalt::Returned as i32,
                    state_out: "0".into(),
                    ..Default::default()
                }),
                ..crate::fake_node::signed_report(&a, &node_id, &key, output)
            };
            let _ = tx
                .send(WorkRequest {
                    kind: Some(work_request::Kind::Report(report)),
                })
                .await;
            // Stay until the report is delivered, then leave.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    });
    fake.node_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_prover_is_rejected_and_the_bundle_verifies_offline_until_tampered() {
    let mut sb = start_proving(0, CLASS).await;
    let bytesum = zkmesh_guests::get("bytesum").unwrap();

    // Only the liar is connected when the task is submitted, so it gets the first attempt; an
    // honest worker joins before the liar reports.
    let (assigned_tx, mut assigned) = tokio::sync::mpsc::channel(1);
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let liar = start_liar(&sb, assigned_tx, go.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = sb.api.scheduler().unwrap();

    // A module whose program no class of this mesh holds (sha256's, in a mesh of c10 only) is
    // refused at submit with the reason, before any node takes it.
    let sha = zkmesh_guests::get("sha256").unwrap();
    let job = Job {
        policy: "proof",
        ..Job::new(sha.wasm, b"hi")
    };
    let refused = submit(&mut s, &job).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("the program needs") && refused.message().contains(CLASS),
        "{}",
        refused.message()
    );
    assert_eq!(
        zkmesh_kit::error::reason_of(&refused).as_deref(),
        Some("TASK_TOO_LARGE_TO_PROVE")
    );

    let job = Job {
        policy: "proof",
        ..Job::new(bytesum.wasm, b"hi")
    };
    let task = submit(&mut s, &job).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), assigned.recv())
        .await
        .expect("the liar gets the task");
    sb.mesh
        .add_worker("honest", "operator-honest")
        .await
        .unwrap();
    sb.mesh
        .wait_for_workers(2, Duration::from_secs(20))
        .await
        .unwrap();
    go.notify_one();
    // Its report is rejected (the proof does not prove that output), and the task goes to the
    // honest worker, which proves it.
    let mut rejected = false;
    let mut last = None;
    for _ in 0..200 {
        let t = s
            .get_task(GetTaskRequest {
                task_id: task.task_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        if t.attempts >= 2 || t.message.contains("rejected") {
            rejected = true;
            break;
        }
        last = Some(t);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rejected, "the liar's result was not rejected: {last:?}");
    let result = tokio::time::timeout(
        Duration::from_secs(300),
        zkmesh_client::wait(&mut s, &task.task_id, |_| {}),
    )
    .await
    .expect("the honest worker proves within 5 minutes")
    .unwrap();
    assert_verified(&result, b"209");
    assert!(
        result.verdict_reason.contains("Groth16"),
        "{}",
        result.verdict_reason
    );
    assert!(result.receipts.iter().all(|r| r.node_id != liar));
    let proof = result.proof.clone().expect("the verified proof is kept");
    assert_eq!(proof.circuit_class, CLASS);

    // The bundle, through the binary, against this mesh.
    let offline = Offline::fetch(&sb, &task.task_id);
    let (bundle, c) = (&offline.bundle, offline.config_str());
    let verify = |path: &std::path::Path| offline.verify(path);
    let out = verify(bundle);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("VALID"));
    // Without --vk the mesh's verifier supplies the key.
    let out = zkmesh(&["--mesh", c, "verify", bundle.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Flip one byte of the output, each hash, and the proof: each bundle is invalid.
    let edits: Vec<(&str, Edit)> = vec![
        (
            "output",
            Box::new(|v| {
                v["output_base64"] = flip_b64(v["output_base64"].as_str().unwrap(), 0).into()
            }),
        ),
        (
            "output hash",
            Box::new(|v| v["output_hash"] = flip_hex(v["output_hash"].as_str().unwrap()).into()),
        ),
        (
            "input hash",
            Box::new(|v| v["input_hash"] = flip_hex(v["input_hash"].as_str().unwrap()).into()),
        ),
        (
            "module hash",
            Box::new(|v| v["module_hash"] = flip_hex(v["module_hash"].as_str().unwrap()).into()),
        ),
        (
            "input",
            Box::new(|v| {
                v["input_base64"] = flip_b64(v["input_base64"].as_str().unwrap(), 1).into()
            }),
        ),
        (
            "proof byte 3",
            Box::new(|v| {
                v["proof"]["proof_base64"] =
                    flip_b64(v["proof"]["proof_base64"].as_str().unwrap(), 3).into()
            }),
        ),
        (
            "proof byte 70",
            Box::new(|v| {
                v["proof"]["proof_base64"] =
                    flip_b64(v["proof"]["proof_base64"].as_str().unwrap(), 70).into()
            }),
        ),
        (
            "proof byte 127",
            Box::new(|v| {
                v["proof"]["proof_base64"] =
                    flip_b64(v["proof"]["proof_base64"].as_str().unwrap(), 127).into()
            }),
        ),
        (
            "steps",
            Box::new(|v| v["proof"]["steps"] = (v["proof"]["steps"].as_u64().unwrap() + 1).into()),
        ),
    ];
    offline.assert_each_edit_invalid(edits, true);
    assert_audit_passes(&sb.api).await;
}

/// A node that copies another node's verified proof: it holds its first assignment until it
/// is handed a proof (with the output it proves), reports that as its own result, and leaves.
async fn start_copier(
    sb: &Sandbox,
    assigned: tokio::sync::mpsc::Sender<()>,
    mut loot: tokio::sync::mpsc::Receiver<(Vec<u8>, ZkProof)>,
) -> String {
    let fake = crate::fake_node::enroll(sb, "operator-copier", 1).await;
    let (tx, mut down, key) = (fake.up, fake.down, fake.receipt_key);
    let mut registry = fake.registry;
    let node_id = fake.node_id.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = down.message().await {
            let Some(work_response::Kind::Assignment(a)) = msg.kind else {
                continue;
            };
            let _ = assigned.send(()).await;
            // Keep the lease alive, as a worker that is still proving would.
            let mut beat = tokio::time::interval(Duration::from_secs(2));
            let (output, proof) = loop {
                tokio::select! {
                    got = loot.recv() => match got {
                        Some(got) => break got,
                        None => return,
                    },
                    _ = beat.tick() => {
                        let _ = registry.heartbeat(HeartbeatRequest { running_tasks: 1 }).await;
                        let heartbeat = WorkerHeartbeat {
                            running_attempt_ids: vec![a.attempt_id.clone()],
                        };
                        let _ = tx
                            .send(WorkRequest {
                                kind: Some(work_request::Kind::Heartbeat(heartbeat)),
                            })
                            .await;
                    }
                }
            };
            let report = TaskReport {
                proof: Some(proof),
                ..crate::fake_node::signed_report(&a, &node_id, &key, output)
            };
            let _ = tx
                .send(WorkRequest {
                    kind: Some(work_request::Kind::Report(report)),
                })
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    });
    fake.node_id
}

/// A valid proof of the same module, input and output, made by another node for another task,
/// is worth nothing to the node that copies it: each proof is bound to its task and its
/// prover. The copier's report is rejected and the task is proved again by an honest node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_copied_from_another_task_and_node_is_rejected() {
    let mut sb = start_proving(0, CLASS).await;
    let bytesum = zkmesh_guests::get("bytesum").unwrap();
    let (assigned_tx, mut assigned) = tokio::sync::mpsc::channel(1);
    let (loot_tx, loot) = tokio::sync::mpsc::channel(1);
    let copier = start_copier(&sb, assigned_tx, loot).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = sb.api.scheduler().unwrap();
    let job = Job {
        policy: "proof",
        ..Job::new(bytesum.wasm, b"hi")
    };
    // The copier takes the first task and holds it (its one slot stays busy).
    let target = submit(&mut s, &job).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), assigned.recv())
        .await
        .expect("the copier gets the first task");
    // An honest node proves the same job as a second task.
    sb.mesh
        .add_worker("honest", "operator-honest")
        .await
        .unwrap();
    sb.mesh
        .wait_for_workers(2, Duration::from_secs(20))
        .await
        .unwrap();
    let source = submit(&mut s, &job).await.unwrap();
    let honest = tokio::time::timeout(
        Duration::from_secs(300),
        zkmesh_client::wait(&mut s, &source.task_id, |_| {}),
    )
    .await
    .expect("the honest node proves within 5 minutes")
    .unwrap();
    assert_verified(&honest, b"209");
    assert!(honest.receipts.iter().all(|r| r.node_id != copier));
    let proof = honest.proof.clone().expect("the verified proof is kept");

    // The copier reports the honest proof (same module, input, output, steps, state) as its
    // result for the first task.
    loot_tx.send((honest.output.clone(), proof)).await.unwrap();
    let mut rejected = None;
    for _ in 0..200 {
        let events = s
            .get_task(GetTaskRequest {
                task_id: target.task_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        if events.attempts >= 2 || events.message.contains("rejected") {
            rejected = Some(events);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = messages(&mut s, &target.task_id).await;
    assert!(
        rejected.is_some(),
        "the copied proof was not rejected: {history:?}"
    );
    let result = tokio::time::timeout(
        Duration::from_secs(300),
        zkmesh_client::wait(&mut s, &target.task_id, |_| {}),
    )
    .await
    .expect("the honest node proves the first task within 5 minutes")
    .unwrap();
    assert_verified(&result, b"209");
    assert!(result.receipts.iter().all(|r| r.node_id != copier));
    let history = messages(&mut s, &target.task_id).await;
    assert!(
        history.iter().any(|m| m.starts_with("rejected")
            && m.contains(&copier)
            && m.contains("does not verify")
            && m.contains("by this node for this task")),
        "{history:?}"
    );
    assert_audit_passes(&sb.api).await;
}

/// A run whose memory state outgrows the class between segments passes the static check at
/// submit (its program, data and input fit), but no node can prove it: each one that traces
/// it gives the task back with the reason, and the task fails with it once the attempts are
/// spent, rather than being reported with a result nobody could verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_no_node_can_prove_is_given_back_and_fails_with_the_reason() {
    let sb = start_proving(1, CLASS).await;
    let bytesum = zkmesh_guests::get("bytesum").unwrap();
    // 60 bytes: the input's 15 words, their copy in linear memory and bytesum's slots are more
    // than c10's 32-word memory state at a segment boundary.
    let input = [b'x'; 60];
    let mut s = sb.api.scheduler().unwrap();
    let job = Job {
        policy: "proof",
        ..Job::new(bytesum.wasm, &input)
    };
    let task = submit(&mut s, &job).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        zkmesh_client::wait(&mut s, &task.task_id, |_| {}),
    )
    .await
    .expect("given up within 2 minutes")
    .unwrap();
    assert_eq!(result.state(), TaskState::Failed, "{result:?}");
    let history = messages(&mut s, &task.task_id).await;
    let declined = history
        .iter()
        .filter(|m| {
            m.starts_with("node ") && m.contains("gave the task back: cannot prove the run")
        })
        .count();
    assert_eq!(declined, 3, "{history:?}");
    assert!(
        history.iter().any(|m| m.contains("memory state")),
        "{history:?}"
    );
    assert!(result.proof.is_none());
    assert_audit_passes(&sb.api).await;
}

/// A run longer than the class: the worker proves it in segments, the verifier checks the
/// chain, and the bundle carries every segment; a changed link makes it invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_class_is_proved_in_segments_and_its_bundle_verifies() {
    let sb = start_proving(1, CLASS).await;
    let bytesum = zkmesh_guests::get("bytesum").unwrap();
    // 32 bytes: a run of two segments of c10, whose memory state (the input's words, their copy
    // in linear memory, and bytesum's slots: about 29 words) fits c10's 32.
    let input = [b'x'; 32];
    let mut s = sb.api.scheduler().unwrap();
    let job = Job {
        policy: "proof",
        ..Job::new(bytesum.wasm, &input)
    };
    let task = submit(&mut s, &job).await.unwrap();
    let mut messages = vec![];
    let result = tokio::time::timeout(
        Duration::from_secs(300),
        zkmesh_client::wait(&mut s, &task.task_id, |e| messages.push(e.message.clone())),
    )
    .await
    .expect("proved within 5 minutes")
    .unwrap();
    assert_verified(&result, b"3840");
    let proof = result.proof.clone().expect("the verified proof is kept");
    assert_eq!(proof.circuit_class, CLASS);
    // The prover is paid, through the verifier's settlement, for the fuel its receipt signs.
    let verdict = sb
        .api
        .verifier()
        .unwrap()
        .get_verdict(GetVerdictRequest {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    let settled = zkmesh_kit::settlement::open(
        verdict.settlement.as_ref(),
        &zkmesh_kit::settlement::verifier_keys_hex(&[sb
            .mesh
            .client
            .verifier_public_key
            .clone()
            .unwrap()])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(settled.payees.len(), 1);
    assert_eq!(
        (settled.payees[0].fuel, settled.payees[0].amount),
        (result.fuel_used, result.credits_charged),
    );
    assert!(!proof.links.is_empty(), "{} links", proof.links.len());
    assert!(
        messages.iter().any(|m| m.contains("proved segment 2 of")),
        "{messages:?}"
    );

    let offline = Offline::fetch(&sb, &task.task_id);
    let bundle = &offline.bundle;
    let verify = |path: &std::path::Path| offline.verify(path);
    let out = verify(bundle);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let edits: Vec<(&str, Edit)> = vec![
        (
            "a link's memory commitment",
            Box::new(|v| {
                let m = &mut v["proof"]["links"][0]["memory_out"];
                *m = flip_hex(m.as_str().unwrap()).into()
            }),
        ),
        (
            "a link's register state",
            Box::new(|v| {
                let m = &mut v["proof"]["links"][0]["state_out"];
                *m = (m.as_str().unwrap().parse::<u128>().unwrap() + 1)
                    .to_string()
                    .into()
            }),
        ),
        (
            "a link's proof",
            Box::new(|v| {
                let m = &mut v["proof"]["links"][0]["proof_base64"];
                *m = flip_b64(m.as_str().unwrap(), 40).into()
            }),
        ),
        (
            "a dropped link",
            Box::new(|v| {
                v["proof"]["links"].as_array_mut().unwrap().remove(0);
            }),
        ),
        (
            "the output",
            Box::new(|v| {
                v["output_base64"] = flip_b64(v["output_base64"].as_str().unwrap(), 0).into()
            }),
        ),
    ];
    offline.assert_each_edit_invalid(edits, false);
}

/// The messages of every event of a task that has ended.
async fn messages(
    s: &mut zkmesh_proto::scheduler_service_client::SchedulerServiceClient<
        tonic::transport::Channel,
    >,
    task_id: &str,
) -> Vec<String> {
    (history(s, task_id).await.into_iter())
        .map(|e| e.message)
        .collect()
}

type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// A task's result bundle and its class's verifying key, fetched through the binary from a
/// mesh, for offline checks.
struct Offline {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    bundle: std::path::PathBuf,
    vk: std::path::PathBuf,
}

impl Offline {
    fn fetch(sb: &Sandbox, task_id: &str) -> Offline {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("client.toml");
        sb.mesh.client.save(&config).unwrap();
        let bundle = dir.path().join("bundle.json");
        let vk = dir.path().join(format!("{CLASS}.vk"));
        let c = config.to_str().unwrap();
        let b = bundle.to_str().unwrap();
        let v = vk.to_str().unwrap();
        for args in [
            vec!["--mesh", c, "result", task_id, "--bundle", b],
            vec!["--mesh", c, "circuits", "vk", CLASS, "--out", v],
        ] {
            let out = zkmesh(&args);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Offline {
            dir,
            config,
            bundle,
            vk,
        }
    }

    fn config_str(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// `zkmesh verify PATH --vk VK`.
    fn verify(&self, path: &std::path::Path) -> Output {
        zkmesh(&[
            "verify",
            path.to_str().unwrap(),
            "--vk",
            self.vk.to_str().unwrap(),
        ])
    }

    /// Each edit of the bundle makes `zkmesh verify` exit 1 (and, when `says_invalid`, print
    /// INVALID).
    fn assert_each_edit_invalid(&self, edits: Vec<(&str, Edit)>, says_invalid: bool) {
        let original: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.bundle).unwrap()).unwrap();
        for (what, edit) in edits {
            let mut v = original.clone();
            edit(&mut v);
            let path = self.dir.path().join("tampered.json");
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            let out = self.verify(&path);
            assert_eq!(
                out.status.code(),
                Some(1),
                "a bundle with a changed {what} was accepted: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            if says_invalid {
                assert!(String::from_utf8_lossy(&out.stdout).starts_with("INVALID"));
            }
        }
    }
}

fn flip_b64(s: &str, at: usize) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bytes = b64.decode(s).unwrap();
    let at = at % bytes.len();
    bytes[at] ^= 1;
    b64.encode(bytes)
}

fn flip_hex(s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    c[5] = if c[5] == '0' { '1' } else { '0' };
    c.into_iter().collect()
}
