//! `replicate:k` is decided by a majority of operators: a node that lies about the output, or
//! signs with a key that is not its own, is outvoted, unpaid, and the honest result stands.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use zkmesh_proto::*;

use crate::support::*;

#[derive(Clone, Copy)]
enum Lie {
    /// A correctly signed receipt for an output it made up.
    WrongOutput,
    /// The right output, signed with a key the registry does not know for it.
    ForeignKey,
}

/// A dishonest node: enrolls like a worker, then answers every assignment with a lie.
async fn start_liar(sb: &Sandbox, lie: Lie) -> String {
    let fake = crate::fake_node::enroll(sb, "operator-liar", 1).await;
    let (tx, mut down, receipt_key) = (fake.up, fake.down, fake.receipt_key);
    let node_id = fake.node_id.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = down.message().await {
            let Some(work_response::Kind::Assignment(a)) = msg.kind else {
                continue;
            };
            let honest = zkmesh_guests::reference_output("sha256", &a.input).unwrap();
            let (output, key) = match lie {
                Lie::WrongOutput => (b"not the hash".to_vec(), receipt_key.clone()),
                Lie::ForeignKey => (honest, SigningKey::from_bytes(&[10u8; 32])),
            };
            let report = crate::fake_node::signed_report(&a, &node_id, &key, output);
            let _ = tx
                .send(WorkRequest {
                    kind: Some(work_request::Kind::Report(report)),
                })
                .await;
        }
    });
    fake.node_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_outvotes_a_lying_node() {
    let sb = start(2).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    for (i, lie) in [Lie::WrongOutput, Lie::ForeignKey].into_iter().enumerate() {
        let liar = start_liar(&sb, lie).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let input = format!("replicated {i}");
        let job = Job {
            policy: "replicate:3",
            ..Job::new(sha.wasm, input.as_bytes())
        };
        let (_, result) = run(&sb.api, &job).await.unwrap();
        assert_verified(
            &result,
            &zkmesh_guests::reference_output("sha256", input.as_bytes()).unwrap(),
        );
        assert_eq!(
            result.receipts.len(),
            2,
            "the liar's receipt is not part of the result"
        );
        assert!(result.receipts.iter().all(|r| r.node_id != liar));
        assert!(
            result.verdict_reason.contains("2 of 3"),
            "{}",
            result.verdict_reason
        );
        // The liar is not paid.
        let paid = sb
            .api
            .admin_ledger()
            .unwrap()
            .get_balance(GetBalanceRequest {
                account: "operator/operator-liar".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
            .balance;
        assert_eq!(paid, 0);
        sb.api
            .admin_registry()
            .unwrap()
            .revoke_node(RevokeNodeRequest { node_id: liar })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_time_out_agree_on_the_timeout() {
    let sb = start(2).await;
    // How far a loop gets before the wall clock stops it differs between nodes; the verdict
    // must still be a clear timeout, not a failure to agree.
    let spin = zkmesh_guests::hostile_by_name("infinite_loop").unwrap();
    let job = Job {
        policy: "replicate:2",
        fuel: 1_000_000_000_000,
        timeout_secs: 1,
        ..Job::new(spin.wasm, b"")
    };
    let (_, result) = run(&sb.api, &job).await.unwrap();
    assert_eq!(
        result.state(),
        TaskState::Settled,
        "{}",
        result.verdict_reason
    );
    assert_eq!(
        result.verdict(),
        Verdict::Verified,
        "{}",
        result.verdict_reason
    );
    assert_eq!(result.exit(), ExitKind::Timeout);
    assert_eq!(result.receipts.len(), 2);
    assert_audit_passes(&sb.api).await;
    sb.mesh.stop().await;
}

/// One party with several nodes is one operator: its nodes cannot name themselves apart (the
/// operator comes from the admin's join token), so they cannot make a majority of their own;
/// and each runs at most the slots the registry granted, whatever it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_party_with_many_nodes_is_one_operator() {
    let sb = start(0).await;
    let token = sb.mesh.join_token("operator-mallory", 3).await.unwrap();
    let mut nodes = Vec::new();
    for name in ["mallory-a", "mallory-b", "mallory-c"] {
        nodes.push(crate::fake_node::enroll_with(&sb, &token, name, 256).await);
    }
    let registry = sb.api.admin_registry().unwrap();
    let listed = zkmesh_kit::lists::all_nodes(&registry, NodeStatus::Unspecified)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    for n in &listed {
        assert_eq!(
            (n.operator.as_str(), n.slots),
            ("operator-mallory", 2),
            "{n:?}"
        );
    }
    // Each asked for 256 slots in its Hello; the scheduler holds it to the grant.
    let workers = zkmesh_kit::lists::all_workers(&sb.api.admin_scheduler().unwrap())
        .await
        .unwrap();
    assert_eq!(workers.len(), 3);
    assert!(workers.iter().all(|w| w.slots == 2), "{workers:?}");
    // Three nodes of one operator cannot take two replicas: refused at submit.
    let sha = zkmesh_guests::get("sha256").unwrap();
    let err = run(
        &sb.api,
        &Job {
            policy: "replicate:2",
            ..Job::new(sha.wasm, b"sybil")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        zkmesh_kit::error::reason_of(&err).as_deref(),
        Some("NOT_ENOUGH_OPERATORS")
    );
    // A token without an operator is refused.
    let err = registry
        .clone()
        .create_join_token(CreateJoinTokenRequest {
            pre_approved: true,
            max_uses: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("--operator"), "{}", err.message());
    // A weak receipt key (the identity point, with which anything "verifies" laxly) is refused
    // at enrollment.
    let anonymous = zkmesh_kit::client::ClientTls {
        ca: std::fs::read_to_string(&sb.mesh.client.ca).unwrap(),
        identity: None,
    };
    let mut open = registry_service_client::RegistryServiceClient::new(
        zkmesh_kit::client::channel(&sb.mesh.client.registry, &anonymous, "registry").unwrap(),
    );
    let (_, csr) = zkmesh_kit::ca::generate_csr("weak").unwrap();
    let mut identity_point = vec![0u8; 32];
    identity_point[0] = 1;
    let err = open
        .enroll(EnrollRequest {
            join_token: sb.mesh.join_token("operator-weak", 1).await.unwrap(),
            csr_pem: csr,
            receipt_public_key: identity_point,
            name: "weak".into(),
            enrollment_secret_sha256: vec![7; 32],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("weak"), "{}", err.message());
    drop(nodes);
    sb.mesh.stop().await;
}

/// A retry gets the task its first request made even when the mesh has changed since (here an
/// operator left, so a new replicate:2 request is refused): the client, told UNAVAILABLE the
/// first time, must not be told the task failed and submit a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_its_task_even_when_the_mesh_changed_since() {
    let sb = start(2).await;
    let sha = zkmesh_guests::get("sha256").unwrap();
    let mut s = sb.api.scheduler().unwrap();
    let module = zkmesh_client::upload(&mut s, "sha", sha.wasm)
        .await
        .unwrap();
    let request = |id: &str| SubmitTaskRequest {
        module_hash: module.module_hash.clone(),
        input: b"retried".to_vec(),
        policy: Some(policy("replicate:2")),
        request_id: id.into(),
        ..Default::default()
    };
    let first = zkmesh_client::submit(&mut s, request("req-r"))
        .await
        .unwrap();
    let scheduler = sb.api.admin_scheduler().unwrap();
    let leaving = zkmesh_kit::lists::all_workers(&scheduler).await.unwrap()[0]
        .node_id
        .clone();
    sb.api
        .admin_registry()
        .unwrap()
        .revoke_node(RevokeNodeRequest { node_id: leaving })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while zkmesh_kit::lists::all_workers(&scheduler)
        .await
        .unwrap()
        .len()
        > 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked node stays connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = zkmesh_client::submit(&mut s, request("req-new"))
        .await
        .unwrap_err();
    assert_eq!(
        zkmesh_kit::error::reason_of(&refused).as_deref(),
        Some("NOT_ENOUGH_OPERATORS")
    );
    let again = zkmesh_client::submit(&mut s, request("req-r"))
        .await
        .unwrap();
    assert_eq!(again.task_id, first.task_id);
    sb.mesh.stop().await;
}
