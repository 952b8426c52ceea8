//! A task's other endings, and a node's life: cancellation releases the hold; a node that goes
//! silent loses its lease and goes offline; an admin approves or denies a waiting node.

use std::time::Duration;

use zkmesh_proto::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_the_hold_and_frees_the_worker() {
    let sb = start(1).await;
    let collatz = zkmesh_guests::get("collatz").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let job = Job {
        fuel: 500_000_000_000,
        timeout_secs: 120,
        ..Job::new(collatz.wasm, b"50000000")
    };
    let task = submit(&mut s, &job).await.unwrap();
    let task_ref = || CancelTaskRequest {
        task_id: task.task_id.clone(),
    };
    let mut events = watch(&mut s, &task.task_id, 0).await;
    while let Some(e) = events.message().await.unwrap() {
        if e.event.unwrap().state() == TaskState::Running {
            break;
        }
    }
    let cancelled = s
        .cancel_task(task_ref())
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    // A retried cancel is answered with the state as it is.
    let again = s
        .cancel_task(task_ref())
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(again.state(), TaskState::Cancelled);

    // The whole hold comes back.
    let entries = sb
        .api
        .ledger()
        .unwrap()
        .history(HistoryRequest {
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| JournalEntryKind::short_name_of(e.kind))
        .collect();
    assert_eq!(kinds, ["hold", "release"], "{entries:?}");
    assert_eq!(entries[0].amount, entries[1].amount);
    let balance = sb
        .api
        .ledger()
        .unwrap()
        .get_balance(GetBalanceRequest::default())
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(balance.balance, sb.mesh.options.mint);

    // The worker stopped the cancelled guest and serves the next task promptly.
    let sha = zkmesh_guests::get("sha256").unwrap();
    let started = std::time::Instant::now();
    let (_, result) = run(&sb.api, &Job::new(sha.wasm, b"next")).await.unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"next").unwrap(),
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_loses_its_lease_and_goes_offline() {
    let sb = start(1).await;
    // More free slots than the real worker, so it is chosen first; then it never answers.
    let silent = crate::fake_node::enroll(&sb, "operator-silent", 8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let task = submit(&mut s, &Job::new(sha.wasm, b"anyone there?"))
        .await
        .unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        zkmesh_client::wait(&mut s, &task.task_id, |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"anyone there?").unwrap(),
    );
    assert_ne!(result.receipts[0].node_id, silent.node_id);
    let expired = history(&mut s, &task.task_id)
        .await
        .iter()
        .any(|e| e.state() == TaskState::Expired && e.message.contains(&silent.node_id));
    assert!(expired, "the silent node's lease expired");

    // It sent no heartbeat since enrolling: the registry reports it offline.
    let mut registry = sb.api.admin_registry().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let node = registry
            .get_node(GetNodeRequest {
                node_id: silent.node_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap();
        if node.status() == NodeStatus::Offline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never went offline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(silent);
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_approves_or_denies_waiting_nodes() {
    let sb = start(0).await;
    let mut registry = sb.api.admin_registry().unwrap();
    let enroll = |name: &str, token: String| {
        let config = zkmesh_worker::WorkerConfig {
            join_token: Some(token),
            ..sb.mesh.worker_config(name, None)
        };
        let shutdown = zkmesh_kit::CancellationToken::new();
        tokio::spawn(zkmesh_worker::start(config, shutdown))
    };
    let pending =
        |registry: &mut zkmesh_proto::registry_service_client::RegistryServiceClient<_>| {
            let mut r = registry.clone();
            async move {
                for _ in 0..100 {
                    let nodes = r
                        .list_nodes(ListNodesRequest {
                            status: NodeStatus::Pending as i32,
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .nodes;
                    if let Some(n) = nodes.first() {
                        return n.node_id.clone();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("no node became pending");
            }
        };
    let waiting_token =
        |registry: &mut zkmesh_proto::registry_service_client::RegistryServiceClient<
            tonic::transport::Channel,
        >| {
            let mut r = registry.clone();
            async move {
                r.create_join_token(CreateJoinTokenRequest {
                    pre_approved: false,
                    ttl_secs: 600,
                    max_uses: 1,
                    operator: "operator-waiting".into(),
                    slots: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .token
            }
        };

    // Denied: the worker gives up with a clear error.
    let token = waiting_token(&mut registry).await;
    let denied = enroll("denied", token);
    let id = pending(&mut registry).await;
    registry
        .deny_node(DenyNodeRequest {
            node_id: id.clone(),
        })
        .await
        .unwrap();
    let err = denied
        .await
        .unwrap()
        .err()
        .expect("a denied node does not start");
    assert!(err.to_string().contains("denied"), "{err}");
    // A used token cannot enroll another node.
    let token = waiting_token(&mut registry).await;
    let approved = enroll("approved", token.clone());
    let id = pending(&mut registry).await;
    let second = enroll("intruder", token);
    assert!(
        second.await.unwrap().is_err(),
        "a one-use token enrolled two nodes"
    );
    let granted = registry
        .approve_node(ApproveNodeRequest {
            node_id: id.clone(),
            slots: 3,
            operator: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    // The admin's grant and the token's operator, whatever the worker's config says.
    assert_eq!(
        (granted.slots, granted.operator.as_str()),
        (3, "operator-waiting")
    );
    let approve = |slots: u32, operator: &str| {
        let mut r = registry.clone();
        let request = ApproveNodeRequest {
            node_id: id.clone(),
            slots,
            operator: operator.to_string(),
        };
        async move {
            r.approve_node(request)
                .await
                .map(|a| a.into_inner().node.unwrap())
        }
    };
    // Approving it again changes its grant; its operator is the token's, not the admin's to
    // rename.
    assert_eq!(approve(1, "").await.unwrap().slots, 1);
    let renamed = approve(0, "operator-other").await.unwrap_err();
    assert_eq!(renamed.code(), tonic::Code::InvalidArgument, "{renamed:?}");
    // A node from before tokens named operators (it named its own) waits for an approval that
    // names its operator.
    let url = format!("sqlite://{}", sb.mesh.dir.join("registry.db").display());
    let db = zkmesh_kit::db::connect(&url).await.unwrap();
    sqlx::query("UPDATE nodes SET token_hash = '', state = 'pending', operator = 'self-named' WHERE node_id = $1")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    let unnamed = approve(0, "").await.unwrap_err();
    assert!(unnamed.message().contains("--operator"), "{unnamed:?}");
    let named = approve(3, "operator-waiting").await.unwrap();
    assert_eq!(
        (named.operator.as_str(), named.slots),
        ("operator-waiting", 3)
    );
    db.close().await;
    let handle = approved.await.unwrap().expect("approved node starts");
    assert_eq!(handle.node_id, id);
    sb.mesh
        .wait_for_workers(1, Duration::from_secs(20))
        .await
        .unwrap();
    let sha = zkmesh_guests::get("sha256").unwrap();
    let (_, result) = run(&sb.api, &Job::new(sha.wasm, b"approved"))
        .await
        .unwrap();
    assert_verified(
        &result,
        &zkmesh_guests::reference_output("sha256", b"approved").unwrap(),
    );
    assert_eq!(result.receipts[0].node_id, id);
    handle.task.abort();
    sb.mesh.stop().await;
}

/// A submission retried with its request id makes one task and one hold, however often it is
/// sent; the same id for another request is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_makes_one_task_and_one_hold() {
    let sb = start(0).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let module = zkmesh_client::upload(&mut s, "sha", sha.wasm)
        .await
        .unwrap();
    let request = |input: &[u8]| SubmitTaskRequest {
        module_hash: module.module_hash.clone(),
        input: input.to_vec(),
        policy: Some(VerificationPolicy {
            kind: PolicyKind::Receipt as i32,
            replicas: 0,
        }),
        request_id: "req-1".into(),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            zkmesh_client::submit(&mut s, request(b"once"))
                .await
                .unwrap()
                .task_id,
        );
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let reused = zkmesh_client::submit(&mut s, request(b"other input"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        zkmesh_kit::error::reason_of(&reused).as_deref(),
        Some("REQUEST_ID_REUSED")
    );
    let holds = zkmesh_kit::lists::all_history(&sb.api.admin_ledger().unwrap(), "user/alice", "")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == JournalEntryKind::Hold as i32)
        .count();
    assert_eq!(holds, 1);
    // One task in the scheduler, too.
    let tasks = s
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1);
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

/// Per-user quotas: a user past the tasks it may have in flight is refused with a reason and a
/// message naming the quota, and may submit again once one ends; uploads count against the
/// module bytes quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_what_would_pass_them_and_say_which() {
    let sb = start_with(0, |o| {
        o.scheduler_settings = vec![
            ("max_tasks_in_flight_per_user".into(), 2),
            ("max_module_bytes_per_user".into(), 100_000),
        ]
    })
    .await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let job = Job::new(sha.wasm, b"queued");
    zkmesh_client::upload(&mut s, "sha", sha.wasm)
        .await
        .unwrap();
    // Six at once: two pass, however they interleave.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let mut s = s.clone();
        set.spawn(async move { submit(&mut s, &job).await });
    }
    let answers = set.join_all().await;
    let passed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    assert_eq!(passed.len(), 2, "{answers:?}");
    let refused = answers.iter().find_map(|a| a.as_ref().err()).unwrap();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(
        zkmesh_kit::error::reason_of(refused).as_deref(),
        Some("QUOTA_EXCEEDED")
    );
    assert!(
        refused.message().contains("tasks in flight"),
        "{}",
        refused.message()
    );
    s.cancel_task(CancelTaskRequest {
        task_id: passed[0].task_id.clone(),
    })
    .await
    .unwrap();
    submit(&mut s, &job).await.unwrap();
    assert!(submit(&mut s, &job).await.is_err(), "two in flight again");
    // sha256 (already stored) costs no quota again; a new module past the bytes left is refused.
    let big = zkmesh_guests::get("primes").unwrap();
    let refused = zkmesh_client::upload(&mut s, "big", &[big.wasm, &[0u8; 100_000][..]].concat())
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("module bytes"),
        "{}",
        refused.message()
    );
    sb.mesh.stop().await;
}
