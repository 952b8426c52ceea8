//! No one service key moves credits alone. The verifier signs what a verified task pays, to the
//! operators the registry names (so the operator counted for replicas is the registry's too); the ledger pays nothing else; an audit finds a payout the
//! verifier did not sign, even one the ledger's own key signed. Each attack below uses a real
//! service's key from the mesh's directory, as a thief would.

use ed25519_dalek::Signer;
use tonic::Code;
use zkmesh_kit::client::{ClientTls, channel};
use zkmesh_kit::journal::entry_hash;
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
use zkmesh_proto::verifier_service_client::VerifierServiceClient;
use zkmesh_proto::*;

use crate::support::*;

/// The client side of a service's own certificate (as a thief holding its key would use it).
fn stolen_identity(sb: &Sandbox, service: &str) -> ClientTls {
    let read = |p: &str| std::fs::read_to_string(sb.mesh.dir.join(p)).unwrap();
    ClientTls {
        ca: read("ca/ca.crt"),
        identity: Some((
            read(&format!("certs/{service}.crt")),
            read(&format!("certs/{service}.key")),
        )),
    }
}

fn reason(status: &tonic::Status) -> Option<String> {
    zkmesh_kit::error::reason_of(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_service_key_moves_credits_alone() {
    let sb = start(1).await;
    let guest = zkmesh_guests::get("sha256").unwrap();
    let (task, result) = run(&sb.api, &Job::new(guest.wasm, b"abc")).await.unwrap();
    assert_eq!(result.state(), TaskState::Settled, "{result:?}");
    let thief = stolen_identity(&sb, "scheduler");
    let mut verifier =
        VerifierServiceClient::new(channel(&sb.mesh.client.verifier, &thief, "verifier").unwrap());
    let mut ledger =
        LedgerServiceClient::new(channel(&sb.mesh.client.ledger, &thief, "ledger").unwrap());

    // The honest path: the verdict carries a settlement the verifier's key signs, paying the
    // worker's operator (as the registry knows it) exactly what the task was charged.
    let public = verifier
        .get_verifier_key(GetVerifierKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .public_key;
    assert_eq!(
        Some(hex::encode(&public)),
        sb.mesh.client.verifier_public_key,
        "the client config pins the key the verifier serves"
    );
    let keys = [zkmesh_kit::settlement::verifier_key(&public).unwrap()];
    let verdict = verifier
        .get_verdict(GetVerdictRequest {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    let real = verdict
        .settlement
        .clone()
        .expect("a verified task's settlement");
    let settled = zkmesh_kit::settlement::open_for(Some(&real), &keys, &task.task_id).unwrap();
    let payees: Vec<(&str, u64)> = settled
        .payees
        .iter()
        .map(|p| (p.account.as_str(), p.amount))
        .collect();
    assert_eq!(
        payees,
        vec![("operator/operator-1", result.credits_charged)]
    );
    assert!(result.credits_charged > 0);
    assert_eq!(settled.payees[0].fuel, result.fuel_used);

    // The scheduler's key can hold a user's credits for a task that does not exist ...
    let account = task.submitter.clone();
    ledger
        .hold(HoldRequest {
            task_id: "t-stolen".into(),
            account: account.clone(),
            amount: 1000,
        })
        .await
        .unwrap();
    // ... but cannot capture them: without a settlement, with one it signed itself, with the
    // real settlement of another task, or with its ledger-facing key's signature.
    let mallory = Settlement {
        task_id: "t-stolen".into(),
        payees: vec![SettlementPayee {
            account: "operator/mallory".into(),
            fuel: 1000,
            micro_credits_per_million_fuel: 1_000_000,
            amount: 1000,
            ..Default::default()
        }],
        ..Default::default()
    };
    let ledger_key =
        zkmesh_kit::signing_key::load_or_create_key(&sb.mesh.dir.join("ledger.key")).unwrap();
    let made_up = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let attempts = [
        ("no settlement", None),
        (
            "signed by a key of its own",
            Some(zkmesh_kit::settlement::sign(&mallory, &made_up)),
        ),
        (
            "signed with the ledger's key",
            Some(zkmesh_kit::settlement::sign(&mallory, &ledger_key)),
        ),
        ("another task's real settlement", Some(real.clone())),
    ];
    for (what, settlement) in attempts {
        let refused = ledger
            .capture(CaptureRequest {
                task_id: "t-stolen".into(),
                settlement,
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{what}: {refused:?}"
        );
        assert_eq!(
            reason(&refused).as_deref(),
            Some("SETTLEMENT_INVALID"),
            "{what}"
        );
    }

    // Nor can it get the verifier to settle to an operator of its choosing: the verifier pays,
    // and counts replicas by, the operator the registry holds for the reporting node.
    let receipt = result.receipts[0].clone();
    let report = |attempt: &str, operator: &str| ReportedResult {
        attempt_id: attempt.into(),
        node_id: receipt.node_id.clone(),
        operator: operator.into(),
        receipt: Some(receipt.clone()),
        observed_output_hash: receipt.output_hash.clone(),
        ..Default::default()
    };
    let ask = |policy_text: &str, reports: Vec<ReportedResult>| VerifyResultRequest {
        task_id: task.task_id.clone(),
        module_hash: task.module_hash.clone(),
        input_hash: task.input_hash.clone(),
        policy: Some(policy(policy_text)),
        reports,
        micro_credits_per_million_fuel: 1_000_000_000,
        ..Default::default()
    };
    let relabelled = verifier
        .verify_result(ask("receipt", vec![report("a-x", "mallory")]))
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    let paid = zkmesh_kit::settlement::open(relabelled.settlement.as_ref(), &keys).unwrap();
    assert_eq!(paid.payees[0].account, "operator/operator-1");
    // One node's report twice, labelled as two operators (or one attempt twice), is refused:
    // it would count, and be paid, twice.
    for twice in [
        vec![report("a-1", "mallory"), report("a-2", "trent")],
        vec![report("a-1", "mallory"), report("a-1", "mallory")],
    ] {
        let refused = verifier
            .verify_result(ask("replicate:2", twice))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }

    // Giving the credits back is all the scheduler's key can do with the hold; the books
    // still add up, every payout backed by the verifier's settlement.
    ledger
        .release(ReleaseRequest {
            task_id: "t-stolen".into(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert_audit_passes(&sb.api).await;

    // The ledger's key: a payout to mallory signed with it and chained in place, backed by a
    // settlement the ledger's key signed too. The audit refuses it.
    ledger
        .hold(HoldRequest {
            task_id: "t-ledger-theft".into(),
            account: account.clone(),
            amount: 500,
        })
        .await
        .unwrap();
    let url = format!("sqlite://{}", sb.mesh.dir.join("ledger.db").display());
    let db = zkmesh_kit::db::connect(&url).await.unwrap();
    let (seq, prev): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    let mut forged = JournalEntry {
        seq: seq as u64 + 1,
        at_ms: zkmesh_kit::now_ms(),
        kind: JournalEntryKind::Pay as i32,
        account: "operator/mallory".into(),
        task_id: "t-ledger-theft".into(),
        amount: 500,
        prev_hash: prev,
        settlement: Some(zkmesh_kit::settlement::sign(
            &Settlement {
                task_id: "t-ledger-theft".into(),
                payees: vec![SettlementPayee {
                    account: "operator/mallory".into(),
                    fuel: 500,
                    micro_credits_per_million_fuel: 1_000_000,
                    amount: 500,
                    ..Default::default()
                }],
                ..Default::default()
            },
            &ledger_key,
        )),
        ..Default::default()
    };
    forged.hash = entry_hash(&forged);
    forged.signature = ledger_key.sign(forged.hash.as_bytes()).to_bytes().to_vec();
    sqlx::query(
        "INSERT INTO journal (seq, at_ms, kind, account, task_id, amount, prev_hash, hash, signature, settlement) VALUES ($1, $2, 'pay', $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(forged.seq as i64)
    .bind(forged.at_ms)
    .bind(&forged.account)
    .bind(&forged.task_id)
    .bind(forged.amount as i64)
    .bind(&forged.prev_hash)
    .bind(&forged.hash)
    .bind(&forged.signature)
    .bind(forged.settlement.as_ref().map(prost::Message::encode_to_vec))
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    // The journal the ledger serves now holds the entry, chained and signed; what an audit
    // replays from it fails at that entry, for want of the verifier's word. (The whole audit
    // fails as well; the ledger here did not move its tip, which the audit notices too.)
    let entries = zkmesh_client::audit::read_journal(&mut sb.api.admin_ledger().unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(entries.last().unwrap().hash, forged.hash);
    let trusted = zkmesh_kit::journal::TrustedKeys {
        ledger: ledger_key.verifying_key().to_bytes().to_vec(),
        verifiers: keys.to_vec(),
    };
    let replayed = zkmesh_kit::journal::replay(&entries, &trusted).unwrap_err();
    let message = replayed.to_string();
    assert!(
        message.contains(&format!("entry {}", forged.seq))
            && message.contains("not backed by the verifier"),
        "{message}"
    );
    assert!(zkmesh_client::audit(&sb.api).await.is_err());
}
